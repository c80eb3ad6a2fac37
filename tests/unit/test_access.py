"""API keys: parsing, the local admin key, adding keys, constant-time lookup."""

import json
import stat

import pytest

from shared.config import Settings
from shared.domain import access
from shared.errors import Conflict, InvalidInput


def _settings(tmp_path, **values) -> Settings:
    return Settings(home=tmp_path, **values)


@pytest.mark.parametrize("text,message", [
    ("{", "TIERFLOW_API_KEYS: not JSON"),
    ('{"admins": []}', 'expected a list of {"name", "role", "hash"} objects'),
    ('[{"name": "a", "role": "root", "key": "0123456789abcdef"}]', "key 1 has role 'root'; roles are viewer, artist, admin"),
    ('[{"name": "a", "role": "admin", "key": "short"}]', "key 1 must be a string of at least 16 characters"),
    ('[{"name": "a", "role": "admin"}]', 'key 1 must have exactly "name", "role" and "hash" or "name", "role" and "key"'),
    ('[{"name": "a", "role": "admin", "hash": "sha256:00:11"}]', "key 1 has no valid hash (sha256:SALT:DIGEST)"),
])
def test_bad_key_settings_are_refused_with_the_reason(tmp_path, text, message):
    with pytest.raises(InvalidInput) as refused:
        access.load_keys(_settings(tmp_path, api_keys=text))
    assert message in str(refused.value)


def test_the_local_admin_key_is_created_once_shown_once_and_stored_as_a_salted_hash(tmp_path):
    settings = _settings(tmp_path)
    assert access.load_keys(settings) == []
    path, shown = access.ensure_local_admin_key(settings)
    assert path == tmp_path.resolve() / "api-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(shown) >= 32 and shown not in path.read_text()
    [entry] = json.loads(path.read_text())["keys"]
    assert set(entry) == {"name", "role", "hash"} and entry["hash"].startswith("sha256:")
    [key] = access.load_keys(settings)
    assert (key.name, key.role) == ("local-admin", "admin") and access.authenticate([key], shown) == key
    assert access.ensure_local_admin_key(settings) == (path, None)  # not replaced, not shown again
    assert access.load_keys(settings) == [key]


def test_a_keys_file_with_keys_in_clear_is_rewritten_with_their_hashes(tmp_path):
    settings = _settings(tmp_path)
    settings.api_keys_file.write_text(json.dumps({"keys": [{"name": "old", "role": "admin", "key": "k" * 32}]}))
    with pytest.raises(InvalidInput, match='key 1 must have exactly "name", "role" and "hash"'):
        access.load_keys(settings)  # never read as it is
    assert access.ensure_local_admin_key(settings) == (settings.api_keys_file, None)
    assert "k" * 32 not in settings.api_keys_file.read_text()
    assert access.authenticate(access.load_keys(settings), "k" * 32).name == "old"


def test_keys_are_added_to_the_file_with_a_role(tmp_path):
    settings = _settings(tmp_path)
    ana, clear = access.add_key(settings, "ana", "artist")
    keys = access.load_keys(settings)
    assert [(k.name, k.role) for k in keys] == [("local-admin", "admin"), ("ana", "artist")]
    assert access.authenticate(keys, clear) == ana and clear not in settings.api_keys_file.read_text()
    assert stat.S_IMODE(settings.api_keys_file.stat().st_mode) == 0o600
    with pytest.raises(Conflict, match="a key named 'ana' exists already"):
        access.add_key(settings, "ana", "viewer")
    with pytest.raises(InvalidInput, match="add the key there"):
        access.add_key(_settings(tmp_path, api_keys="[]"), "ben", "viewer")


def test_authentication_and_roles():
    keys = access.parse_keys(json.dumps([{"name": "v", "role": "viewer", "key": "v" * 20},
                                         {"name": "a", "role": "admin", "key": "a" * 20}]), "test")
    assert access.authenticate(keys, "a" * 20).name == "a"
    assert access.authenticate(keys, "a" * 19) is None
    assert access.authenticate(keys, "") is None and access.authenticate(keys, None) is None
    viewer, admin = keys
    assert viewer.may("viewer") and not viewer.may("artist") and admin.may("artist") and admin.may("admin")
