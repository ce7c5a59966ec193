"""The Flex Template metadata: every parameter is one the CLI takes, with help text and regexes that mean it."""
from __future__ import annotations

import json
import re

import pytest

from beam_pipeline import cli, flex_template
from lantern.errors import ConfigError
from lantern.partner import available

VALID = {
    "input": ["gs://acme-exports/2026-11-24/*.csv", "gs://acme_exports/member_data.csv"],
    "output": ["gs://acme-offers/runs/2026-11-24", "gs://acme-offers"],
    "as_of": ["2026-11-24", "2024-02-29"],
    "endpoint_url": ["https://ml.acme.example", "http://10.1.2.3:8080/"],
    "auth_secret": ["projects/acme-prod/secrets/acme-ml-token/versions/latest"],
}
INVALID = {
    "input": ["/home/me/export.csv", "gs://", "s3://acme/x.csv", "gs://Acme/x.csv"],
    "output": ["out/local", "gs://a"],
    "as_of": ["24/11/2026", "2026-13-01", "2026-11-24T00:00:00"],
    "endpoint_url": ["ml.acme.example", "https://ml.acme.example/ml/ats/predict", "ftp://x"],
    "auth_secret": ["acme-ml-token", "projects/p/secrets/s"],
}


def params(partner: str) -> dict[str, dict]:
    return {p["name"]: p for p in flex_template.metadata(partner)["parameters"]}


def test_the_issue_parameters_are_described():
    described = params("default")
    assert {"input", "output", "partner", "as_of", "endpoint_url"} <= set(described)
    for p in described.values():
        assert p["label"]
        assert len(p["helpText"]) > 20
        assert p["regexes"]
        assert not p.get("isOptional") or p["name"] in ("as_of", "endpoint_url")


@pytest.mark.parametrize("partner", available())
def test_every_parameter_is_an_option_of_the_cli(partner):
    """The launcher passes --NAME=VALUE for each parameter: the CLI must take each one as its own."""
    argv = [f"--{name}={VALID.get(name, [partner])[0]}" for name in params(partner)]
    args, beam_args = cli.parse_args(argv)
    assert beam_args == []
    assert args.input == [VALID["input"][0]]
    assert args.partner == partner
    assert args.as_of == VALID["as_of"][0]


@pytest.fixture
def acme(tmp_path, monkeypatch) -> str:
    """A partner that sends an auth header, so its template has every parameter."""
    (tmp_path / "acme.yaml").write_text("name: acme\nauth: {header: X-Api-Key, env: ACME_ML_TOKEN}\n")
    monkeypatch.setattr("lantern.partner.PARTNER_DIR", tmp_path)
    return "acme"


@pytest.mark.parametrize("name", sorted(VALID))
def test_regexes_accept_real_values_and_reject_mistakes(acme, name):
    [regex] = params(acme)[name]["regexes"]
    for value in VALID[name]:
        assert re.fullmatch(regex, value), (name, value)
    for value in INVALID[name]:
        assert not re.fullmatch(regex, value), (name, value)


def test_a_template_accepts_only_its_own_partner():
    [regex] = params("legacy_export")["partner"]["regexes"]
    assert re.fullmatch(regex, "legacy_export")
    assert not re.fullmatch(regex, "default")


def test_auth_secret_is_asked_for_only_when_the_partner_sends_a_header(acme):
    secret = params(acme)["auth_secret"]
    assert not secret.get("isOptional")
    assert "X-Api-Key" in secret["helpText"]


def test_default_partner_has_no_auth_parameter():
    assert "auth_secret" not in params("default")


def test_the_command_writes_json_and_rejects_unknown_partners(tmp_path, capsys):
    out = tmp_path / "build" / "metadata-default.json"
    assert flex_template.main(["--partner", "default", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == flex_template.metadata("default")
    with pytest.raises(SystemExit) as exit_info:
        flex_template.main(["--partner", "nobody", "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    assert "unknown partner 'nobody'" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        flex_template.metadata("nobody")
