"""Flex Template metadata for one partner, generated from the CLI's own parser.

One template per partner (``cloudbuild.yaml`` builds it for ``_PARTNER``): its
``partner`` parameter accepts only that partner, so a template launched from the
console cannot run one partner's export against another's endpoints. Every
option of ``python -m beam_pipeline`` is either a template parameter (``PARAMETERS``:
same name as the option's underscore spelling, its help text, and the regex of its
value type, its choices or its yes/no) or listed in ``NOT_PARAMETERS`` with the
reason; ``tests/test_flex_template.py`` fails on an option that is neither, so the
template cannot drift from the CLI.

    python -m beam_pipeline.flex_template --partner default --out build/metadata-default.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from beam_pipeline import cli, option_types, preflight
from lantern.errors import ConfigError
from lantern.partner import PartnerConfig, load_named

GCS_PATH = r"^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9](/[^\r\n]*)?$"

# Template parameter -> its label. A template launch runs on Dataflow, so its files are on Cloud Storage.
PARAMETERS = {
    "input": "Input export (gs:// path or glob)",
    "output": "Output folder (gs://)",
    "overwrite": "Replace the run the output folder holds",
    "partner": "Partner",
    "as_of": "As-of date",
    "endpoint_url": "Partner endpoint URL",
    "auth_secret": "Auth secret (Secret Manager version)",
    "max_dead_letter_ratio": "Dead-letter limit (ratio of rows read)",
    "features_only": "Features only (no endpoint calls)",
    "skip_preflight": "Skip the endpoint reachability check",
    "reader": "Input reader",
    "incremental_from": "Base run whose member state this input is folded into (gs:// output folder)",
    "changed_only": "Call endpoints only for members with rows in this input (with a base run)",
    "log_level": "Log level",
    "log_format": "Log format",
}
NOT_PARAMETERS = {
    "partner_config": "a template is built for one partner file, the one in its image",
    "heartbeat_seconds": "progress lines of a run in this process; Dataflow shows progress on the job page",
    "retry_failed": "a day-two re-run started from a workstation or scheduler (docs/day-two.md)",
    "detach": "a template launch is always detached",
    "streaming": "the streaming job is launched on its own (docs/streaming.md), not from this batch template",
    "subscription": "streaming only",
    "rate": "streaming replay only",
    "debounce_seconds": "streaming only",
    "idle_days": "streaming only",
    "window_seconds": "streaming only",
    "bigquery_table": "streaming only",
    "id_attribute": "streaming only",
}
REQUIRED = {"input", "output", "partner"}
TEMPLATE_REGEX = {"input": GCS_PATH, "output": GCS_PATH, "incremental_from": GCS_PATH}
TEMPLATE_HELP = {  # replaces the CLI's help where a template differs (Cloud Storage only, one value)
    "input": "Cloud Storage path or glob of the partner's CSV export(s), with a header line. The launcher "
             "lists it and reads each header with the template's service account before any partner call. "
             "Example: gs://acme-exports/2026-11-24/*.csv",
    "output": "Cloud Storage folder for the run (results/, dead_letter/, metrics/, run.json); it must hold "
              "no run. The launcher writes and deletes a probe object there first, so a missing permission "
              "fails the launch. Example: gs://acme-offers/runs/2026-11-24",
}


def options() -> dict[str, argparse.Action]:
    """The CLI's options by underscore name (``help`` excluded)."""
    return {a.dest: a for a in cli.build_parser()._actions if a.option_strings and a.dest != "help"}


def _regexes_and_type(name: str, action: argparse.Action, partner: PartnerConfig) -> tuple[list[str], dict]:
    if name == "partner":
        return [f"^{re.escape(partner.name)}$"], {}
    if name in TEMPLATE_REGEX:
        return [TEMPLATE_REGEX[name]], {}
    if isinstance(action.type, option_types.OptionType):
        kind = {"paramType": "BOOLEAN"} if action.type.regex == option_types.BOOLEAN else {}
        return [action.type.regex], kind
    if action.choices:
        choices = list(action.choices)
        return ["^(" + "|".join(re.escape(c) for c in choices) + ")$"], {
            "paramType": "ENUM", "enumOptions": [{"value": c, "label": c} for c in choices]}
    raise ConfigError(f"option --{name} has no value type with a regex (beam_pipeline/option_types.py): "
                      "a template parameter must be checked as the CLI checks it")


def _help(name: str, action: argparse.Action, partner: PartnerConfig) -> str:
    text = TEMPLATE_HELP.get(name) or (action.help or "").replace("%%", "%")
    if action.default not in (None, False) and "default" not in text and name not in TEMPLATE_HELP:
        text += f" (default: {action.default})"
    if name == "partner":
        text = f"Must be {partner.name}: this template is built for partner_options/{partner.name}.yaml."
    elif name == "endpoint_url":
        text += (f". The partner file's: {partner.endpoints.base_url}"
                 + (" is this machine, so a launch must give the partner's production host."
                    if preflight.is_loopback(partner.endpoints.base_url) else "."))
    elif name == "auth_secret" and partner.auth is not None:
        text += (f". It holds the value of the {partner.auth.header} header; "
                 + (f"default: {partner.auth.secret}" if partner.auth.secret else
                    f"example: projects/my-project/secrets/{partner.name}-ml-token/versions/latest"))
    return text


def _optional(name: str, partner: PartnerConfig) -> bool:
    if name == "endpoint_url":
        return not preflight.is_loopback(partner.endpoints.base_url)
    if name == "auth_secret":
        return partner.auth is not None and partner.auth.secret is not None
    return name not in REQUIRED


def metadata(partner_name: str) -> dict:
    """The template's metadata; raises ConfigError when the partner file is missing or invalid."""
    partner = load_named(partner_name)
    by_name = options()
    params = []
    for name, label in PARAMETERS.items():
        if name == "auth_secret" and partner.auth is None:
            continue  # the CLI refuses --auth-secret for a partner that sends no auth header
        action = by_name[name]
        regexes, kind = _regexes_and_type(name, action, partner)
        param = {"name": name, "label": label, "helpText": _help(name, action, partner), "regexes": regexes, **kind}
        if _optional(name, partner):
            param["isOptional"] = True
        params.append(param)
    return {
        "name": f"Lantern offers: {partner.name}",
        "description": f"Member export -> features -> ML predictions -> offers for partner {partner.name}. "
                       + (partner.description or ""),
        "parameters": params,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.flex_template", description=__doc__.splitlines()[0])
    parser.add_argument("--partner", required=True, help="partner name (partner_options/NAME.yaml)")
    parser.add_argument("--out", required=True, help="where to write the metadata JSON")
    args = parser.parse_args(argv)
    try:
        data = metadata(args.partner)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
