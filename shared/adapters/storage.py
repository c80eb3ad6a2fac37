"""Media storage: S3 through boto3 only, the same code against AWS, LocalStack or the embedded server."""

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import ServiceUnavailable

# Draft media expire after TIERFLOW_DRAFT_RETENTION_DAYS, unless approved: the bucket's lifecycle
# rule expires objects under EXPIRING_PREFIX tagged RETENTION_TAG=expire. Workers tag what they
# upload there; an approval tags the scene's media keep (Settings.tags_media: not on the embedded
# server, which has no lifecycle rules and no tags). The tag goes with the upload, so no object
# under the prefix is ever without it.
RETENTION_TAG = "tierflow-retention"
EXPIRING_PREFIX = "media/draft/"


def s3_client(endpoint_url: str | None, region: str, access_key: str | None = None, secret_key: str | None = None):
    """A boto3 S3 client; without explicit keys, credentials come from the standard AWS chain."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        # Path-style addressing works on every S3 server; SigV4 is the only signature rclone accepts.
        # Response checksums only when asked for: rclone sends the whole object's checksum with a
        # byte-range answer, which botocore would then refuse (files are checked by sha256 anyway).
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 3},
                      response_checksum_validation="when_required"),
    )


def ensure_bucket(client, bucket: str) -> None:
    """Create the bucket unless it exists already (creating is idempotent for its owner)."""
    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise ServiceUnavailable(f"cannot use S3 bucket {bucket!r}: {exc}") from exc
    except BotoCoreError as exc:
        raise ServiceUnavailable(f"cannot reach S3: {exc}") from exc
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise ServiceUnavailable(f"cannot create S3 bucket {bucket!r}: {exc}") from exc


def put_media(client, bucket: str, key: str, body: bytes, content_type: str, *, tag: bool) -> None:
    """Upload a worker's output; with `tag`, one under EXPIRING_PREFIX is tagged to expire."""
    tagging = {"Tagging": f"{RETENTION_TAG}=expire"} if tag and key.startswith(EXPIRING_PREFIX) else {}
    client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **tagging)


def keep_media(client, bucket: str, keys: list[str]) -> int:
    """Exempt media from the Draft expiry (an approval); returns how many objects were tagged.
    An object already gone (expired, deleted) is skipped: there is nothing left to keep."""
    kept = 0
    for key in keys:
        if not key.startswith(EXPIRING_PREFIX):
            continue  # nothing else expires
        try:
            client.put_object_tagging(Bucket=bucket, Key=key,
                                      Tagging={"TagSet": [{"Key": RETENTION_TAG, "Value": "keep"}]})
            kept += 1
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404", "NotFound"):
                raise
    return kept




def expiry_rule(days: int) -> dict:
    """The bucket lifecycle rule for `tierflow infra deploy` (the AWS template states the same)."""
    return {"ID": "expire-unapproved-drafts", "Status": "Enabled",
            "Filter": {"And": {"Prefix": EXPIRING_PREFIX, "Tags": [{"Key": RETENTION_TAG, "Value": "expire"}]}},
            "Expiration": {"Days": days}}
