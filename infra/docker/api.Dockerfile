# The HTTP API and web UI (`tierflow serve --api-only`) as an AWS Lambda function behind a function
# URL: the Lambda Web Adapter extension turns invocations into HTTP requests to the server, which
# also runs as is on ECS, EC2 or a laptop (the adapter stays idle outside Lambda).
# Build from the repository root: docker build -f infra/docker/api.Dockerfile -t tierflow-api .
FROM public.ecr.aws/awsguru/aws-lambda-adapter:0.9.1 AS adapter

FROM python:3.11-slim
COPY --from=adapter /lambda-adapter /opt/extensions/lambda-adapter
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /opt/tierflow
COPY pyproject.toml README.md ./
COPY events events
COPY shared shared
COPY functions functions
COPY infra infra
# hadolint ignore=DL3013
RUN pip install '.[api,observability]' && useradd --uid 10001 api

USER 10001
EXPOSE 8080
# On Kafka the handlers run as their own functions; this serves the API and the page only.
CMD ["tierflow", "serve", "--api-only", "--host", "0.0.0.0", "--port", "8080"]
