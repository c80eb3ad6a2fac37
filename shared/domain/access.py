"""Who may call the HTTP API: API keys with roles, from configuration.

Keys come from TIERFLOW_API_KEYS (JSON, for deployments that inject secrets) or else from a keys
file under home, which `tierflow serve` creates with one admin key on the embedded default.
The keys file holds no key in clear: each is stored as a salted SHA-256 (`sha256:SALT:DIGEST`),
and a new key is shown once, when it is created. (A fast hash is enough: a key is 32 random bytes,
nothing to guess from a dictionary.) A presented key is hashed and compared with every configured
key in constant time, so neither the answer nor its timing tells how much of a guess was right.
"""

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from shared.errors import Conflict, InvalidInput

# What each role may do; every role includes the ones before it.
ROLES = ("viewer", "artist", "admin")


def key_hash(key: str, salt: bytes | None = None) -> str:
    """`sha256:SALT:DIGEST` of `key`, with a new random salt unless one is given."""
    salt = secrets.token_bytes(16) if salt is None else salt
    return f"sha256:{salt.hex()}:{hashlib.sha256(salt + key.encode()).hexdigest()}"


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: str
    hash: str  # key_hash of the key

    def may(self, role: str) -> bool:
        """True when this key's role is `role` or above it."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def matches(self, presented: str) -> bool:
        """`presented` is this key (constant time in what matched)."""
        _, salt, _ = self.hash.split(":")
        return hmac.compare_digest(key_hash(presented, bytes.fromhex(salt)).encode(), self.hash.encode())


def _valid_hash(value) -> bool:
    parts = value.split(":") if isinstance(value, str) else []
    try:
        return len(parts) == 3 and parts[0] == "sha256" and len(bytes.fromhex(parts[1])) >= 8 \
            and len(bytes.fromhex(parts[2])) == 32
    except ValueError:
        return False


def parse_keys(text: str, where: str, clear_allowed: bool = True) -> list[ApiKey]:
    """Keys from their JSON form: a list (or {"keys": [...]}) of {"name", "role", "hash"}, or,
    where `clear_allowed`, {"name", "role", "key"} with the key itself."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{where}: not JSON ({exc})") from None
    entries = document.get("keys") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise InvalidInput(f'{where}: expected a list of {{"name", "role", "hash"}} objects')
    keys = []
    for position, entry in enumerate(entries, start=1):
        forms = [{"name", "role", "hash"}] + ([{"name", "role", "key"}] if clear_allowed else [])
        if not isinstance(entry, dict) or set(entry) not in forms:
            raise InvalidInput(f"{where}: key {position} must have exactly "
                               + " or ".join('"name", "role" and "' + ({"hash", "key"} & f).pop() + '"' for f in forms))
        if entry["role"] not in ROLES:
            raise InvalidInput(f"{where}: key {position} has role {entry['role']!r}; roles are {', '.join(ROLES)}")
        if "key" in entry:
            if not isinstance(entry["key"], str) or len(entry["key"]) < 16:
                raise InvalidInput(f"{where}: key {position} must be a string of at least 16 characters")
            keys.append(ApiKey(str(entry["name"]), entry["role"], key_hash(entry["key"])))
        elif not _valid_hash(entry["hash"]):
            raise InvalidInput(f"{where}: key {position} has no valid hash (sha256:SALT:DIGEST)")
        else:
            keys.append(ApiKey(str(entry["name"]), entry["role"], entry["hash"]))
    return keys


def _write_keys(path: Path, keys: list[ApiKey]) -> None:
    # Written beside and renamed over: a reader never sees half a file. 0600: hashes are private too.
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"keys": [{"name": k.name, "role": k.role, "hash": k.hash} for k in keys]}, out, indent=2)
    os.replace(partial, path)


def load_keys(settings) -> list[ApiKey]:
    """The configured keys (none when no keys file exists yet)."""
    if settings.api_keys is not None:
        return parse_keys(settings.api_keys.get_secret_value(), "TIERFLOW_API_KEYS")
    path = settings.api_keys_file
    if not path.exists():
        return []
    return parse_keys(path.read_text(), str(path), clear_allowed=False)


def ensure_local_admin_key(settings) -> tuple[Path | None, str | None]:
    """On the keys-file setup, create the file with one admin key unless it exists; returns its
    path (None when keys come from TIERFLOW_API_KEYS) and the new key (None when the file existed),
    which is never shown again. A keys file of an older version, with keys in clear, is rewritten
    with their hashes."""
    if settings.api_keys is not None:
        return None, None
    path: Path = settings.api_keys_file
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    document = {"keys": [{"name": "local-admin", "role": "admin", "hash": key_hash(key)}]}
    try:
        # O_EXCL: two servers starting at once must not overwrite each other's key; 0600: private.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text()
        if '"key"' in text:  # keys in clear, as Tierflow wrote them before: keep them, hashed
            _write_keys(path, parse_keys(text, str(path)))
        return path, None
    with os.fdopen(fd, "w") as out:
        json.dump(document, out, indent=2)
    return path, key


def add_key(settings, name: str, role: str) -> tuple[ApiKey, str]:
    """Add a new random key to the keys file (created when missing); returns it and the key
    itself, shown once: the file keeps only its hash."""
    if settings.api_keys is not None:
        raise InvalidInput("keys come from TIERFLOW_API_KEYS here; add the key there")
    if role not in ROLES:
        raise InvalidInput(f"role {role!r} is not one of {', '.join(ROLES)}")
    path, _ = ensure_local_admin_key(settings)
    keys = load_keys(settings)
    if any(k.name == name for k in keys):
        raise Conflict(f"a key named {name!r} exists already in {path}")
    clear = secrets.token_urlsafe(32)
    key = ApiKey(name, role, key_hash(clear))
    _write_keys(path, [*keys, key])
    return key, clear


def authenticate(keys: list[ApiKey], presented: str | None) -> ApiKey | None:
    """The key matching `presented`, or None. Every key is compared, each in constant time."""
    if not presented:
        return None
    found = None
    for key in keys:
        if key.matches(presented):
            found = key
    return found


SESSION_SECONDS = 12 * 3600  # a working day: the web UI asks for the key again after it


def _session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start_session(conn, key: ApiKey) -> str:
    """A new web UI session for `key`; returns its id (for the cookie; only its hash is stored).
    Ended sessions are cleared on the way."""
    session_id = secrets.token_urlsafe(32)
    conn.execute("DELETE FROM api_sessions WHERE expires_at < now()")
    conn.execute("INSERT INTO api_sessions (id_hash, key_name, expires_at) "
                 "VALUES (%s, %s, now() + make_interval(secs => %s))", [_session_hash(session_id), key.name,
                                                                       SESSION_SECONDS])
    return session_id


def session_key(conn, keys: list[ApiKey], session_id: str | None) -> ApiKey | None:
    """The key a live session signed in with, while that key is still configured (removing a key
    ends its sessions), or None."""
    if not session_id:
        return None
    row = conn.execute("SELECT key_name FROM api_sessions WHERE id_hash = %s AND expires_at > now()",
                       [_session_hash(session_id)]).fetchone()
    return next((k for k in keys if row and k.name == row["key_name"]), None)


def end_session(conn, session_id: str | None) -> None:
    """Sign out: the session id is no good any more, wherever it was copied to."""
    if session_id:
        conn.execute("DELETE FROM api_sessions WHERE id_hash = %s", [_session_hash(session_id)])
