# The GPU worker: a warm `tierflow worker serve` per container, run by AWS Batch or Kubernetes.
# Build from the repository root: docker build -f infra/docker/worker.Dockerfile -t tierflow-worker .
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The base image pins the distribution; its Python 3.11 packages take security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/tierflow \
    && useradd --create-home --uid 10001 worker \
    && mkdir /models && chown worker /models  # a volume mounted here starts owned by the worker

WORKDIR /opt/tierflow/src
COPY pyproject.toml README.md ./
COPY events events
COPY shared shared
COPY functions functions
COPY infra infra
RUN /opt/tierflow/bin/pip install '.[worker,observability]'

# Models come from a mounted directory or a hub id, as the job's catalogue entry names them.
USER 10001
ENV PATH=/opt/tierflow/bin:$PATH HF_HOME=/home/worker/.cache/huggingface
ENTRYPOINT ["tierflow"]
CMD ["worker", "--help"]
