"""AWS Batch dispatch against moto server (the test double for AWS APIs with no local server)."""

import base64
import json
import time
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


def test_one_batch_job_per_segment_with_gpu_requirements(moto_batch, database_url, tmp_path, tiny_model, conn):
    url, batch = moto_batch
    deps = Deps(Settings(database_url=database_url, home=tmp_path / "home", model=tiny_model, dispatcher="batch",
                         batch_endpoint_url=url, batch_gpus=1, batch_vcpus=8, batch_memory_mib=30000))
    from functions.handlers.registry import FUNCTIONS

    scene_id = scenes.submit_scene(deps, project="p", name="s", aspect="16:9", tier="production",
                                   segments=[SegmentSpec(prompt="a", seed=1), SegmentSpec(prompt="b", seed=2)])
    dispatch = [FUNCTIONS["on_generation_requested"]]
    bus.drain(deps, list(FUNCTIONS.values()), dispatch)

    jobs = conn.execute("SELECT id, dispatcher, external_job_id, status FROM generation_jobs ORDER BY id").fetchall()
    assert [(j["dispatcher"], j["status"]) for j in jobs] == [("batch", "queued"), ("batch", "queued")]
    described = {d["jobId"]: d for d in batch.describe_jobs(jobs=[j["external_job_id"] for j in jobs])["jobs"]}
    assert len(described) == 2
    for job in jobs:
        batch_job = described[job["external_job_id"]]
        assert batch_job["jobQueue"].endswith("job-queue/tierflow-gpu")
        assert batch_job["jobName"] == f"tierflow-scene{scene_id}-job{job['id']}"
        command = batch_job["container"]["command"]
        assert command[:3] == ["tierflow", "worker", "--job-json"]
        document = json.loads(command[3])
        assert (document["job_id"], document["width"], document["height"], document["tier"]) == (
            job["id"], 1920, 1080, "production")
    # What was sent to the Batch API, as the server recorded it: GPU, vCPU and memory per job.
    recording = urllib.request.urlopen(url + "/moto-api/recorder/download-recording", timeout=10).read().decode()
    requests = [json.loads(line) for line in recording.splitlines() if line.strip()]
    submits = [json.loads(base64.b64decode(r["body"]) if r.get("body_encoded") else r["body"])
               for r in requests if r["url"].endswith("/v1/submitjob")]
    assert len(submits) == 2
    for submitted in submits:
        assert sorted((r["type"], r["value"]) for r in submitted["containerOverrides"]["resourceRequirements"]) == [
            ("GPU", "1"), ("MEMORY", "30000"), ("VCPU", "8")]

    # A redelivered generation.requested dispatches nothing again.
    conn.execute("INSERT INTO bus_deliveries (consumer, outbox_id) SELECT 'on_generation_requested', id FROM outbox "
                 "WHERE topic = 'generation.requested'")
    bus.drain(deps, list(FUNCTIONS.values()), dispatch)
    statuses = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
    assert sum(len(batch.list_jobs(jobQueue="tierflow-gpu", jobStatus=s)["jobSummaryList"]) for s in statuses) == 2

    # Batch jobs that end without the worker reporting (here: moto never runs them) are reported.
    deadline = time.monotonic() + 30
    while {d["status"] for d in batch.describe_jobs(jobs=[j["external_job_id"] for j in jobs])["jobs"]} != {"SUCCEEDED"}:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    with deps.uow() as uow:
        assert deps.dispatcher.follow(uow.conn, uow.emit) == 2
    failures = [r["payload"]["data"] for r in conn.execute(
        "SELECT payload FROM outbox WHERE topic = 'generation.failed' ORDER BY id")]
    assert [f["job_id"] for f in failures] == [j["id"] for j in jobs]
    assert all("ended without reporting a result" in f["reason"] and f["retryable"] for f in failures)
