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
    ('{"admins": []}', 'expected a list of {"name", "role", "key"} objects'),
    ('[{"name": "a", "role": "root", "key": "0123456789abcdef"}]', "key 1 has role 'root'; roles are viewer, artist, admin"),
    ('[{"name": "a", "role": "admin", "key": "short"}]', "key 1 must be a string of at least 16 characters"),
    ('[{"name": "a", "role": "admin"}]', 'key 1 must have exactly "name", "role" and "key"'),
])
def test_bad_key_settings_are_refused_with_the_reason(tmp_path, text, message):
    with pytest.raises(InvalidInput) as refused:
        access.load_keys(_settings(tmp_path, api_keys=text))
    assert message in str(refused.value)


def test_the_local_admin_key_is_created_once_and_kept_private(tmp_path):
    settings = _settings(tmp_path)
    assert access.load_keys(settings) == []
    path = access.ensure_local_admin_key(settings)
    assert path == tmp_path.resolve() / "api-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [key] = access.load_keys(settings)
    assert (key.name, key.role, len(key.key) >= 32) == ("local-admin", "admin", True)
    assert access.ensure_local_admin_key(settings) == path
    assert access.load_keys(settings) == [key]  # not replaced


def test_keys_are_added_to_the_file_with_a_role(tmp_path):
    settings = _settings(tmp_path)
    ana = access.add_key(settings, "ana", "artist")
    keys = access.load_keys(settings)
    assert [(k.name, k.role) for k in keys] == [("local-admin", "admin"), ("ana", "artist")]
    assert access.authenticate(keys, ana.key) == ana
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
