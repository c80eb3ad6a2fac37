# The event handlers as AWS Lambda container functions; the template sets each one's handler
# (e.g. functions.lambda_entry.on_scene_approved) as the image command.
# Build from the repository root: docker build -f infra/docker/functions.Dockerfile -t tierflow-functions .
FROM public.ecr.aws/lambda/python:3.11

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ${LAMBDA_TASK_ROOT}/
COPY events ${LAMBDA_TASK_ROOT}/events
COPY shared ${LAMBDA_TASK_ROOT}/shared
COPY functions ${LAMBDA_TASK_ROOT}/functions
COPY infra ${LAMBDA_TASK_ROOT}/infra
# The project with its Lambda extra only (no torch, no test tools); pyproject.toml bounds them.
# hadolint ignore=DL3013
RUN pip install "${LAMBDA_TASK_ROOT}[aws]" --target "${LAMBDA_TASK_ROOT}"

# Lambda runs the image as a non-root user of its own.
CMD ["functions.lambda_entry.on_scene_approved"]
