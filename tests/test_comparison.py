"""Run comparison statistics (beam_pipeline.comparison), on small hand-made tables: no Beam, no drawing."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from lantern import comparison
from lantern.features import SPEC_FEATURES

FEATURES = list(SPEC_FEATURES)


def _results(n: int = 400, seed: int = 3, members: range | None = None, offers: list | None = None) -> pa.Table:
    """A results table: ``n`` members with transactions (features drawn from fixed distributions), 10 without."""
    rng = np.random.default_rng(seed)
    ids = [f"m{i}" for i in (members if members is not None else range(n))]
    columns = {
        "MEMBER_ID": ids + [f"idle{i}" for i in range(10)],
        **{name: list(rng.gamma(2.0, 10.0, len(ids))) + [None] * 10 for name in FEATURES},
        "N_TRANSACTIONS": [int(k) for k in rng.integers(1, 9, len(ids))] + [0] * 10,
        "ATS_PREDICTION": list(rng.gamma(2.0, 100.0, len(ids))) + [None] * 10,
        "RESP_PREDICTION": list(rng.uniform(0, 0.9, len(ids))) + [None] * 10,
        "OFFER": (offers or ["OFFER_1" if i % 4 else "OFFER_2" for i in range(len(ids))]) + [None] * 10,
        "STATUS": ["OK"] * len(ids) + ["NO_TRANSACTIONS"] * 10,
        **{f"{k}_LATENCY_MS": list(rng.uniform(5, 15, len(ids))) + [None] * 10 for k in ("ATS", "RESP", "OFFER")},
    }
    columns["DAYS_SINCE_LAST_TRANSACTION"] = [int(v) if v is not None else None
                                              for v in columns["DAYS_SINCE_LAST_TRANSACTION"]]
    return pa.table(columns)


SUMMARY = {"run_id": "r", "as_of": "2026-11-24", "output": "/x", "dead_letter_reasons": {"BAD_NUMBER": 2},
           "accounting": {"rows_read": 100}}


def _compare(then: pa.Table, now: pa.Table, now_summary: dict = SUMMARY) -> dict:
    return comparison.compare(SUMMARY, then, now_summary, now, FEATURES)


def test_identical_runs_give_psi_0_ks_0_and_no_flags():
    result = _compare(_results(), _results())
    assert [c["column"] for c in result["columns"]] == [*FEATURES, "ATS_PREDICTION", "RESP_PREDICTION"]
    for column in result["columns"]:
        assert (column["psi"], column["ks"], column["flag"]) == (0.0, 0.0, None), column
        assert column["n_then"] == column["n_now"] == 400  # members with transactions only
    assert result["offers"]["psi"] == 0.0 and not result["offers"]["moved"]
    assert result["members"] | {"transitions": None} == {
        "then": 410, "now": 410, "new": 0, "gone": 0, "kept": 410, "kept_changed_outcome": 0, "transitions": None}
    assert result["headline"] == "410 members (0 new, 0 gone); offer mix stable; no feature or prediction drifted"


@pytest.mark.parametrize("column", ["AVG_REVENUE_USD", "DAYS_SINCE_LAST_TRANSACTION", "RESP_PREDICTION"])
def test_one_shifted_column_is_flagged_and_no_other(column):
    then = _results()
    values = then.column(column).to_pylist()
    shifted = [None if v is None else (v * 2 if column != "DAYS_SINCE_LAST_TRANSACTION" else v + 15) for v in values]
    now = then.set_column(then.column_names.index(column), column, pa.array(shifted, then.schema.field(column).type))
    result = _compare(then, now)
    flagged = {c["column"]: c for c in result["columns"] if c["flag"]}
    assert list(flagged) == [column]
    assert flagged[column]["flag"] == comparison.MAJOR and flagged[column]["ks"] > 0.2
    assert all(c["psi"] == 0.0 for c in result["columns"] if c["column"] != column)
    assert f"{column} drifted (PSI {flagged[column]['psi']:.2f})" in result["headline"]


def test_psi_by_hand_when_every_current_value_falls_in_one_baseline_decile():
    baseline = np.arange(100, dtype=float)
    current = np.full(50, 3.0)  # all in the first decile
    expected = 0.9 * math.log(1 / 0.1) + 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert comparison.psi(baseline, current) == pytest.approx(expected, rel=1e-12)
    assert comparison.flag(comparison.psi(baseline, current)) == comparison.MAJOR
    assert comparison.psi(baseline, np.array([])) is None


def test_thresholds_and_ties():
    assert [comparison.flag(v) for v in (None, 0.05, 0.1, 0.1001, 0.25, 0.2501)] == [
        None, None, None, "moderate", "moderate", "major"]
    many_zeros = np.array([0.0] * 80 + [0.5] * 15 + [1.0] * 5)
    # deciles 1-7 are all 0 and merge; the 8th falls between 0 and 0.5 (linear interpolation), the 9th is 0.5
    assert list(comparison.psi_edges(many_zeros)) == [0.0, pytest.approx(0.1), 0.5]
    assert comparison.psi(many_zeros, many_zeros[::-1].copy()) == 0.0
    assert list(comparison.finite([1.0, None, math.inf, math.nan, -2.0])) == [1.0, -2.0]


def test_members_new_gone_kept_and_offer_transitions():
    then = _results(members=range(100), offers=["OFFER_1"] * 100)
    now = _results(members=range(20, 130), offers=["OFFER_1"] * 50 + ["OFFER_2"] * 60)
    m = comparison.members(then, now)
    assert (m["new"], m["gone"], m["kept"]) == (30, 20, 90)
    # kept m20..m99 are positions 0..79 of `now`: m20..m69 stay OFFER_1, m70..m99 move to OFFER_2
    assert {(t["then"], t["now"]): t["members"] for t in m["transitions"]} == {
        ("OFFER_1", "OFFER_1"): 50, ("OFFER_1", "OFFER_2"): 30, ("NO_TRANSACTIONS", "NO_TRANSACTIONS"): 10}
    assert m["kept_changed_outcome"] == 30
    result = _compare(then, now)
    assert result["offers"]["moved"] and result["offers"]["largest_share_change"] == {
        "offer": "OFFER_2", "then_pct": 0.0, "now_pct": pytest.approx(100 * 60 / 110, abs=1e-3)}
    assert "offer mix moved (OFFER_2 0.0% -> 54.5% of offers" in result["headline"]
    assert "30 kept members changed offer" in result["headline"]


def test_a_small_share_move_keeps_the_mix_stable():
    then = {"OFFER_1": 900, "OFFER_2": 100}
    assert comparison.categorical_psi(then, then) == 0.0
    assert comparison.largest_share_change(then, {"OFFER_1": 880, "OFFER_2": 120})["offer"] == "OFFER_2"


def test_dead_letters_endpoints_and_failure_rate():
    then = _results()
    failed = then.set_column(then.column_names.index("STATUS"), "STATUS",
                             pa.array(["FAILED"] * 100 + ["OK"] * 300 + ["NO_TRANSACTIONS"] * 10))
    now_summary = SUMMARY | {"dead_letter_reasons": {"BAD_TIMESTAMP": 5}}
    result = _compare(then, failed, now_summary)
    assert result["dead_letters"]["reasons"] == {"BAD_NUMBER": {"then": 2, "now": 0}, "BAD_TIMESTAMP": {"then": 0, "now": 5}}
    assert result["endpoints"]["failure_rate"] == {"then": 0.0, "now": 0.25}
    latency = np.asarray(then.column("ATS_LATENCY_MS").drop_null().to_pylist())
    assert result["endpoints"]["latency_ms"]["ats"]["then"] == {
        "p50": round(float(np.quantile(latency, 0.5)), 3), "p95": round(float(np.quantile(latency, 0.95)), 3),
        "calls": 400}
    assert result["headline"].endswith("; failure rate 0.0% -> 25.0%; rejected rows 2 -> 5")
