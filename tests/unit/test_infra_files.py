"""The AWS template, the containers and the compose file agree with the code and the README."""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from functions.handlers.registry import FUNCTIONS

ROOT = Path(__file__).resolve().parents[2]


class _CloudFormationLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (!Ref, !Sub, ...) as plain values."""


_CloudFormationLoader.add_multi_constructor("!", lambda loader, suffix, node: (
    loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else
    loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_mapping(node)))


def _template() -> dict:
    return yaml.load((ROOT / "infra" / "template.yaml").read_text(), Loader=_CloudFormationLoader)


def test_every_handler_has_its_function_and_event_sources_in_the_template():
    resources = _template()["Resources"]
    functions = {r["Properties"]["ImageConfig"]["Command"][0]: name for name, r in resources.items()
                 if r["Type"] == "AWS::Lambda::Function" and name != "ApiFunction"}
    assert set(functions) == {f"functions.lambda_entry.{name}" for name in FUNCTIONS}
    mappings = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    for name, function in FUNCTIONS.items():
        resource = functions[f"functions.lambda_entry.{name}"]
        topics = sorted(t for m in mappings if m["FunctionName"] == resource for t in m["Topics"])
        assert topics == sorted(function.consumes), name
    for mapping in mappings:
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert "OnFailure" in mapping["DestinationConfig"] and mapping["BatchSize"]


def test_the_api_serves_from_its_own_image_behind_a_streaming_function_url():
    resources = _template()["Resources"]
    api = resources["ApiFunction"]["Properties"]
    assert api["Code"]["ImageUri"] == "ApiImageUri"  # !Ref ApiImageUri
    assert {"TIERFLOW_API_KEYS_SECRET", "TIERFLOW_DATABASE_URL_SECRET", "TIERFLOW_KAFKA_BOOTSTRAP", "TIERFLOW_MODEL"} <= set(
        api["Environment"]["Variables"])
    assert api["Environment"]["Variables"]["AWS_LWA_INVOKE_MODE"] == "response_stream"
    assert resources["ApiFunctionUrl"]["Properties"]["InvokeMode"] == "RESPONSE_STREAM"
    dockerfile = (ROOT / "infra" / "docker" / "api.Dockerfile").read_text()
    assert "/opt/extensions/lambda-adapter" in dockerfile
    assert 'CMD ["tierflow", "serve", "--api-only", "--host", "0.0.0.0", "--port", "8080"]' in dockerfile


def test_the_media_bucket_is_private_encrypted_and_expires_unapproved_drafts():
    bucket = _template()["Resources"]["MediaBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    [rule] = bucket["LifecycleConfiguration"]["Rules"]
    assert rule["Prefix"] == "media/draft/" and rule["ExpirationInDays"] == "DraftRetentionDays"
    assert rule["TagFilters"] == [{"Key": "tierflow-retention", "Value": "expire"}]  # approved: "keep"


def test_cfn_lint_passes():
    result = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(ROOT / "infra" / "template.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_names_pinned_images_on_loopback_ports_the_readme_documents():
    compose = yaml.safe_load((ROOT / "localstack.yml").read_text())
    readme = (ROOT / "README.md").read_text()
    services = compose["services"]
    assert set(services) == {"localstack", "kafka", "postgres", "migrate", "relay", "consume", "serve", "worker",
                             "prometheus", "grafana"}
    for name, service in services.items():
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d[\w.-]*", image), f"{name}: pin a version, not {image}"
        assert image in readme, f"README does not name {image}"
        assert "healthcheck" in service
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
            assert port.split(":")[1] in readme
    assert "LOCALSTACK_AUTH_TOKEN" in services["localstack"]["environment"]
    # Tierflow's own: built from the role's image, after the migration, on the containers' Kafka listener.
    for name in ("relay", "consume", "serve"):
        assert services[name]["build"]["dockerfile"] == "infra/docker/api.Dockerfile"
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert services[name]["environment"]["TIERFLOW_KAFKA_BOOTSTRAP"] == "kafka:29092"
    assert "INTERNAL://kafka:29092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert services["worker"]["profiles"] == ["gpu"] and services["worker"]["build"]["dockerfile"].endswith(
        "worker.Dockerfile")
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]


def test_prometheus_scrapes_every_metrics_port_of_the_compose_file_and_the_dashboard_queries_tierflow_metrics():
    compose = (ROOT / "localstack.yml").read_text()
    scrape = yaml.safe_load((ROOT / "infra" / "monitoring" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert targets == ["serve:8000", "consume:9100", "worker:9101"]
    assert '"--metrics-port", "0.0.0.0:9100"' in compose and '"--metrics-port", "0.0.0.0:9101"' in compose
    dashboard = json.loads((ROOT / "infra" / "monitoring" / "grafana" / "dashboards" / "tierflow.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"tierflow_\w+", target["expr"])}
    readme = (ROOT / "README.md").read_text()
    assert queried and all(name.removesuffix("_bucket") in readme for name in queried), queried


def test_worker_image_runs_the_worker_as_a_non_root_user():
    dockerfile = (ROOT / "infra" / "docker" / "worker.Dockerfile").read_text()
    assert dockerfile.startswith("# ") and re.search(r"^FROM nvidia/cuda:\S+", dockerfile, re.M)
    assert re.search(r"^USER 10001$", dockerfile, re.M) and 'ENTRYPOINT ["tierflow"]' in dockerfile


def test_hadolint_passes_on_every_dockerfile():
    dockerfiles = sorted(str(p) for p in (ROOT / "infra" / "docker").glob("*.Dockerfile"))
    assert len(dockerfiles) == 3
    result = subprocess.run([str(Path(sys.executable).parent / "hadolint"), "--failure-threshold", "info",
                             *dockerfiles], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workers_on_batch_and_kubernetes_run_the_warm_worker_scaled_on_the_same_query():
    from shared.adapters.dispatch import BATCH_WORKER_COMMAND, BATCH_WORKER_TIMEOUT_SECONDS, JOBS_NEEDING_A_WORKER

    definition = _template()["Resources"]["WorkerJobDefinition"]["Properties"]
    assert definition["ContainerProperties"]["Command"] == BATCH_WORKER_COMMAND
    assert definition["Timeout"]["AttemptDurationSeconds"] == BATCH_WORKER_TIMEOUT_SECONDS
    deployment, scaler = yaml.safe_load_all((ROOT / "infra" / "k8s" / "worker.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["worker", "serve"]
    grace = float(container["args"][container["args"].index("--grace") + 1])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
    health = container["args"][container["args"].index("--health-port") + 1]
    assert health.endswith(":8081") and container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    [trigger] = scaler["spec"]["triggers"]
    assert trigger["type"] == "postgresql" and trigger["metadata"]["query"] == JOBS_NEEDING_A_WORKER
    assert trigger["metadata"]["connectionFromEnv"] in {e["name"] for e in container["env"]}


def _environment(resource: dict) -> set[str]:
    """The environment variable names (plain and secret) a resource's code gets."""
    properties = resource.get("Properties", {})
    if resource["Type"] == "AWS::Lambda::Function":
        return set(properties.get("Environment", {}).get("Variables", {}))
    containers = {"AWS::Batch::JobDefinition": lambda: [properties["ContainerProperties"]],
                  "AWS::ECS::TaskDefinition": lambda: properties["ContainerDefinitions"]}.get(resource["Type"], list)()
    return {e["Name"] for c in containers for e in c.get("Environment", []) + c.get("Secrets", [])}


def test_whatever_writes_the_outbox_has_a_relay_service_publishing_it():
    from functions.cli.main import build_parser

    resources = _template()["Resources"]
    # Whatever reaches the database writes events to the outbox, in the transaction of its change.
    writers = sorted(name for name, r in resources.items()
                     if {"TIERFLOW_DATABASE_URL", "TIERFLOW_DATABASE_URL_SECRET"} & _environment(r))
    assert {"OnSceneApprovedFunction", "ApiFunction", "WorkerJobDefinition"} <= set(writers)
    publishers = []
    for name, service in resources.items():
        if service["Type"] != "AWS::ECS::Service" or service["Properties"].get("DesiredCount", 0) < 1:
            continue
        task = resources[service["Properties"]["TaskDefinition"]]
        for container in task["Properties"]["ContainerDefinitions"]:
            argv = container["Command"]
            if container.get("EntryPoint") == ["python3", "-m", "functions.cli"] and argv[0] == "relay":
                args = build_parser().parse_args(argv)  # a command the CLI takes
                assert not args.once, "a relay that exits when the outbox is empty publishes nothing after"
                assert {"TIERFLOW_DATABASE_URL", "TIERFLOW_KAFKA_BOOTSTRAP"} <= _environment(task)
                assert args.health_port and "/readyz" in " ".join(container["HealthCheck"]["Command"])
                publishers.append(name)
    assert publishers, f"{', '.join(writers)} write events to the outbox and no service runs `tierflow relay`"


def test_lambdas_read_their_secrets_at_start_and_may():
    """No secret value in a function's configuration: each names its secrets, and its role may read them."""
    resources = _template()["Resources"]
    assert "{{resolve:secretsmanager" not in (ROOT / "infra" / "template.yaml").read_text()
    functions = {name: r for name, r in resources.items() if r["Type"] == "AWS::Lambda::Function"}
    for name, function in functions.items():
        variables = function["Properties"]["Environment"]["Variables"]
        assert "TIERFLOW_DATABASE_URL" not in variables and "TIERFLOW_API_KEYS" not in variables, name
        secrets = [variables[v] for v in ("TIERFLOW_DATABASE_URL_SECRET", "TIERFLOW_API_KEYS_SECRET") if v in variables]
        assert secrets, name
        role = resources[function["Properties"]["Role"].split(".")[0]]  # !GetAtt ROLE.Arn
        readable = [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]
                    if s["Action"] == "secretsmanager:GetSecretValue"]
        allowed = {r for s in readable for r in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])}
        assert set(secrets) <= allowed, name
