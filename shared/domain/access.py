"""Who may call the HTTP API: API keys with roles, from configuration.

Keys come from TIERFLOW_API_KEYS (JSON, for deployments that inject secrets) or else from a keys
file under home, which `tierflow serve` creates with one admin key on the embedded default.
A presented key is compared with every configured key in constant time, so neither the answer
nor its timing tells how much of a guess was right.
"""

import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from shared.errors import Conflict, InvalidInput

# What each role may do; every role includes the ones before it.
ROLES = ("viewer", "artist", "admin")


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: str
    key: str

    def may(self, role: str) -> bool:
        """True when this key's role is `role` or above it."""
        return ROLES.index(self.role) >= ROLES.index(role)


def parse_keys(text: str, where: str) -> list[ApiKey]:
    """Keys from their JSON form: a list (or {"keys": [...]}) of {"name", "role", "key"}."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{where}: not JSON ({exc})") from None
    entries = document.get("keys") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise InvalidInput(f'{where}: expected a list of {{"name", "role", "key"}} objects')
    keys = []
    for position, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or set(entry) != {"name", "role", "key"}:
            raise InvalidInput(f'{where}: key {position} must have exactly "name", "role" and "key"')
        if entry["role"] not in ROLES:
            raise InvalidInput(f"{where}: key {position} has role {entry['role']!r}; roles are {', '.join(ROLES)}")
        if not isinstance(entry["key"], str) or len(entry["key"]) < 16:
            raise InvalidInput(f"{where}: key {position} must be a string of at least 16 characters")
        keys.append(ApiKey(str(entry["name"]), entry["role"], entry["key"]))
    return keys


def load_keys(settings) -> list[ApiKey]:
    """The configured keys (none when no keys file exists yet)."""
    if settings.api_keys is not None:
        return parse_keys(settings.api_keys.get_secret_value(), "TIERFLOW_API_KEYS")
    path = settings.api_keys_file
    if not path.exists():
        return []
    return parse_keys(path.read_text(), str(path))


def ensure_local_admin_key(settings) -> Path | None:
    """On the keys-file setup, create the file with one admin key unless it exists; returns its
    path (None when keys come from TIERFLOW_API_KEYS)."""
    if settings.api_keys is not None:
        return None
    path: Path = settings.api_keys_file
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"keys": [{"name": "local-admin", "role": "admin", "key": secrets.token_urlsafe(32)}]}
    try:
        # O_EXCL: two servers starting at once must not overwrite each other's key; 0600: a key is a secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as out:
        json.dump(document, out, indent=2)
    return path


def add_key(settings, name: str, role: str) -> ApiKey:
    """Add a new random key to the keys file (created when missing); returns it."""
    if settings.api_keys is not None:
        raise InvalidInput("keys come from TIERFLOW_API_KEYS here; add the key there")
    if role not in ROLES:
        raise InvalidInput(f"role {role!r} is not one of {', '.join(ROLES)}")
    path = ensure_local_admin_key(settings)
    keys = load_keys(settings)
    if any(k.name == name for k in keys):
        raise Conflict(f"a key named {name!r} exists already in {path}")
    key = ApiKey(name, role, secrets.token_urlsafe(32))
    document = {"keys": [vars(k) for k in [*keys, key]]}
    # Written beside and renamed over: a reader never sees half a file.
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out, indent=2)
    os.replace(partial, path)
    return key


def authenticate(keys: list[ApiKey], presented: str | None) -> ApiKey | None:
    """The key matching `presented`, or None. Every key is compared, each in constant time."""
    if not presented:
        return None
    found = None
    for key in keys:
        if hmac.compare_digest(key.key.encode(), presented.encode()):
            found = key
    return found
