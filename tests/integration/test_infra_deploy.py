"""`tierflow infra deploy` against moto server (the test double for AWS APIs with no local server)."""

import json
import os

import boto3
import pytest

pytestmark = pytest.mark.integration


def test_deploy_creates_everything_once_and_then_changes_nothing(moto_server, run_cli):
    env = {"TIERFLOW_S3_ENDPOINT_URL": moto_server, "TIERFLOW_DATABASE_URL": "postgresql://app:pw@db:5432/tierflow",
           "TIERFLOW_DRAFT_RETENTION_DAYS": "14"}
    plan = run_cli("infra", "deploy", "--target", "localstack", "--dry-run", "--json", env=env)
    assert plan.returncode == 0, plan.stderr
    assert {s["action"] for s in json.loads(plan.stdout)} == {"would create", "skipped"}
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    assert s3.list_buckets()["Buckets"] == []  # a dry run changes nothing

    first = json.loads(run_cli("infra", "deploy", "--target", "localstack", "--json", env=env).stdout)
    created = {s["resource"] for s in first if s["action"] == "created"}
    assert {"s3 bucket tierflow-media", "secret tierflow/database-url", "batch compute environment tierflow-gpu",
            "batch job queue tierflow-gpu", "batch job definition tierflow-worker"} <= created
    second = json.loads(run_cli("infra", "deploy", "--target", "localstack", "--json", env=env).stdout)
    assert {s["action"] for s in second} == {"exists", "skipped"}

    # What was made, read back from the server.
    rules = s3.get_bucket_lifecycle_configuration(Bucket="tierflow-media")["Rules"]
    assert [(r["Filter"], r["Expiration"]["Days"]) for r in rules] == [(
        {"And": {"Prefix": "media/draft/", "Tags": [{"Key": "tierflow-retention", "Value": "expire"}]}}, 14)]
    assert all(s3.get_public_access_block(Bucket="tierflow-media")["PublicAccessBlockConfiguration"].values())
    secrets = boto3.client("secretsmanager", endpoint_url=moto_server, region_name="us-east-1")
    assert secrets.get_secret_value(SecretId="tierflow/database-url")["SecretString"] == env["TIERFLOW_DATABASE_URL"]
    batch = boto3.client("batch", endpoint_url=moto_server, region_name="us-east-1")
    [definition] = batch.describe_job_definitions(jobDefinitionName="tierflow-worker", status="ACTIVE")["jobDefinitions"]
    assert definition["containerProperties"]["command"] == ["tierflow", "worker", "serve", "--exit-when-idle", "300"]
    assert definition["timeout"] == {"attemptDurationSeconds": 12 * 3600}
    assert batch.describe_job_queues(jobQueues=["tierflow-gpu"])["jobQueues"][0]["state"] == "ENABLED"

    # A changed setting is updated in place, nothing else moves.
    changed = json.loads(run_cli("infra", "deploy", "--target", "localstack", "--json",
                                 env={**env, "TIERFLOW_DRAFT_RETENTION_DAYS": "7"}).stdout)
    assert [s["resource"] for s in changed if s["action"] == "updated"] == ["s3 bucket tierflow-media lifecycle"]


def test_an_unreachable_endpoint_is_one_clear_line(run_cli):
    result = run_cli("infra", "deploy", "--target", "localstack",
                     env={"TIERFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9", "TIERFLOW_DATABASE_URL": "postgresql://x@h/d",
                          "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"})
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "cannot reach the localstack endpoint" in line


@pytest.mark.parametrize("gpus", ["0", "2"])
def test_the_job_definition_asks_for_what_each_submission_asks_for(moto_server, run_cli, gpus):
    from shared.adapters.dispatch import batch_resource_requirements
    from shared.config import Settings

    env = {"TIERFLOW_S3_ENDPOINT_URL": moto_server, "TIERFLOW_DATABASE_URL": "postgresql://app:pw@db:5432/tierflow",
           "TIERFLOW_BATCH_GPUS": gpus, "TIERFLOW_BATCH_VCPUS": "2"}
    deployed = run_cli("infra", "deploy", "--target", "localstack", "--json", env=env)
    assert deployed.returncode == 0, deployed.stderr
    batch = boto3.client("batch", endpoint_url=moto_server, region_name="us-east-1")
    [definition] = batch.describe_job_definitions(jobDefinitionName="tierflow-worker", status="ACTIVE")["jobDefinitions"]
    defined = sorted((r["type"], r["value"]) for r in definition["containerProperties"]["resourceRequirements"])
    submitted = sorted((r["type"], r["value"]) for r in batch_resource_requirements(
        Settings(batch_gpus=int(gpus), batch_vcpus=2)))
    assert defined == submitted
    assert ("GPU", gpus) in defined if gpus != "0" else all(kind != "GPU" for kind, _ in defined)


def test_settings_read_the_secrets_they_name_from_secrets_manager_at_start(moto_server, monkeypatch):
    from shared.config import load_settings
    from shared.errors import InvalidInput, ServiceUnavailable

    secrets = boto3.client("secretsmanager", endpoint_url=moto_server, region_name="us-east-1")
    arn = secrets.create_secret(Name="tierflow/database-url", SecretString="postgresql://app:pw@db/x")["ARN"]
    secrets.create_secret(Name="tierflow/api-keys",
                          SecretString=json.dumps([{"name": "a", "role": "admin", "key": "k" * 20}]))
    for name in [k for k in os.environ if k.startswith("TIERFLOW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TIERFLOW_SECRETS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("TIERFLOW_DATABASE_URL_SECRET", arn)
    monkeypatch.setenv("TIERFLOW_API_KEYS_SECRET", "tierflow/api-keys")
    settings = load_settings()
    assert settings.database_url.get_secret_value() == "postgresql://app:pw@db/x"
    assert '"role": "admin"' in settings.api_keys.get_secret_value()
    assert settings.masked()["database_url"] == "postgresql://app:****@db/x"

    monkeypatch.setenv("TIERFLOW_API_KEYS_SECRET", "tierflow/missing")
    with pytest.raises(ServiceUnavailable, match="cannot read the secret 'tierflow/missing' from Secrets Manager"):
        load_settings()
    monkeypatch.delenv("TIERFLOW_API_KEYS_SECRET")
    monkeypatch.setenv("TIERFLOW_DATABASE_URL", "postgresql://other/x")
    with pytest.raises(InvalidInput, match="set TIERFLOW_DATABASE_URL or TIERFLOW_DATABASE_URL_SECRET, not both"):
        load_settings()
