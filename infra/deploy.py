"""`tierflow infra deploy`: create or update, idempotently, what Tierflow needs on LocalStack or AWS.

What it manages (each step reports created, updated, exists or skipped, and --dry-run only says
what it would do): the media bucket (encrypted, public access blocked, Draft media expiring after
TIERFLOW_DRAFT_RETENTION_DAYS), the database URL in Secrets Manager, the Kafka topics (when
TIERFLOW_KAFKA_BOOTSTRAP is set), and the AWS Batch GPU compute environment (in the default VPC),
job queue and worker job definition. A production account is better served by the template in
infra/template.yaml; this is for test accounts and LocalStack. Services an endpoint lacks (LocalStack's
free tier has no Batch) are skipped with the reason.
"""

from dataclasses import dataclass

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from shared.adapters import storage
from shared.adapters.dispatch import BATCH_WORKER_COMMAND, BATCH_WORKER_TIMEOUT_SECONDS, batch_resource_requirements
from shared.errors import InvalidInput, ServiceUnavailable

LOCALSTACK_ENDPOINT = "http://127.0.0.1:4566"
SECRET_NAME = "tierflow/database-url"
BATCH_ROLE = "tierflow-batch-instance"
WORKER_IMAGE = "tierflow/worker:latest"
GPU_INSTANCE_TYPES = ["g5.xlarge", "g5.2xlarge"]


@dataclass(frozen=True)
class Step:
    resource: str
    action: str  # created | updated | exists | skipped | would create | would update
    detail: str = ""

    def to_json(self) -> dict:
        return {"resource": self.resource, "action": self.action, "detail": self.detail}


class _Deployer:
    def __init__(self, deps, target: str, dry_run: bool):
        settings = deps.settings
        if target not in ("localstack", "aws"):
            raise InvalidInput(f"unknown target {target!r}: use localstack or aws")
        self.deps, self.settings, self.dry_run = deps, settings, dry_run
        endpoint = (settings.s3_endpoint_url or LOCALSTACK_ENDPOINT) if target == "localstack" else None
        self.endpoints = {"s3": endpoint, "secretsmanager": endpoint, "iam": endpoint, "ec2": endpoint,
                          "batch": settings.batch_endpoint_url or endpoint}
        self.steps: list[Step] = []

    def client(self, service: str):
        # Few retries: an endpoint that is not there should say so in seconds, not minutes.
        return boto3.client(service, endpoint_url=self.endpoints[service], region_name=self.settings.aws_region,
                            config=Config(retries={"max_attempts": 2}, connect_timeout=5))

    def step(self, resource: str, exists: bool, create, detail: str = "", update=None) -> None:
        """Record and (unless dry run) carry out one resource's change."""
        if exists and update is None:
            self.steps.append(Step(resource, "exists", detail))
            return
        action = "update" if exists else "create"
        if self.dry_run:
            self.steps.append(Step(resource, f"would {action}", detail))
            return
        (update if exists else create)()
        self.steps.append(Step(resource, f"{action}d", detail))

    # --- S3 -----------------------------------------------------------------------------------

    def bucket(self) -> None:
        s3, bucket = self.client("s3"), self.settings.s3_bucket
        try:
            s3.head_bucket(Bucket=bucket)
            exists = True
        except ClientError:
            exists = False
        self.step(f"s3 bucket {bucket}", exists, lambda: s3.create_bucket(Bucket=bucket))
        wanted = {
            "encryption": {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
            "public access block": {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                                    "RestrictPublicBuckets": True},
            "lifecycle": [storage.expiry_rule(self.settings.draft_retention_days)],
        }
        current = self._bucket_settings(s3, bucket) if exists else {}
        writers = {
            "encryption": lambda: s3.put_bucket_encryption(
                Bucket=bucket, ServerSideEncryptionConfiguration=wanted["encryption"]),
            "public access block": lambda: s3.put_public_access_block(
                Bucket=bucket, PublicAccessBlockConfiguration=wanted["public access block"]),
            "lifecycle": lambda: s3.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration={"Rules": wanted["lifecycle"]}),
        }
        for name, value in wanted.items():
            self.step(f"s3 bucket {bucket} {name}", name in current, writers[name],
                      update=None if current.get(name) == value else writers[name])

    @staticmethod
    def _bucket_settings(s3, bucket: str) -> dict:
        found = {}
        for name, read in (
            ("encryption", lambda: s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]),
            ("public access block", lambda: s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]),
            ("lifecycle", lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]),
        ):
            try:
                value = read()
            except ClientError:
                continue
            if name == "encryption":  # compare only what we set
                value = {"Rules": [{"ApplyServerSideEncryptionByDefault": r["ApplyServerSideEncryptionByDefault"]}
                                   for r in value["Rules"]]}
            if name == "lifecycle":
                value = [{k: r[k] for k in ("ID", "Status", "Filter", "Expiration") if k in r} for r in value]
                for rule in value:
                    rule.get("Expiration", {}).pop("ExpiredObjectDeleteMarker", None)
            found[name] = value
        return found

    # --- Secrets Manager ------------------------------------------------------------------------

    def secret(self) -> None:
        client, url = self.client("secretsmanager"), self.deps.database_url
        try:
            current = client.get_secret_value(SecretId=SECRET_NAME)["SecretString"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
            current = None
        self.step(f"secret {SECRET_NAME}", current is not None,
                  lambda: client.create_secret(Name=SECRET_NAME, SecretString=url),
                  detail="holds TIERFLOW_DATABASE_URL",
                  update=None if current in (None, url) else lambda: client.put_secret_value(
                      SecretId=SECRET_NAME, SecretString=url))

    # --- Kafka ------------------------------------------------------------------------------------

    def topics(self) -> None:
        settings = self.settings
        if not settings.kafka_bootstrap:
            self.steps.append(Step("kafka topics", "skipped", "TIERFLOW_KAFKA_BOOTSTRAP is not set (embedded bus)"))
            return
        from kafka import KafkaAdminClient

        from events import ALL_TOPICS
        from shared.runtime.kafka_bus import ensure_topics

        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        try:
            missing = [t for t in ALL_TOPICS if t not in set(admin.list_topics())]
        finally:
            admin.close()
        self.step(f"kafka topics ({len(ALL_TOPICS)} and their .dlq)", not missing,
                  lambda: ensure_topics(settings.kafka_bootstrap, settings.kafka_partitions),
                  detail=f"{settings.kafka_partitions} partitions each")

    # --- AWS Batch ------------------------------------------------------------------------------

    def batch(self) -> None:
        settings, batch = self.settings, self.client("batch")
        try:
            environments = batch.describe_compute_environments(computeEnvironments=[settings.batch_job_queue])
        except (ClientError, EndpointConnectionError) as exc:
            self.steps.append(Step("aws batch", "skipped",
                                   f"Batch is not available here ({exc}); run jobs with TIERFLOW_DISPATCHER=local"))
            return
        instance_profile = self._batch_instance_profile()
        exists = bool(environments["computeEnvironments"])
        self.step(f"batch compute environment {settings.batch_job_queue}", exists,
                  lambda: batch.create_compute_environment(
                      computeEnvironmentName=settings.batch_job_queue, type="MANAGED", state="ENABLED",
                      serviceRole=instance_profile["service_role"],
                      computeResources={"type": "EC2", "minvCpus": 0, "maxvCpus": 64,
                                        "instanceTypes": GPU_INSTANCE_TYPES, "subnets": self._default_subnets(),
                                        "securityGroupIds": self._default_security_groups(),
                                        "instanceRole": instance_profile["arn"]}),
                  detail=f"GPU instances {', '.join(GPU_INSTANCE_TYPES)} in the default VPC")
        queues = batch.describe_job_queues(jobQueues=[settings.batch_job_queue])["jobQueues"]
        self.step(f"batch job queue {settings.batch_job_queue}", bool(queues),
                  lambda: batch.create_job_queue(
                      jobQueueName=settings.batch_job_queue, state="ENABLED", priority=1,
                      computeEnvironmentOrder=[{"order": 1, "computeEnvironment": settings.batch_job_queue}]))
        definitions = batch.describe_job_definitions(jobDefinitionName=settings.batch_job_definition,
                                                     status="ACTIVE")["jobDefinitions"]
        self.step(f"batch job definition {settings.batch_job_definition}", bool(definitions),
                  lambda: batch.register_job_definition(
                      jobDefinitionName=settings.batch_job_definition, type="container",
                      retryStrategy={"attempts": 1}, timeout={"attemptDurationSeconds": BATCH_WORKER_TIMEOUT_SECONDS},
                      containerProperties={
                          "image": WORKER_IMAGE, "command": BATCH_WORKER_COMMAND,
                          "resourceRequirements": batch_resource_requirements(settings)}),
                  detail=f"image {WORKER_IMAGE}, {settings.batch_gpus} GPU, {settings.batch_vcpus} vCPU, "
                         f"{settings.batch_memory_mib} MiB")

    def _batch_instance_profile(self) -> dict:
        iam = self.client("iam")
        try:
            role = iam.get_role(RoleName=BATCH_ROLE)["Role"]
        except ClientError:
            role = None
        trust = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": ' \
                '["ec2.amazonaws.com", "batch.amazonaws.com"]}, "Action": "sts:AssumeRole"}]}'
        self.step(f"iam role {BATCH_ROLE}", role is not None,
                  lambda: iam.create_role(RoleName=BATCH_ROLE, AssumeRolePolicyDocument=trust))
        try:
            profile = iam.get_instance_profile(InstanceProfileName=BATCH_ROLE)["InstanceProfile"]
        except ClientError:
            profile = None

        def create_profile() -> None:
            iam.create_instance_profile(InstanceProfileName=BATCH_ROLE)
            iam.add_role_to_instance_profile(InstanceProfileName=BATCH_ROLE, RoleName=BATCH_ROLE)

        self.step(f"iam instance profile {BATCH_ROLE}", profile is not None, create_profile)
        if self.dry_run and (role is None or profile is None):
            return {"arn": f"(new) {BATCH_ROLE}", "service_role": f"(new) {BATCH_ROLE}"}
        return {"arn": iam.get_instance_profile(InstanceProfileName=BATCH_ROLE)["InstanceProfile"]["Arn"],
                "service_role": iam.get_role(RoleName=BATCH_ROLE)["Role"]["Arn"]}

    def _default_subnets(self) -> list[str]:
        subnets = self.client("ec2").describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])
        return [s["SubnetId"] for s in subnets["Subnets"]]

    def _default_security_groups(self) -> list[str]:
        groups = self.client("ec2").describe_security_groups(Filters=[{"Name": "group-name", "Values": ["default"]}])
        return [g["GroupId"] for g in groups["SecurityGroups"][:1]]


def deploy(deps, target: str, dry_run: bool = False) -> list[Step]:
    """Bring the target to what Tierflow needs; returns what each step did (or would do)."""
    deployer = _Deployer(deps, target, dry_run)
    try:
        deployer.bucket()
        deployer.secret()
        deployer.topics()
        deployer.batch()
    except EndpointConnectionError as exc:
        raise ServiceUnavailable(f"cannot reach the {target} endpoint: {exc}") from exc
    except ClientError as exc:
        raise ServiceUnavailable(f"{target} refused a request: {exc}") from exc
    return deployer.steps
