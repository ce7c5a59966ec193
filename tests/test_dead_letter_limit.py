"""The dead-letter limit's pure pieces: which limit applies, when it is passed, what the line says."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline import dead_letter_limit as D
from lantern.errors import ConfigError
from lantern.partner import PartnerConfig


def acc(rows: int, dead: int) -> dict:
    return {"rows_read": rows, "dead_letter_rows": dead}


def test_the_command_line_wins_over_the_partner_file_whose_default_is_5_percent():
    assert D.limit_for(None, PartnerConfig(name="p")) == 0.05
    partner = PartnerConfig.model_validate({"name": "p", "input": {"max_dead_letter_ratio": 0.2}})
    assert D.limit_for(None, partner) == 0.2
    assert D.limit_for(0.0, partner) == 0.0
    with pytest.raises(ConfigError, match=r"--max-dead-letter-ratio -0\.1 is not between 0 and 1"):
        D.limit_for(-0.1, partner)


@pytest.mark.parametrize("rows, dead, limit, exceeded", [
    (100, 5, 0.05, False),  # at the limit: allowed
    (100, 6, 0.05, True),
    (100, 0, 0.0, False),
    (100, 1, 0.0, True),  # 0: not a single dead letter allowed
    (100, 100, 1.0, False),  # 1.0: off
    (0, 0, 0.05, False),  # nothing read
])
def test_judge(rows, dead, limit, exceeded):
    verdict = D.judge(acc(rows, dead), limit)
    assert verdict.exceeded is exceeded and verdict.ratio == (dead / rows if rows else 0.0)


def test_a_note_only_below_the_limit_and_above_zero():
    assert D.note(D.judge(acc(100, 0), 0.05)) is None
    assert D.note(D.judge(acc(100, 6), 0.05)) is None  # past it: the error line says it instead
    assert D.note(D.judge(acc(1000, 4), 0.05)) == "note: dead-letter ratio 0.004, under the limit 0.05"
    assert D.note(D.judge(acc(10, 9), 1.0)) == "note: dead-letter ratio 0.9, no limit set"


def test_top_reasons_most_frequent_first_ties_by_name():
    assert D.top_reasons({"B": 2, "A": 2, "C": 5, "D": 1}) == [("C", 5), ("A", 2), ("B", 2)]


def test_first_example_and_the_failure_line(tmp_path):
    folder = tmp_path / "dead_letter"
    folder.mkdir()
    for i, reasons in enumerate((["BAD_NUMBER"], ["BAD_NUMBER", "UNKNOWN_TYPE", "UNKNOWN_TYPE"])):
        pq.write_table(pa.table({
            "SOURCE": ["f.csv"] * len(reasons), "RAW_LINE": [f"line {i}.{j}" for j in range(len(reasons))],
            "REASON": reasons, "DETAIL": ["d " + "x" * 200] * len(reasons),
        }), folder / f"part-{i}.parquet")
    example = D.first_example(str(folder), "UNKNOWN_TYPE")
    assert example["RAW_LINE"] == "line 1.1"
    assert D.first_example(str(folder), "BLANK_LINE") is None
    verdict = D.judge(acc(10, 4), 0.05)
    line = D.failure_line(verdict, acc(10, 4), {"UNKNOWN_TYPE": 2, "BAD_NUMBER": 2}, example, "/o/_staging-x")
    assert line == (
        "4 of 10 rows are dead letters (ratio 0.4), above the limit 0.05 (--max-dead-letter-ratio, partner "
        "input.max_dead_letter_ratio); top reasons: BAD_NUMBER 2, UNKNOWN_TYPE 2; e.g. 'line 1.1' in f.csv: "
        f"UNKNOWN_TYPE: d {'x' * 118}...; the run is not published, its outputs are in /o/_staging-x"
    )
    assert "\n" not in line
