"""All of Tierflow's settings, in one place: the only code that reads the environment.

With nothing set, Tierflow runs on the embedded default: its state lives under TIERFLOW_HOME
(an embedded PostgreSQL and a local S3 server over a directory). Setting TIERFLOW_DATABASE_URL or
TIERFLOW_S3_ENDPOINT_URL switches that part to a real server; S3 credentials then come from the
standard AWS chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, instance roles, ...).
"""

from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import InvalidInput, ServiceUnavailable


class Settings(BaseSettings):
    """Tierflow configuration, read from TIERFLOW_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="TIERFLOW_", extra="ignore")

    home: Path = Field(
        default=Path(".tierflow"),
        description="Directory holding the embedded stack's data (database, media, credentials).",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL (postgresql://user:password@host:5432/db); unset: embedded PostgreSQL.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 API endpoint (LocalStack, AWS, any S3 server); unset: embedded rclone S3 server.",
    )
    s3_bucket: str = Field(
        default="tierflow-media",
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="Bucket that holds every media file (an S3 bucket name: 3-63 lowercase letters, digits, '.', '-').",
    )
    aws_region: str = Field(default="us-east-1", description="AWS region for S3 and other AWS APIs.")
    kafka_bootstrap: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (host:port,...); unset: the embedded bus over the Postgres outbox.",
    )
    kafka_partitions: int = Field(
        default=4, ge=1, le=1000, description="Partitions of each event topic Tierflow creates."
    )
    kafka_session_timeout_seconds: float = Field(
        default=10.0, ge=6, le=1800,
        description="How long the broker waits for a silent consumer (a killed process) before its partitions go "
                    "to another member of the group.",
    )
    model: str | None = Field(
        default=None,
        description="The model catalogue name jobs use when they name none (unset: `tiny`, the tiny model built under "
                    "home). A directory (with a '/') or hub id given here is added to the catalogue on first use.",
    )
    dispatcher: Literal["local", "batch"] = Field(
        default="local", description="Where generation jobs run: local worker processes, or AWS Batch."
    )
    local_workers: int = Field(
        default=1, ge=1, le=64,
        description="Warm worker processes that serve, consume and every --wait command run on the embedded default.",
    )
    job_lease_seconds: float = Field(
        default=60.0, ge=1, le=86400,
        description="A claimed job's lease: a worker not heard from for this long has lost the job to a retry.",
    )
    worker_cache_models: int = Field(
        default=1, ge=1, le=64, description="Pipelines a worker keeps loaded per slot (least recently used dropped).",
    )
    affinity_max_wait_seconds: float = Field(
        default=30.0, ge=0, le=86400,
        description="Longest a queued job waits while workers prefer jobs of their loaded model and last size.",
    )
    batch_max_workers: int = Field(default=4, ge=1, le=10000, description="Most AWS Batch worker jobs at once.")
    event_retention_days: float = Field(
        default=7.0, gt=0, le=3650,
        description="Sent outbox events and the record of applied events are deleted after this many days.",
    )
    transient_retry_seconds: float = Field(
        default=300.0, ge=0, le=86400,
        description="How long an event that fails for a reason that may pass (S3 503, throttling) is retried "
                    "before it is dead-lettered (0: at once).",
    )
    webhook_retry_seconds: float = Field(
        default=10.0, gt=0, le=3600,
        description="A webhook POST that failed is tried again after this long, doubling each time (at most an hour).",
    )
    webhook_disable_after_seconds: float = Field(
        default=86400.0, gt=0,
        description="A webhook endpoint that has failed every try for this long is disabled, with the reason.",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="How long a webhook receiver has to answer a POST.",
    )
    delivery_redrive_seconds: float = Field(
        default=600.0, ge=10, le=86400,
        description="A delivery still undecided after this long is requested again (3 times, then rejected).",
    )
    shutdown_grace_seconds: int = Field(
        default=20, ge=0, le=3600,
        description="On SIGTERM, how long serve and consume give open streams and the jobs in hand before exiting.",
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts per generation job before it fails for good.")
    retry_backoff_seconds: float = Field(default=2.0, ge=0, le=3600, description="Pause before a retry; doubles each time.")
    report_retry_seconds: float = Field(
        default=120.0, ge=0, le=3600,
        description="How long a worker keeps trying to write a job's report while the database is unreachable.",
    )
    similarity_threshold: float = Field(
        default=0.5, ge=-1, le=1,
        description="An upscaled segment whose SSIM against its source is below this is flagged for review.",
    )
    draft_retention_days: int = Field(
        default=30, ge=1, le=3650, description="Days after which Draft media expire (bucket lifecycle rule)."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text: log lines as they are; json: one JSON object per line with the trace "
                                    "and span ids (shared.logs).")
    tag_draft_media: bool = Field(
        default=True,
        description="Tag Draft media tierflow-retention=expire, and an approved scene's keep, for the bucket's expiry "
                    "rule. Never on the embedded S3 server: rclone's stores no tags (it would overwrite the object "
                    "with them) and expires nothing; turn it off for another S3 server without object tagging.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, le=1024**3,
        description="HTTP request bodies over this many bytes get 413 before they are read.",
    )
    max_streams_per_key: int = Field(
        default=16, ge=1, le=10000, description="Live progress streams one API key may hold open at once.")
    api_keys: SecretStr | None = Field(
        default=None,
        description='HTTP API keys as JSON: [{"name": "ci", "role": "admin|artist|viewer", "key": "..."}]; '
                    "unset: the keys file under home (`tierflow serve` creates it with one admin key).",
    )
    batch_endpoint_url: str | None = Field(default=None, description="AWS Batch endpoint (moto server in tests).")
    database_url_secret: str | None = Field(
        default=None,
        description="A Secrets Manager secret (ARN or name) holding the database URL, read at start instead of "
                    "TIERFLOW_DATABASE_URL (on AWS: no secret in the function's configuration).",
    )
    api_keys_secret: str | None = Field(
        default=None, description="A Secrets Manager secret (ARN or name) holding TIERFLOW_API_KEYS, read at start.")
    secrets_endpoint_url: str | None = Field(
        default=None, description="Secrets Manager endpoint (LocalStack or moto server; unset: AWS).")
    batch_job_queue: str = Field(default="tierflow-gpu", description="AWS Batch job queue of the GPU workers.")
    batch_job_definition: str = Field(default="tierflow-worker", description="AWS Batch job definition of the worker.")
    batch_gpus: int = Field(default=1, ge=0, le=16, description="GPUs per generation job on AWS Batch.")
    batch_vcpus: int = Field(default=4, ge=1, le=256, description="vCPUs per generation job on AWS Batch.")
    batch_memory_mib: int = Field(default=16384, ge=512, description="Memory (MiB) per generation job on AWS Batch.")

    @property
    def api_keys_file(self) -> Path:
        """Where the HTTP API's keys live when TIERFLOW_API_KEYS is unset."""
        return (self.home / "api-keys.json").resolve()

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def embedded_s3(self) -> bool:
        return self.s3_endpoint_url is None

    @property
    def tags_media(self) -> bool:
        """Whether media are tagged for the Draft expiry (see tag_draft_media)."""
        return self.tag_draft_media and not self.embedded_s3

    @property
    def embedded_bus(self) -> bool:
        return self.kafka_bootstrap is None

    def masked(self) -> dict[str, str | None]:
        """Every setting as text, secrets masked, for `tierflow config show`."""
        url = self.database_url.get_secret_value() if self.database_url else None
        return {
            "home": str(self.home.resolve()),
            "database_url": mask_url(url) if url else "(embedded PostgreSQL under home)",
            "s3_endpoint_url": self.s3_endpoint_url or "(embedded S3 server under home)",
            "s3_bucket": self.s3_bucket,
            "aws_region": self.aws_region,
            "kafka_bootstrap": self.kafka_bootstrap or "(embedded bus over the PostgreSQL outbox)",
            "kafka_partitions": str(self.kafka_partitions),
            "kafka_session_timeout_seconds": str(self.kafka_session_timeout_seconds),
            "model": self.model or "tiny (the tiny model, built under home and added to the catalogue on first use)",
            "dispatcher": self.dispatcher,
            "local_workers": str(self.local_workers),
            "job_lease_seconds": str(self.job_lease_seconds),
            "worker_cache_models": str(self.worker_cache_models),
            "affinity_max_wait_seconds": str(self.affinity_max_wait_seconds),
            "transient_retry_seconds": str(self.transient_retry_seconds),
            "delivery_redrive_seconds": str(self.delivery_redrive_seconds),
            "webhook_retry_seconds": str(self.webhook_retry_seconds),
            "webhook_disable_after_seconds": str(self.webhook_disable_after_seconds),
            "webhook_timeout_seconds": str(self.webhook_timeout_seconds),
            "shutdown_grace_seconds": str(self.shutdown_grace_seconds),
            "event_retention_days": str(self.event_retention_days),
            "max_attempts": str(self.max_attempts),
            "retry_backoff_seconds": str(self.retry_backoff_seconds),
            "report_retry_seconds": str(self.report_retry_seconds),
            "similarity_threshold": str(self.similarity_threshold),
            "draft_retention_days": str(self.draft_retention_days),
            "tag_draft_media": str(self.tags_media).lower(),
            "log_format": self.log_format,
            "max_body_bytes": str(self.max_body_bytes),
            "max_streams_per_key": str(self.max_streams_per_key),
            "api_keys": "****" if self.api_keys else f"(keys file {self.api_keys_file})",
            "batch_endpoint_url": self.batch_endpoint_url or "(AWS default)",
            "batch_job_queue": self.batch_job_queue,
            "batch_job_definition": self.batch_job_definition,
            "batch_max_workers": str(self.batch_max_workers),
            "database_url_secret": self.database_url_secret or "(none)",
            "api_keys_secret": self.api_keys_secret or "(none)",
            "secrets_endpoint_url": self.secrets_endpoint_url or "(AWS default)",
        }


def mask_url(url: str) -> str:
    """Hide the passwords of a database URL in either form libpq takes: a URL
    (postgresql://app:****@db:5432/tierflow?password=****) or keywords (host=db password=****)."""
    if "://" not in url:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        try:
            params = conninfo_to_dict(url)
        except Exception:  # noqa: BLE001 - unparseable: show nothing of it rather than a secret
            return "**** (not a database URL libpq can read)"
        return make_conninfo(**{k: "****" if k == "password" else v for k, v in params.items()})
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        netloc = f"{parts.username}:****@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    query = urlencode(
        [(k, "****" if k == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="/:*",
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def load_settings() -> Settings:
    """Read the settings from the environment, and the secrets named by *_SECRET from Secrets
    Manager; a bad value is one clear InvalidInput, an unreadable secret a ServiceUnavailable."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"TIERFLOW_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"invalid configuration: {problems}") from None
    read = {}
    for field, secret in (("database_url", settings.database_url_secret), ("api_keys", settings.api_keys_secret)):
        if secret is None:
            continue
        if getattr(settings, field) is not None:
            raise InvalidInput(f"set TIERFLOW_{field.upper()} or TIERFLOW_{field.upper()}_SECRET, not both")
        read[field] = SecretStr(_read_secret(settings, secret))
    return settings.model_copy(update=read) if read else settings


def _read_secret(settings: Settings, secret: str) -> str:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("secretsmanager", region_name=settings.aws_region, endpoint_url=settings.secrets_endpoint_url)
    try:
        return client.get_secret_value(SecretId=secret)["SecretString"]
    except (BotoCoreError, ClientError, KeyError) as exc:
        raise ServiceUnavailable(f"cannot read the secret {secret!r} from Secrets Manager: {exc}") from exc
