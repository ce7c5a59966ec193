"""The Flex Template metadata: generated from the CLI's parser, so every parameter is an option of
the CLI with the same name, value check and help, and every option is a parameter or says why not."""
from __future__ import annotations

import json
import re

import pytest

from beam_pipeline import cli, flex_template, option_types
from lantern.errors import ConfigError
from lantern.partner import available

VALID = {
    "input": ["gs://acme-exports/2026-11-24/*.csv", "gs://acme_exports/member_data.csv"],
    "output": ["gs://acme-offers/runs/2026-11-24", "gs://acme-offers"],
    "as_of": ["2026-11-24", "2024-02-29"],
    "endpoint_url": ["https://ml.acme.example", "http://10.1.2.3:8080/"],
    "auth_secret": ["projects/acme-prod/secrets/acme-ml-token/versions/latest"],
    "max_dead_letter_ratio": ["0.05", "0", "1", "0.5", ".25", "1.0"],
    "features_only": ["true", "false"],
    "skip_preflight": ["false", "true"],
    "overwrite": ["true", "false"],
    "incremental_from": ["gs://acme-offers/runs/2026-11-23"],
    "changed_only": ["false", "true"],
}
INVALID = {
    "input": ["/home/me/export.csv", "gs://", "s3://acme/x.csv", "gs://Acme/x.csv"],
    "output": ["out/local", "gs://a"],
    "as_of": ["24/11/2026", "2026-13-01", "2026-11-24T00:00:00"],
    "endpoint_url": ["ml.acme.example", "https://ml.acme.example/ml/ats/predict", "ftp://x"],
    "auth_secret": ["acme-ml-token", "projects/p/secrets/s"],
    "max_dead_letter_ratio": ["1.5", "-0.1", "2", "5%", "0,05"],
    "features_only": ["yes", "1", "True", ""],
    "skip_preflight": ["no"],
    "overwrite": ["yes"],
    "incremental_from": ["runs/2026-11-23", "gs://"],
    "changed_only": ["yes", "1"],
}
CLI_CHECKED = {"as_of", "endpoint_url", "auth_secret", "max_dead_letter_ratio", "features_only", "skip_preflight",
               "overwrite"}


def params(partner: str) -> dict[str, dict]:
    return {p["name"]: p for p in flex_template.metadata(partner)["parameters"]}


@pytest.fixture
def acme(tmp_path, monkeypatch) -> str:
    """A partner that sends an auth header without naming its secret, so its template has every parameter."""
    (tmp_path / "acme.yaml").write_text("name: acme\nauth: {header: X-Api-Key, env: ACME_ML_TOKEN}\n")
    (tmp_path / "zeta.yaml").write_text(
        "name: zeta\nendpoints: {base_url: 'https://ml.zeta.example'}\n"
        "auth: {header: X-Zeta-Key, env: ZETA_KEY, secret: projects/z/secrets/zeta-key/versions/3}\n")
    monkeypatch.setattr("lantern.partner.PARTNER_DIR", tmp_path)
    return "acme"


def test_every_cli_option_is_a_parameter_or_says_why_not():
    options = set(flex_template.options())
    undecided = options - set(flex_template.PARAMETERS) - set(flex_template.NOT_PARAMETERS)
    assert not undecided, (f"CLI options {sorted(undecided)} are neither template parameters nor excluded: "
                           "add each to PARAMETERS or NOT_PARAMETERS in beam_pipeline/flex_template.py")
    assert set(flex_template.PARAMETERS) <= options
    assert not set(flex_template.PARAMETERS) & set(flex_template.NOT_PARAMETERS)


def test_each_parameter_is_an_option_spelled_as_the_launcher_passes_it(acme):
    """The launcher passes --NAME=VALUE; NAME is the option's underscore spelling."""
    options = flex_template.options()
    for name, param in params(acme).items():
        assert f"--{name}" in options[name].option_strings
        assert param["label"] and len(param["helpText"]) > 20 and param["regexes"]


@pytest.mark.parametrize("name", sorted(VALID))
def test_regexes_accept_real_values_and_reject_mistakes(acme, name):
    [regex] = params(acme)[name]["regexes"]
    for value in VALID[name]:
        assert re.fullmatch(regex, value), (name, value)
    for value in INVALID[name]:
        assert not re.fullmatch(regex, value), (name, value)


@pytest.mark.parametrize("name", sorted(CLI_CHECKED))
def test_the_cli_checks_a_value_exactly_as_the_template_does(acme, name):
    """Same regex on both sides: what the console refuses, the CLI refuses with one line, and the reverse."""
    action = flex_template.options()[name]
    assert isinstance(action.type, option_types.OptionType)
    assert params(acme)[name]["regexes"] == [action.type.regex]
    base = ["--input", "x.csv", "--output", "out"]
    for value in VALID[name]:
        cli.parse_args([*base, f"--{name}={value}"])
    for value in INVALID[name]:
        with pytest.raises(ConfigError):
            cli.parse_args([*base, f"--{name}={value}"])


@pytest.mark.parametrize("name", ["reader", "log_level", "log_format"])
def test_choices_become_enums_with_the_cli_choices(name):
    action = flex_template.options()[name]
    param = params("default")[name]
    assert param["paramType"] == "ENUM"
    assert [o["value"] for o in param["enumOptions"]] == list(action.choices)
    [regex] = param["regexes"]
    assert all(re.fullmatch(regex, c) for c in action.choices) and not re.fullmatch(regex, "verbose")


@pytest.mark.parametrize("partner", available())
def test_a_launch_with_every_parameter_parses_as_the_launcher_runs_it(partner):
    described = params(partner)
    examples = {**{k: v[0] for k, v in VALID.items()}, "partner": partner, "features_only": "true",
                "reader": "lines", "log_level": "WARNING", "log_format": "json"}
    args, beam_args = cli.parse_args([f"--{name}={examples[name]}" for name in described])
    assert beam_args == []
    assert args.input == [VALID["input"][0]]
    assert (args.partner, args.as_of, args.features_only, args.skip_preflight) == (partner, "2026-11-24", True, False)
    assert args.max_dead_letter_ratio == 0.05


def test_yes_no_options_still_work_bare_on_the_command_line():
    args, _ = cli.parse_args(["--input", "x.csv", "--output", "out", "--skip-preflight", "--features-only"])
    assert args.skip_preflight is True and args.features_only is True
    args, _ = cli.parse_args(["--input", "x.csv", "--output", "out"])
    assert args.skip_preflight is False and args.features_only is False


def test_a_template_accepts_only_its_own_partner():
    [regex] = params("legacy_export")["partner"]["regexes"]
    assert re.fullmatch(regex, "legacy_export")
    assert not re.fullmatch(regex, "default")


@pytest.mark.parametrize("partner", available())
def test_the_endpoint_is_required_when_the_partner_file_names_only_this_machine(partner):
    """Every shipped file points at the local reference service: a launch must name the production host."""
    assert not params(partner)["endpoint_url"].get("isOptional")
    assert "is this machine" in params(partner)["endpoint_url"]["helpText"]


def test_the_endpoint_is_optional_when_the_partner_file_names_a_production_host(acme):
    assert params("zeta")["endpoint_url"]["isOptional"] is True


def test_auth_secret_is_optional_only_where_the_partner_file_names_it(acme):
    secret = params(acme)["auth_secret"]
    assert not secret.get("isOptional")
    assert "X-Api-Key" in secret["helpText"]
    named = params("zeta")["auth_secret"]
    assert named["isOptional"] is True and "projects/z/secrets/zeta-key/versions/3" in named["helpText"]


def test_a_partner_without_an_auth_header_has_no_auth_parameter():
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
