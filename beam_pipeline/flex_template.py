"""Flex Template metadata for one partner: the launch parameters, their help text and regexes.

One template per partner (``cloudbuild.yaml`` builds it for ``_PARTNER``): its
``partner`` parameter accepts only that partner, so a template launched from
the console cannot run one partner's export against another's endpoints. The
metadata is generated, not hand-written, so its parameter names stay the CLI's
(``tests/test_flex_template.py`` parses each one with the CLI's parser).

    python -m beam_pipeline.flex_template --partner default --out build/metadata-default.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from lantern.errors import ConfigError
from lantern.partner import VERSION_NAME_PATTERN, load_named

GCS_PATH = r"^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9](/[^\r\n]*)?$"
DATE = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
HTTP_ROOT = r"^https?://[^/\s?#]+/?$"


def metadata(partner_name: str) -> dict:
    """The template's metadata; raises ConfigError when the partner file is missing or invalid."""
    partner = load_named(partner_name)
    params = [
        {
            "name": "input",
            "label": "Input export",
            "helpText": "Cloud Storage path or glob of the partner's CSV export(s), with a header line. "
                        "Example: gs://acme-exports/2026-11-24/*.csv",
            "regexes": [GCS_PATH],
        },
        {
            "name": "output",
            "label": "Output folder",
            "helpText": "Cloud Storage folder for results/, dead_letter/ and metrics/. "
                        "Example: gs://acme-offers/runs/2026-11-24",
            "regexes": [GCS_PATH],
        },
        {
            "name": "partner",
            "label": "Partner",
            "helpText": f"Must be {partner.name}: this template is built for partner_options/{partner.name}.yaml.",
            "regexes": [f"^{re.escape(partner.name)}$"],
        },
        {
            "name": "as_of",
            "label": "As-of date",
            "helpText": "The run's as-of date, YYYY-MM-DD (UTC); features count days up to it and later "
                        "transactions are rejected. Default: today (UTC). Example: 2026-11-24",
            "isOptional": True,
            "regexes": [DATE],
        },
        {
            "name": "endpoint_url",
            "label": "Endpoint URL",
            "helpText": "Replaces scheme, host and port of every ML/offer endpoint of the partner "
                        f"(default: {partner.endpoints.base_url}). Example: https://ml.acme.example",
            "isOptional": True,
            "regexes": [HTTP_ROOT],
        },
    ]
    if partner.auth is not None:
        params.append({
            "name": "auth_secret",
            "label": "Auth secret",
            "helpText": f"Secret Manager version holding the value of the {partner.auth.header} header; "
                        "the workers read it with the worker service account. "
                        f"Example: projects/my-project/secrets/{partner.name}-ml-token/versions/latest",
            "regexes": [VERSION_NAME_PATTERN],
        })
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
