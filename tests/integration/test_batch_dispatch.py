"""AWS Batch dispatch against moto server (the test double for AWS APIs with no local server)."""

import base64
import json
import urllib.request

import boto3
import pytest

from shared.bootstrap import Deps
from shared.config import Settings
from shared.domain import scenes
from shared.domain.recipe import SegmentSpec
from shared.runtime import bus

pytestmark = pytest.mark.integration


def _post(url: str, body: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=10).read()


@pytest.fixture
def moto_batch(moto_server):
    """A GPU job queue and the worker's job definition on moto server; requests recorded from here on."""
    url = moto_server
    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1")
    role = iam.create_role(RoleName="tierflow-batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    batch = boto3.client("batch", endpoint_url=url, region_name="us-east-1")
    environment = batch.create_compute_environment(
        computeEnvironmentName="tierflow-gpu", type="UNMANAGED", state="ENABLED", serviceRole=role)
    batch.create_job_queue(jobQueueName="tierflow-gpu", state="ENABLED", priority=1, computeEnvironmentOrder=[
        {"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}])
    batch.register_job_definition(jobDefinitionName="tierflow-worker", type="container", containerProperties={
        "image": "tierflow/worker:latest", "command": ["tierflow", "worker"],
        "resourceRequirements": [{"type": "VCPU", "value": "4"}, {"type": "MEMORY", "value": "16384"}]})
    _post(url + "/moto-api/recorder/start-recording")
    return url, batch


def _recorded(url: str) -> list[dict]:
    """The requests the Batch API server recorded."""
    recording = urllib.request.urlopen(url + "/moto-api/recorder/download-recording", timeout=10).read().decode()
    return [json.loads(line) for line in recording.splitlines() if line.strip()]


def _submissions(url: str) -> list[dict]:
    """What was sent to the Batch API's SubmitJob."""
    return [json.loads(base64.b64decode(r["body"]) if r.get("body_encoded") else r["body"])
            for r in _recorded(url) if r["url"].endswith("/v1/submitjob")]


def test_worker_jobs_are_submitted_for_the_queue_up_to_the_limit(moto_batch, database_url, tmp_path, tiny_model,
                                                               conn):
    url, batch = moto_batch
    deps = Deps(Settings(database_url=database_url, home=tmp_path / "home", model=tiny_model, dispatcher="batch",
                         batch_endpoint_url=url, batch_gpus=1, batch_vcpus=8, batch_memory_mib=30000,
                         batch_max_workers=3))
    from functions.handlers.registry import FUNCTIONS

    scenes.submit_scene(deps, project="p", name="one", aspect="16:9", tier="production",
                        segments=[SegmentSpec(prompt="a", seed=1)])
    dispatch = [FUNCTIONS["on_generation_requested"]]
    bus.drain(deps, list(FUNCTIONS.values()), dispatch)

    # One queued job: one worker job, asking for a GPU, running the definition's command
    # (`tierflow worker serve --exit-when-idle 300`).
    [submitted] = _submissions(url)
    assert submitted["jobQueue"] == "tierflow-gpu" and submitted["jobDefinition"] == "tierflow-worker"
    assert submitted["jobName"].startswith("tierflow-worker-") and "command" not in submitted["containerOverrides"]
    assert sorted((r["type"], r["value"]) for r in submitted["containerOverrides"]["resourceRequirements"]) == [
        ("GPU", "1"), ("MEMORY", "30000"), ("VCPU", "8")]
    # The job waits in the database for a worker to claim it: nothing marked it as taken.
    assert [(j["status"], j["worker_id"]) for j in conn.execute("SELECT status, worker_id FROM generation_jobs")] == [
        ("queued", None)]

    # Five unfinished jobs, and the worker job above has ended (moto ends every job at once):
    # three new ones, the limit.
    scenes.submit_scene(deps, project="p", name="four", aspect="16:9", tier="production",
                        segments=[SegmentSpec(prompt=str(i), seed=i) for i in range(4)])
    deps.dispatcher._active = None  # what it counted a moment ago (1) would still answer "enough" for 1 job
    with deps.uow() as uow:
        assert deps.dispatcher.active_workers() == 0
        assert deps.dispatcher.ensure_workers(uow.conn) == 3
        # Counted just now: a burst of requests for these jobs does not ask Batch again.
        assert deps.dispatcher.ensure_workers(uow.conn) == 0
    assert len(_submissions(url)) == 4
    # Three counts of 5 states each: the first scaling, the check above, the second scaling; none since.
    assert len([r for r in _recorded(url) if r["url"].endswith("/v1/listjobs")]) == 15

    # Nothing unfinished: nothing asked for.
    conn.execute("UPDATE generation_jobs SET status = 'failed', error = 'given up'")
    with deps.uow() as uow:
        assert deps.dispatcher.ensure_workers(uow.conn) == 0
