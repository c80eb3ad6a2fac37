"""The weights a job runs: a model source (a diffusers pipeline directory or an "org/name" Hugging
Face Hub id) resolved once to the pin the model catalogue records (shared.domain.catalogue), and
checked against that pin on the worker, where the weights are."""

import fcntl
import hashlib
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InvalidInput, NotFound, ServiceUnavailable, TierflowError
from shared.extras import missing_extra

MODEL_INDEX = "model_index.json"
# "org/name" as the Hugging Face Hub spells repository ids.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
HOW_TO_GET_A_MODEL = "build the tiny one with `tierflow models tiny DIR` or give a model directory or hub id"
# Weight formats that unpickle, and so can run code when loaded; workers load safetensors only.
PICKLED_WEIGHTS = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
HASH_CHUNK = 1 << 20


class ModelNotFound(NotFound):
    """The model a job names is neither a diffusers pipeline directory nor a hub id the Hub has:
    every attempt would fail the same way."""


class ModelUnreachable(ServiceUnavailable):
    """A hub model is not cached here and the Hugging Face Hub did not answer: a later attempt
    may fetch it."""


class ModelChanged(TierflowError):
    """The weights a worker finds are not the ones the model was pinned to: every attempt would
    render other weights than the recipe's, so none may."""

    code = "MODEL_CHANGED"

    def __init__(self, message: str):
        super().__init__(f"{self.code}: {message}")


@dataclass(frozen=True)
class PinnedModel:
    """A source resolved for the catalogue: `pin` is the hub commit `revision` named, or
    "sha256:…" over a directory's files."""

    source: str
    revision: str | None
    pin: str


def not_a_pipeline(model: str, path: Path, why: str) -> ModelNotFound:
    return ModelNotFound(f"model {model!r} not found: no diffusers pipeline at {path} ({why}); {HOW_TO_GET_A_MODEL}")


def pipeline_directory(source: str) -> Path | None:
    """The directory `source` names, None when it names no existing path (maybe a hub id).

    Raises ModelNotFound when the path exists but holds no pipeline.
    """
    path = Path(source).expanduser()
    if not path.exists():
        return None
    path = path.resolve()
    if not path.is_dir():
        raise not_a_pipeline(source, path, "it is a file, not a directory")
    if not (path / MODEL_INDEX).is_file():
        raise not_a_pipeline(source, path, f"{MODEL_INDEX} missing")
    return path


def _model_files(directory: Path) -> list[Path]:
    """Every file of a pipeline directory, in a fixed order; hidden files and folders (.git,
    .cache, locks) are not part of the model."""
    files = []
    for folder, subfolders, names in os.walk(directory):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        files += [Path(folder, name) for name in sorted(names) if not name.startswith(".")]
    return files


def directory_pin(directory: Path) -> str:
    """sha256 over the relative path and content hash of every file of the directory: its
    model_index.json, configs, tokenizer and weights (any of them changes the frames)."""
    outer = hashlib.sha256()
    for path in _model_files(directory):
        inner = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(HASH_CHUNK):
                inner.update(chunk)
        outer.update(f"{path.relative_to(directory).as_posix()}\0{inner.hexdigest()}\n".encode())
    return "sha256:" + outer.hexdigest()


def _pickled_only(files: list[str]) -> list[str]:
    """Folders whose weights are only in a pickled format (relative paths in posix form)."""
    folders: dict[str, set[str]] = {}
    for name in files:
        folder, _, base = name.rpartition("/")
        suffix = Path(base).suffix
        if suffix == ".safetensors" or suffix in PICKLED_WEIGHTS:
            folders.setdefault(folder or ".", set()).add("safe" if suffix == ".safetensors" else "pickled")
    return sorted(folder for folder, kinds in folders.items() if kinds == {"pickled"})


def _refuse_pickled(source: str, files: list[str]) -> None:
    pickled = _pickled_only(files)
    if pickled:
        raise InvalidInput(
            f"model {source!r} has weights only in pickled formats ({', '.join(PICKLED_WEIGHTS)}) in "
            f"{', '.join(pickled)}; workers load safetensors only: convert them (or use a revision that has them)")


def pin_model(source: str, revision: str | None = None) -> PinnedModel:
    """Resolve a source once, for the catalogue: a directory to the hash of its files, a hub id
    (at `revision`, default its main branch) to the commit that revision is now."""
    if not isinstance(source, str) or not source.strip():
        raise InvalidInput(f"no model source given; {HOW_TO_GET_A_MODEL}")
    directory = pipeline_directory(source)
    if directory is not None:
        if revision is not None:
            raise InvalidInput(f"--revision applies to hub models; {source!r} is a directory (its files are the pin)")
        _refuse_pickled(source, [p.relative_to(directory).as_posix() for p in _model_files(directory)])
        return PinnedModel(str(directory), None, directory_pin(directory))
    if not HUB_ID.fullmatch(source):
        raise not_a_pipeline(source, Path(source).expanduser().absolute(),
                             "no such directory, and not an org/name hub id")
    commit, files = _hub_commit(source, revision)
    _refuse_pickled(source, files)
    return PinnedModel(source, revision, commit)


def _hub_commit(repo: str, revision: str | None) -> tuple[str, list[str]]:
    """The commit `revision` of hub model `repo` is now and its files: asked of the Hub, or read
    from the local hub cache when the Hub cannot be reached (or HF_HUB_OFFLINE is set)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        info = HfApi().model_info(repo, revision=revision, timeout=30)
        return info.sha, [s.rfilename for s in info.siblings or []]
    except Exception as exc:  # noqa: BLE001 - the Hub's refusals are sorted from the rest below
        if hub_refused(exc):
            raise ModelNotFound(f"model {repo!r} at revision {revision or 'main'} not found on the Hugging Face Hub, "
                                f"or not for this account ({exc})") from exc
        asked = exc
    try:
        snapshot = Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelUnreachable(f"model {repo!r} could not be pinned: the Hugging Face Hub did not answer ({asked}) "
                               f"and it is not in the local hub cache ({exc})") from exc
    return snapshot.name, [p.relative_to(snapshot).as_posix() for p in _model_files(snapshot)]


def hub_refused(exc: BaseException | None) -> bool:
    """The Hub answered that the model (or a file of it) is not there for us, somewhere in the
    chain of causes diffusers wraps it in; not a connection failure or a cache miss offline."""
    from huggingface_hub import errors

    refused = (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.DisabledRepoError)
    while exc is not None:
        if isinstance(exc, refused) or (
                isinstance(exc, errors.EntryNotFoundError) and not isinstance(exc, errors.LocalEntryNotFoundError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def check_pin(name: str, source: str, pin: str) -> Path | None:
    """On the worker, before loading: the directory of a directory model whose files still hash
    to `pin` (ModelChanged when not, ModelNotFound when it is gone); None for a hub model, which
    is loaded at its pinned commit."""
    directory = pipeline_directory(source)
    if pin.startswith("sha256:"):
        if directory is None:
            raise not_a_pipeline(source, Path(source).expanduser().absolute(), "no such directory on this worker")
        found = directory_pin(directory)
        if found != pin:
            raise ModelChanged(f"the files of model {name!r} in {directory} hash to {found}, not to {pin}, which it "
                               "was pinned to when it was added: its weights changed since; restore them, or add "
                               "the changed model under a new name and generate again")
        return directory
    return None


def tiny_model_directory(home: Path) -> Path:
    """The tiny model under home, built on first use (under a lock: two first submissions at once
    must not write the same files together)."""
    path = (Path(home) / "models" / "tiny").resolve()
    if (path / MODEL_INDEX).exists():
        return path
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
        # An API host, say: it never renders, so it cannot build the model either.
        raise ServiceUnavailable(
            "the default model 'tiny' is not in the model catalogue yet, and it cannot be built here: "
            f"{missing_extra(ModuleNotFoundError(name='torch'))}; build it where workers run, or add a model "
            "with `tierflow models add` and set TIERFLOW_MODEL to its name")
    from shared.media.tiny import build_tiny_model

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / MODEL_INDEX).exists():
            # Built aside and moved in whole: a build killed halfway leaves no half model.
            building = path.with_name(".tiny-building")
            shutil.rmtree(building, ignore_errors=True)
            shutil.rmtree(path, ignore_errors=True)
            build_tiny_model(building)
            building.rename(path)
    return path
