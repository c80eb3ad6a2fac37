"""Which optional extra of the package (pyproject's [project.optional-dependencies]) brings a
module, so that a command run without it says what to install instead of a traceback."""

EXTRA_OF_MODULE = {
    "torch": "worker", "diffusers": "worker", "transformers": "worker", "safetensors": "worker",
    "fastapi": "api", "starlette": "api", "uvicorn": "api",
    "pgserver": "embedded",
    "aws_lambda_powertools": "aws",
    "prometheus_client": "observability", "opentelemetry": "observability",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """"needs the 'worker' extra: pip install 'tierflow[worker]'" for a module an extra brings;
    None for any other missing module (a broken install, a bug)."""
    extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
    if extra is None:
        return None
    return f"needs the '{extra}' extra ({exc.name} is not installed): pip install 'tierflow[{extra}]'"
