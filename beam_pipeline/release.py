"""What a release checks before a partner's template goes live: the smoke run's verdict.

``cloudbuild.yaml`` smoke-runs the versioned template on a small export, fetches the
``run.json`` the job published, reads it with ``python -m beam_pipeline wait`` (exit 0 only
for a published run with no FAILED member) and runs this on it (step ``verdict``). The smoke run
passes only when it is the partner's run, it published (``run.json`` at the output's
top level, never ``published: false``), it ended with exit code 0 (no FAILED member,
under the dead-letter limit) and its accounting closes: every row read is a
transaction, a member-only row or a dead letter, and every member has exactly one
status. Only then is the ``--passed`` marker written, and the ``promote`` step
refuses to copy the template to its live name without it.

    python -m beam_pipeline.release verdict build/smoke/run.json --partner acme_rewards --passed build/smoke-passed
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STATUSES = ("members_ok", "members_no_transactions", "members_failed", "members_features_only")


def smoke_problems(run: dict, partner: str) -> list[str]:
    """Why this run.json does not prove the release works; empty when it does."""
    problems = []
    if run.get("partner") != partner:
        problems.append(f"run.json is partner {run.get('partner')!r}'s run, not {partner!r}'s")
    if run.get("published") is False:
        problems.append(f"the run was not published: {run.get('error', 'no reason given')}")
    if run.get("exit_code") != 0:
        problems.append(f"exit code {run.get('exit_code')}, not 0" + (f": {run['error']}" if run.get("error") else ""))
    acc = run.get("accounting")
    if not isinstance(acc, dict):
        return [*problems, "run.json has no accounting"]
    rows = acc.get("transactions", 0) + acc.get("member_only_rows", 0) + acc.get("dead_letter_rows", 0)
    if acc.get("rows_read") != rows:
        problems.append(f"accounting does not close: rows_read {acc.get('rows_read')} != transactions "
                        f"+ member_only_rows + dead_letter_rows = {rows}")
    statuses = sum(acc.get(key) or 0 for key in STATUSES)
    if acc.get("members") != statuses:
        problems.append(f"accounting does not close: members {acc.get('members')} != members by status {statuses}")
    if not acc.get("rows_read"):
        problems.append("the smoke run read no rows: give _SMOKE_INPUT an export with data")
    return problems


def verdict(path: Path, partner: str, passed: Path | None) -> int:
    if passed is not None and passed.exists():
        passed.unlink()  # a marker from an earlier verdict never stands for this one
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"smoke run: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    problems = smoke_problems(run, partner)
    if problems:
        print(f"smoke run {run.get('run_id')} fails the release: " + "; ".join(problems), file=sys.stderr)
        return 1
    acc = run["accounting"]
    print(f"smoke run {run.get('run_id')} passed: {acc['rows_read']} rows read, {acc['members']} members, "
          f"{acc.get('members_ok', 0)} OK, exit code 0, published")
    if passed is not None:
        passed.parent.mkdir(parents=True, exist_ok=True)
        passed.write_text(f"{run.get('run_id')}\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.release", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verdict", help="check a smoke run's run.json; exit 0 only if the release may go live")
    check.add_argument("run_json", type=Path)
    check.add_argument("--partner", required=True, help="the partner the template is built for")
    check.add_argument("--passed", type=Path, help="write this marker file when the smoke run passes")
    args = parser.parse_args(argv)
    return verdict(args.run_json, args.partner, args.passed)


if __name__ == "__main__":
    sys.exit(main())
