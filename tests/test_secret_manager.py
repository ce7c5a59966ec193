"""How a partner's auth secret reaches Dataflow workers: by name in the job, by value only in setup()."""
from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from beam_pipeline import cli
from lantern import secret_manager
from lantern.errors import ConfigError
from lantern.partner import PartnerConfig
from transforms.endpoints import CallEndpointsFn

VERSION = "projects/acme-prod/secrets/acme-ml-token/versions/3"
TOKEN = "s3cr3t-token-value"


class FakeSecretManager:
    """Stands in for SecretManagerServiceClient: same call, same response shape."""

    def __init__(self, values: dict[str, bytes]):
        self.values = values
        self.calls: list[str] = []

    def access_secret_version(self, request: dict):
        from google.api_core.exceptions import NotFound

        name = request["name"]
        self.calls.append(name)
        if name not in self.values:
            raise NotFound(f"Secret Version [{name}] not found.")
        return SimpleNamespace(payload=SimpleNamespace(data=self.values[name]))


@pytest.fixture
def secrets(dataflow_extra, monkeypatch):
    fake = FakeSecretManager({VERSION: (TOKEN + "\n").encode()})
    monkeypatch.setattr(secret_manager, "_client", lambda: fake)
    monkeypatch.setattr(secret_manager, "_values", {})
    monkeypatch.delenv("ACME_ML_TOKEN", raising=False)
    return fake


def acme(**auth) -> PartnerConfig:
    auth = {"header": "X-Api-Key", "env": "ACME_ML_TOKEN", **auth}
    return PartnerConfig.model_validate({"name": "acme", "auth": auth})


def test_a_worker_without_the_env_var_reads_the_secret_once(secrets):
    partner = acme().with_auth_secret(VERSION)
    assert partner.auth_headers() == {"X-Api-Key": TOKEN}  # trailing newline of `echo | gcloud` dropped
    assert partner.auth_headers() == {"X-Api-Key": TOKEN}
    assert secrets.calls == [VERSION]


def test_the_env_var_wins_where_it_is_set(secrets, monkeypatch):
    monkeypatch.setenv("ACME_ML_TOKEN", "local-token")
    assert acme().with_auth_secret(VERSION).auth_headers() == {"X-Api-Key": "local-token"}
    assert secrets.calls == []


def test_an_unreadable_secret_is_one_readable_line(secrets):
    partner = acme().with_auth_secret("projects/acme-prod/secrets/acme-ml-token/versions/9")
    with pytest.raises(ConfigError, match=r"^secret projects/acme-prod/.*/versions/9: cannot read it: NotFound"):
        partner.auth_headers()


def test_the_job_carries_the_name_never_the_value(secrets):
    """The DoFn is pickled into the job graph; the token must not be in it, even after the launcher read it."""
    partner = acme().with_auth_secret(VERSION)
    partner.auth_headers()  # the launcher's start-up check
    blob = pickle.dumps(CallEndpointsFn(partner))
    assert VERSION.encode() in blob
    assert TOKEN.encode() not in blob


def test_a_worker_setup_builds_its_session_from_the_secret(secrets):
    fn = pickle.loads(pickle.dumps(CallEndpointsFn(acme().with_auth_secret(VERSION))))
    fn.setup()
    try:
        assert fn._client.session.headers["X-Api-Key"] == TOKEN
    finally:
        fn.teardown()


def test_bad_auth_secret_arguments_stop_before_the_run(tmp_path, capsys):
    (tmp_path / "acme.yaml").write_text("name: acme\nauth: {header: X-Api-Key, env: ACME_ML_TOKEN}\n")
    export = tmp_path / "e.csv"
    export.write_text("MEMBER_ID\n1\n")
    base = ["--input", str(export), "--output", str(tmp_path / "out")]
    assert cli.main([*base, "--partner-config", str(tmp_path / "acme.yaml"), "--auth-secret", "acme-token"]) == 2
    assert "is not a Secret Manager version" in capsys.readouterr().err
    assert cli.main([*base, "--auth_secret", VERSION]) == 2
    assert "partner default sends no auth header" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
