"""Media storage: S3 through boto3 only, the same code against AWS, LocalStack or the embedded server."""

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import ServiceUnavailable


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
