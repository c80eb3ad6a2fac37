"""Which model a job runs: a diffusers pipeline directory or an "org/name" hub id, checked cheaply
at submission; the tiny model under home when nothing is configured."""

import fcntl
import re
from pathlib import Path

from shared.errors import NotFound, ServiceUnavailable

MODEL_INDEX = "model_index.json"
# "org/name" as the Hugging Face Hub spells repository ids.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
HOW_TO_GET_A_MODEL = "build the tiny one with `tierflow model tiny DIR` or give a model directory or hub id"


class ModelNotFound(NotFound):
    """The model a job names is neither a diffusers pipeline directory nor a hub id the Hub has:
    every attempt would fail the same way."""


class ModelUnreachable(ServiceUnavailable):
    """A hub model is not cached here and the Hugging Face Hub did not answer: a later attempt
    may fetch it."""


def not_a_pipeline(model: str, path: Path, why: str) -> ModelNotFound:
    return ModelNotFound(f"model {model!r} not found: no diffusers pipeline at {path} ({why}); {HOW_TO_GET_A_MODEL}")


def local_pipeline_dir(model: str) -> Path | None:
    """The directory `model` names, None when it names no existing path (maybe a hub id).

    Raises ModelNotFound when the path exists but holds no pipeline.
    """
    path = Path(model).expanduser()
    if not path.exists():
        return None
    path = path.resolve()
    if not path.is_dir():
        raise not_a_pipeline(model, path, "it is a file, not a directory")
    if not (path / MODEL_INDEX).is_file():
        raise not_a_pipeline(model, path, f"{MODEL_INDEX} missing")
    return path


def validate_model(model: str) -> None:
    """Cheap check at job submission: an existing pipeline directory or an "org/name" hub id.

    A hub id is only checked for form here; whether it can be fetched is known when a worker
    loads it.
    """
    if not isinstance(model, str) or not model.strip():
        raise ModelNotFound(f"no model given; {HOW_TO_GET_A_MODEL}")
    if local_pipeline_dir(model) is None and not HUB_ID.fullmatch(model):
        path = Path(model).expanduser().absolute()
        raise not_a_pipeline(model, path, "no such directory, and not an org/name hub id")


def default_model(settings) -> str:
    """TIERFLOW_MODEL, or the tiny model under home, built on first use (under a lock: two
    first submissions at once must not write the same files together)."""
    if settings.model:
        return settings.model
    path = Path(settings.model_path)
    if not (path / MODEL_INDEX).exists():
        from shared.media.tiny import build_tiny_model

        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / ".build.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (path / MODEL_INDEX).exists():
                build_tiny_model(path)
    return str(path)


def resolve_model(settings, model: str | None) -> str:
    """The model a new scene is generated with: the one asked for, else the configured default;
    refused at once when it names no pipeline."""
    model = model or default_model(settings)
    validate_model(model)
    return model
