"""Settings: defaults, environment overrides, masking and bad values."""

from pathlib import Path

import pytest

from shared.config import load_settings, mask_url
from shared.errors import InvalidInput


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("TIERFLOW_HOME", "TIERFLOW_DATABASE_URL", "TIERFLOW_S3_ENDPOINT_URL", "TIERFLOW_S3_BUCKET",
                 "TIERFLOW_AWS_REGION"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_embedded_stack():
    settings = load_settings()
    assert settings.home == Path(".tierflow")
    assert settings.embedded_database and settings.embedded_s3
    assert settings.s3_bucket == "tierflow-media"


def test_environment_switches_to_real_servers(monkeypatch):
    monkeypatch.setenv("TIERFLOW_DATABASE_URL", "postgresql://app:pw@db:5432/tierflow")
    monkeypatch.setenv("TIERFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("TIERFLOW_S3_BUCKET", "studio-media")
    settings = load_settings()
    assert not settings.embedded_database and not settings.embedded_s3
    assert settings.s3_bucket == "studio-media"
    assert "pw" not in repr(settings)  # the URL is a secret
    assert settings.masked()["database_url"] == "postgresql://app:****@db:5432/tierflow"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://app:pw@db:5432/x", "postgresql://app:****@db:5432/x"),
        ("postgresql://app@db/x", "postgresql://app@db/x"),
        ("postgresql://db/x?sslmode=require&password=pw", "postgresql://db/x?sslmode=require&password=****"),
        ("postgresql://postgres:@/tierflow?host=/tmp/pg", "postgresql://postgres:@/tierflow?host=/tmp/pg"),
        ("host=db user=u password=s3cret dbname=x", "user=u password=**** dbname=x host=db"),
        ("host=db password='two words' port=5432", "password=**** host=db port=5432"),
        ("host=db password='unterminated", "**** (not a database URL libpq can read)"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_a_bad_value_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("TIERFLOW_S3_BUCKET", "Media_Bucket")
    with pytest.raises(InvalidInput) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid configuration: TIERFLOW_S3_BUCKET: String should match pattern")
    assert "\n" not in message


def test_config_show_never_prints_a_keyword_form_password(monkeypatch, capsys):
    from functions.cli.main import main

    monkeypatch.setenv("TIERFLOW_DATABASE_URL", "host=db user=u password=s3cret dbname=x")
    assert main(["config", "show"]) == 0
    shown = capsys.readouterr().out
    assert "s3cret" not in shown and "password=****" in shown
