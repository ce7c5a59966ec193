"""Where every row and member of a batch run went, from the counts the pipeline computed.

The last step of a run (``beam_pipeline.finalize``) hands an accountant two
things: the run's counts (``transforms.run_counts``: rows read by kind, members
with features, the results rows' statuses, offers and latencies, the dead
letters' reasons) and the rows each write put in its files (read from the
Parquet footers, not the rows). The accounting must close: every row read is a
transaction, a member-only row or a dead letter; every member with features has
one results row; the dead letters counted are the ones written. A run whose
numbers do not add up is not published.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from beam_pipeline.finalize import Accounts
from beam_pipeline.pipeline import (
    DEAD_LETTER_FILES,
    DEAD_LETTER_REASONS,
    DECIDE_OFFERS,
    MEMBER_FEATURES,
    MEMBERS_WITH_FEATURES,
    PARSE,
    READ_EXPORTS,
    RESULT_STATS,
    RESULTS,
    ROWS,
    TO_RESULT_ROW,
    WRITE_DEAD_LETTERS,
    WRITE_RESULTS,
)
from transforms.parse import MEMBER_ACCUMULATORS
from transforms.results import FAILED, FEATURES_ONLY, NO_TRANSACTIONS, OK, STATUSES

ROW_KEYS = ("rows_read", "header_lines", "transactions", "member_only_rows")


class AccountingError(RuntimeError):
    """The outputs do not account for every row and member: never publish such a run."""


class Step(NamedTuple):
    name: str  # label in run.json
    transform: str  # top-level transform label (pipeline.py)
    unit: str  # what an element is
    elements: Callable[[dict], int]  # its element count, from the accounting
    # Where the block reader folds rows before the step: (unit, count of its elements) then.
    prefolded: tuple[str, str] | None = None


STEPS = (
    Step("read", READ_EXPORTS, "lines", lambda a: a["rows_read"] + a["header_lines"]),
    Step("parse", PARSE, "rows", lambda a: a["rows_read"]),
    # The line reader sends every row to the combine; the block reader about one accumulator per member.
    Step("features", MEMBER_FEATURES, "rows", lambda a: a["transactions"] + a["member_only_rows"],
         prefolded=("accumulators", MEMBER_ACCUMULATORS)),
    Step("call_endpoints", DECIDE_OFFERS, "members", lambda a: a["members_ok"] + a["members_failed"]),
    Step("result_rows", TO_RESULT_ROW, "members", lambda a: a["members"]),
    Step("write_results", WRITE_RESULTS, "rows", lambda a: a["members"]),
    Step("write_dead_letters", WRITE_DEAD_LETTERS, "rows", lambda a: a["dead_letter_rows"]),
)


def step_elements(acc: dict, counted: Mapping[str, int], table: tuple[Step, ...]) -> list[dict]:
    """run.json's steps with their element counts; seconds are the runner's to add (``summary.timed_steps``)."""
    out = []
    for step in table:
        unit, elements = step.unit, step.elements(acc)
        if step.prefolded and step.prefolded[1] in counted:
            unit, elements = step.prefolded[0], counted[step.prefolded[1]]
        out.append({"name": step.name, "transform": step.transform, "unit": unit, "elements": elements,
                    "seconds": None, "per_second": None, "seconds_source": None})
    return out


def members_by_status(statuses: Mapping[str, int]) -> dict:
    return {
        "members_ok": statuses.get(OK, 0),
        "members_no_transactions": statuses.get(NO_TRANSACTIONS, 0),
        "members_failed": statuses.get(FAILED, 0),
        "members_features_only": statuses.get(FEATURES_ONLY, 0),
    }


def status_problems(statuses: Mapping, rows: int, written: int) -> list[str]:
    problems = []
    if set(statuses) - set(STATUSES):
        problems.append(f"unexpected statuses {dict(statuses)}")
    if rows != written:
        problems.append(f"{rows} results rows were made but {written} were written")
    return problems


def row_problems(acc: dict, counted_dead: int | None, reasons: Mapping[str, int]) -> list[str]:
    """Every row read is a transaction, a member-only row or a dead letter; the dead letters add up."""
    problems = []
    if acc["rows_read"] != acc["transactions"] + acc["member_only_rows"] + acc["dead_letter_rows"]:
        problems.append(
            f"rows_read {acc['rows_read']} != transactions {acc['transactions']} + member_only_rows "
            f"{acc['member_only_rows']} + dead_letter_rows {acc['dead_letter_rows']}"
        )
    if counted_dead is not None and counted_dead != acc["dead_letter_rows"]:
        problems.append(f"dead-letter counter {counted_dead} != rows written {acc['dead_letter_rows']}")
    if sum(reasons.values()) != acc["dead_letter_rows"]:
        problems.append(f"dead-letter reasons add up to {sum(reasons.values())}, "
                        f"{acc['dead_letter_rows']} rows were written")
    return problems


class BatchAccountant:
    """The batch job's accounting (``facts`` and ``written`` as ``beam_pipeline.finalize`` gathers them)."""

    steps = STEPS

    def account(self, facts: Mapping, written: Mapping[str, int]) -> Accounts:
        rows, stats, reasons = facts[ROWS], facts[RESULT_STATS], facts[DEAD_LETTER_REASONS]
        members = written[RESULTS]
        acc = {key: rows.get(key, 0) for key in ROW_KEYS}
        acc.update(dead_letter_rows=written[DEAD_LETTER_FILES], members=members, **members_by_status(stats["statuses"]))
        problems = row_problems(acc, rows.get("dead_letter_rows", 0), reasons)
        with_features = facts.get(MEMBERS_WITH_FEATURES)
        if with_features is not None and with_features != members:
            problems.append(f"{with_features} members had features but {members} results rows were written")
        problems += status_problems(stats["statuses"], stats["rows"], members)
        return Accounts(acc, problems, stats["offers"], dict(reasons), stats["latency_ms"],
                        step_elements(acc, rows, self.steps))
