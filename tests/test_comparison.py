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
    return comparison.compare(SUMMARY, then, now_summary, now, FEATURES)[0]


def _with(table: pa.Table, column: str, values: list) -> pa.Table:
    return table.set_column(table.column_names.index(column), column,
                            pa.array(values, table.schema.field(column).type))


def test_identical_runs_give_psi_0_ks_0_and_no_flags():
    result = _compare(_results(), _results())
    assert [c["column"] for c in result["columns"]] == [*FEATURES, "ATS_PREDICTION", "RESP_PREDICTION"]
    for column in result["columns"]:
        assert (column["psi"], column["ks"], column["flag"]) == (0.0, 0.0, None), column
        assert column["n_then"] == column["n_now"] == 400  # members with transactions only
    assert result["offers"]["psi"] == 0.0 and not result["offers"]["moved"]
    m = result["members"]
    assert (m["then"], m["now"], m["new"], m["gone"], m["kept"]) == (410, 410, 0, 0, 410)
    assert m["kept_changed_outcome"] == m["kept_changed_features"] == 0
    assert m["new_ids"] == m["gone_ids"] == m["changed_offer_ids"] == {"count": 0, "ids": [], "all_listed": True}
    assert result["endpoints"]["latency_regressions"] == [] and result["not_compared"] == []
    assert result["headline"] == "410 members (0 new, 0 gone); offer mix stable; no feature or prediction drifted"


@pytest.mark.parametrize("column", ["AVG_REVENUE_USD", "DAYS_SINCE_LAST_TRANSACTION", "RESP_PREDICTION"])
def test_one_shifted_column_is_flagged_and_no_other(column):
    then = _results()
    values = then.column(column).to_pylist()
    shifted = [None if v is None else (v * 2 if column != "DAYS_SINCE_LAST_TRANSACTION" else v + 15) for v in values]
    result = _compare(then, _with(then, column, shifted))
    flagged = {c["column"]: c for c in result["columns"] if c["flag"]}
    assert list(flagged) == [column]
    assert flagged[column]["flag"] == comparison.MAJOR and flagged[column]["ks"] > 0.2
    assert set(flagged[column]["flagged_by"]) == {"psi", "ks", "mean"}
    assert all(c["psi"] == 0.0 for c in result["columns"] if c["column"] != column)
    assert f"{column} drifted (mean " in result["headline"]
    if column in FEATURES:  # every member with transactions; a prediction is not a feature
        assert result["members"]["kept_changed_features"] == 400
        assert "400 of 410 kept members' features changed" in result["headline"]
    else:
        assert result["members"]["kept_changed_features"] == 0


def test_a_third_of_a_column_doubled_is_flagged_though_psi_stays_low():
    """The day a third of the members' revenue doubled: PSI under 0.1, KS and the mean catch it."""
    then = _results(n=900, seed=9)
    values = then.column("AVG_REVENUE_USD").to_pylist()
    now = _with(then, "AVG_REVENUE_USD", [v * 2 if v is not None and i % 3 == 0 else v for i, v in enumerate(values)])
    result = _compare(then, now)
    column = next(c for c in result["columns"] if c["column"] == "AVG_REVENUE_USD")
    assert column["psi"] < comparison.PSI_MODERATE
    assert "ks" in column["flagged_by"] and "mean" in column["flagged_by"], column
    assert column["flag"] == comparison.MODERATE
    assert [c["column"] for c in result["columns"] if c["flag"]] == ["AVG_REVENUE_USD"]
    assert f"AVG_REVENUE_USD drifted (mean {column['mean_change_pct']:+.1f}%, KS {column['ks']:.2f}" \
           in result["headline"]
    assert result["members"]["kept_changed_features_by_column"] == {"AVG_REVENUE_USD": 300}


def test_a_shifted_mean_is_flagged_by_the_mean_test():
    """Every value + 0.3 standard deviations: the mean test flags it whatever PSI says."""
    then = _results(n=2000, seed=4)
    values = then.column("PCT_BUY_TRANSACTIONS").to_pylist()
    sd = float(np.std([v for v in values if v is not None], ddof=1))
    result = _compare(then, _with(then, "PCT_BUY_TRANSACTIONS", [None if v is None else v + 0.3 * sd for v in values]))
    column = next(c for c in result["columns"] if c["column"] == "PCT_BUY_TRANSACTIONS")
    assert "mean" in column["flagged_by"] and column["mean_shift_sd"] == pytest.approx(0.3, rel=1e-6)


def test_a_large_run_does_not_flag_noise():
    """Two samples of the same distribution, 100k members each: significant p-values are not enough."""
    rng = np.random.default_rng(1)
    then, now = rng.normal(100, 10, 100_000), rng.normal(100.05, 10, 100_000)  # a 0.005 sd wobble
    column = comparison.column_drift("X", then, now)
    assert column["flag"] is None and column["flagged_by"] == [], column


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


def test_identical_runs_flag_nothing_whatever_the_data():
    """Property: a run compared with itself flags no column, no member, no endpoint."""
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    finite_floats = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)

    @hypothesis.settings(max_examples=40, deadline=None)
    @hypothesis.given(st.lists(st.tuples(finite_floats, st.one_of(st.none(), finite_floats),
                                         st.integers(0, 5), st.sampled_from(["OFFER_1", "OFFER_2", None])),
                               min_size=1, max_size=60))
    def check(rows):
        n = len(rows)
        table = pa.table({
            "MEMBER_ID": [f"m{i}" for i in range(n)],
            **{name: [r[0] if r[2] else None for r in rows] for name in FEATURES},
            "N_TRANSACTIONS": [r[2] for r in rows],
            "ATS_PREDICTION": [r[1] if r[2] else None for r in rows],
            "RESP_PREDICTION": [r[0] if r[2] else None for r in rows],
            "OFFER": [r[3] if r[2] else None for r in rows],
            "STATUS": ["OK" if r[2] else "NO_TRANSACTIONS" for r in rows],
            **{f"{k}_LATENCY_MS": [abs(r[0]) if r[2] else None for r in rows] for k in ("ATS", "RESP", "OFFER")},
        })
        result, changes = comparison.compare(SUMMARY, table, SUMMARY, table, FEATURES)
        assert [c["column"] for c in result["columns"] if c["flag"] or c["flagged_by"]] == []
        assert changes.num_rows == 0 and result["members"]["kept_changed_features"] == 0
        assert result["endpoints"]["latency_regressions"] == [] and not result["offers"]["moved"]
        assert "no feature or prediction drifted" in result["headline"]

    check()


def test_a_latency_regression_is_in_the_headline_and_a_small_one_is_not():
    then = _results()
    ats = then.column("ATS_LATENCY_MS").to_pylist()
    slower = _with(then, "ATS_LATENCY_MS", [None if v is None else v * 2.5 for v in ats])
    result = _compare(then, slower)
    regressed = result["endpoints"]["latency_regressions"]
    assert {(r["endpoint"], r["percentile"]) for r in regressed} == {("ats", "p50"), ("ats", "p95")}
    p50 = result["endpoints"]["latency_ms"]["ats"]
    assert f"ats latency p50 {p50['then']['p50']:.1f} -> {p50['now']['p50']:.1f} ms" in result["headline"]
    # +30% of a 1 ms call is under the few-ms floor: not a regression
    fast = _with(then, "ATS_LATENCY_MS", [None if v is None else v / 10 for v in ats])
    faster_then_slower = _with(then, "ATS_LATENCY_MS", [None if v is None else v / 10 * 1.3 for v in ats])
    assert comparison.compare(SUMMARY, fast, SUMMARY, faster_then_slower, FEATURES)[0]["endpoints"][
        "latency_regressions"] == []


def test_days_since_counts_from_the_as_of_date():
    """The same transactions a day later: DAYS_SINCE grows by one for everyone, and that is no change."""
    then = _results()
    days = then.column("DAYS_SINCE_LAST_TRANSACTION").to_pylist()
    now = _with(then, "DAYS_SINCE_LAST_TRANSACTION", [None if v is None else v + 1 for v in days])
    _, changes = comparison.compare(SUMMARY, then, SUMMARY | {"as_of": "2026-11-25"}, now, FEATURES)
    assert changes.num_rows == 0


def test_member_ids_new_gone_and_changed_offer_and_the_changes_table(monkeypatch):
    then = _results(members=range(100), offers=["OFFER_1"] * 100)
    now = _results(members=range(20, 130), offers=["OFFER_1"] * 50 + ["OFFER_2"] * 60)
    monkeypatch.setattr(comparison, "MEMBER_IDS_LISTED", 25)
    result, changes = comparison.compare(SUMMARY, then, SUMMARY, now, FEATURES)
    m = result["members"]
    assert m["new_ids"] == {"count": 30, "ids": sorted(f"m{i}" for i in range(100, 130))[:25], "all_listed": False}
    assert m["gone_ids"]["count"] == 20 and m["gone_ids"]["ids"] == sorted(f"m{i}" for i in range(20))
    assert m["changed_offer_ids"]["count"] == 30 and set(m["changed_offer_ids"]["ids"]) <= {
        f"m{i}" for i in range(70, 100)}
    by_id = {r["MEMBER_ID"]: r for r in changes.to_pylist()}
    assert by_id["m5"]["CHANGE"] == "gone" and by_id["m5"]["OUTCOME_NOW"] is None
    assert by_id["m120"]["CHANGE"] == "new" and by_id["m120"]["OUTCOME_THEN"] is None
    assert by_id["m80"] | {"FEATURES_CHANGED": None} == {
        "MEMBER_ID": "m80", "CHANGE": "kept", "OUTCOME_THEN": "OFFER_1", "OUTCOME_NOW": "OFFER_2",
        "OFFER_CHANGED": True, "FEATURES_CHANGED": None}
    assert sum(r["OFFER_CHANGED"] for r in by_id.values()) == 30


def test_another_partner_or_other_features_is_compared_where_comparable():
    then = _results().drop_columns(["PCT_GIFT_TRANSACTIONS"])
    now = _results().append_column("EXTRA_SCORE", pa.array([1.0] * 410))
    other = SUMMARY | {"partner": "acme_rewards"}
    result, changes = comparison.compare(other, then, SUMMARY | {"partner": "default"}, now,
                                         [*FEATURES, "EXTRA_SCORE"], baseline_output="gs://b/yesterday")
    assert "PCT_GIFT_TRANSACTIONS" not in [c["column"] for c in result["columns"]]
    assert "AVG_REVENUE_USD" in [c["column"] for c in result["columns"]]
    assert result["columns_not_compared"] == ["PCT_GIFT_TRANSACTIONS", "EXTRA_SCORE"]
    whats = [n["what"] for n in result["not_compared"]]
    assert whats == ["PCT_GIFT_TRANSACTIONS, EXTRA_SCORE", "members by id"]
    assert result["members"]["compared"] is False and changes.num_rows == 0
    assert result["baseline"]["output"] == "gs://b/yesterday" and result["baseline"]["recorded_output"] == "/x"
    assert "not compared: PCT_GIFT_TRANSACTIONS, EXTRA_SCORE, members by id" in result["headline"]


def test_a_streaming_output_is_compared_on_each_members_latest_update():
    then = _results()
    updates = pa.concat_tables([then, then]).append_column(
        "UPDATE_SEQ", pa.array(list(range(410)) + list(range(1000, 1410)), pa.int64()))
    first_half = updates.slice(0, 410)
    doubled = _with(first_half, "AVG_REVENUE_USD",
                    [None if v is None else 2 * v for v in first_half.column("AVG_REVENUE_USD").to_pylist()])
    stream = pa.concat_tables([doubled, updates.slice(410)])  # the latest update of each is unchanged
    result = _compare(then, stream)
    assert result["members"]["now"] == 410 and [c for c in result["columns"] if c["flag"]] == []


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
