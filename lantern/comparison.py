"""How one run moved against another: members, offers, feature and prediction drift, rows, endpoints.

Pure functions over the two runs' ``run.json`` and results tables, no Beam and
no drawing, so every number in ``comparison.json`` (and the report's "Since the
baseline" section) is tested on its own.

Drift is measured per column over the members with transactions (the others
have no features), by three tests, any of which flags the column:

- the population stability index (PSI) over ten bins cut at the baseline's
  deciles: above 0.1 a moderate shift, above 0.25 a major one (the usual
  credit-risk convention). A run identical to its baseline gets exactly 0.
- the two-sample Kolmogorov-Smirnov test, flagged when p < 0.001 *and* the
  statistic (the largest gap between the two cumulative distributions) is at
  least 0.1: with 100k members a p-value alone flags noise, and PSI alone
  misses a third of a column doubled (PSI 0.08, KS 0.13).
- a mean shift: Welch's t-test p < 0.001 *and* the means at least 0.1 baseline
  standard deviations apart.

A column flagged only by KS or the mean is ``moderate``; PSI above 0.25 is
``major``.
"""
from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PSI_BINS = 10
PSI_MODERATE = 0.1
PSI_MAJOR = 0.25
# The share given to a bin that one run leaves empty: ln(0) would make PSI infinite, and one
# empty bin out of ten is a real shift, which this floor keeps large but finite.
PSI_FLOOR = 1e-4
# The offer mix is "stable" only if its PSI is not flagged and no offer's share of the members
# with an offer moved this many percentage points: with two or three offers, PSI alone lets an
# offer go from 12% to 22% of members unflagged, which is exactly what an operator must see.
OFFER_SHARE_POINTS = 5.0
# KS and mean-shift flags need both a small p-value and an effect this large: significance
# alone grows with the number of members, so a large run would flag noise.
KS_PVALUE = 1e-3
KS_MIN_STATISTIC = 0.1
MEAN_PVALUE = 1e-3
MEAN_MIN_SHIFT_SD = 0.1  # |mean now - mean then| in baseline standard deviations
# An endpoint's latency regressed when its p50 or p95 rose by more than this share and by at least
# LATENCY_MIN_MS: +25% of a 2 ms call is scheduling noise, +25% of 100 ms is not.
LATENCY_RISE = 0.25
LATENCY_MIN_MS = 3.0
# comparison.json lists member ids up to this many per list; all of them are in the members Parquet.
MEMBER_IDS_LISTED = 1000
# Two feature values are the same when they differ by no more than this (relative): the exact
# arithmetic gives equal inputs equal features, so only a printing round-off is tolerated.
FEATURE_RTOL = 1e-12
DAYS_SINCE = "DAYS_SINCE_LAST_TRANSACTION"  # counts from the as-of date: shifted by the dates' gap
PREDICTIONS = ("ATS_PREDICTION", "RESP_PREDICTION")
ENDPOINTS = ("ats", "resp", "offer")
MODERATE, MAJOR = "moderate", "major"


def finite(values: Iterable[float | None]) -> np.ndarray:
    """The values as float64 without nulls, NaN or infinities (which no bin or CDF can hold)."""
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return array[np.isfinite(array)]


def psi_edges(baseline: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Inner bin edges at the baseline's quantiles; repeated edges (ties, e.g. many zeros) merge."""
    quantiles = np.quantile(baseline, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(quantiles)


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` per bin; bin i holds edges[i-1] < v <= edges[i], the outer bins are open."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / counts.sum()


def psi(baseline: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float | None:
    """Population stability index of ``current`` against ``baseline``; None when either is empty."""
    if len(baseline) == 0 or len(current) == 0:
        return None
    edges = psi_edges(baseline, bins)
    expected = np.maximum(shares(baseline, edges), PSI_FLOOR)
    actual = np.maximum(shares(current, edges), PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def categorical_psi(baseline: dict, current: dict) -> float | None:
    """PSI over categories (counts per category), e.g. the offer mix."""
    total_then, total_now = sum(baseline.values()), sum(current.values())
    if not total_then or not total_now:
        return None
    value = 0.0
    for key in set(baseline) | set(current):
        expected = max(baseline.get(key, 0) / total_then, PSI_FLOOR)
        actual = max(current.get(key, 0) / total_now, PSI_FLOOR)
        value += (actual - expected) * math.log(actual / expected)
    return value


def flag(value: float | None) -> str | None:
    """The PSI's own flag: None, moderate (above 0.1) or major (above 0.25)."""
    if value is None or value <= PSI_MODERATE:
        return None
    return MAJOR if value > PSI_MAJOR else MODERATE


def mean_shift(baseline: np.ndarray, current: np.ndarray) -> tuple[float | None, float | None]:
    """(shift in baseline standard deviations, Welch's t-test p-value); None when not defined.

    Identical samples give (0, 1); a constant baseline that moved gives an infinite shift and p 0.
    """
    if len(baseline) < 2 or len(current) < 2:
        return None, None
    with np.errstate(all="ignore"):
        diff = float(np.mean(current) - np.mean(baseline))
        sd = float(np.std(baseline, ddof=1))
        var_now = float(np.var(current, ddof=1))
    if not math.isfinite(diff) or not math.isfinite(sd) or not math.isfinite(var_now):
        return None, None
    if diff == 0:
        return 0.0, 1.0
    from scipy import stats  # the report's extra: the pipeline imports this module without it

    if sd == 0 and var_now == 0:
        return math.inf, 0.0
    pvalue = float(stats.ttest_ind(baseline, current, equal_var=False).pvalue)
    return (abs(diff) / sd if sd else math.inf), (pvalue if math.isfinite(pvalue) else None)


def flags(psi_value: float | None, ks: float | None, ks_pvalue: float | None, shift_sd: float | None,
          mean_pvalue: float | None) -> list[str]:
    """Which tests flag a column: any of ``psi``, ``ks``, ``mean``."""
    out = []
    if flag(psi_value):
        out.append("psi")
    if ks is not None and ks_pvalue is not None and ks >= KS_MIN_STATISTIC and ks_pvalue < KS_PVALUE:
        out.append("ks")
    if shift_sd is not None and mean_pvalue is not None and shift_sd >= MEAN_MIN_SHIFT_SD \
            and mean_pvalue < MEAN_PVALUE:
        out.append("mean")
    return out


def column_drift(name: str, baseline: np.ndarray, current: np.ndarray) -> dict:
    """One column's drift: PSI, KS, the mean shift, which of them flag it and how badly."""
    from scipy import stats  # the report's extra: the pipeline imports this module without it

    value = psi(baseline, current)
    ks = stats.ks_2samp(baseline, current) if len(baseline) and len(current) else None
    mean_then = float(np.mean(baseline)) if len(baseline) else None
    mean_now = float(np.mean(current)) if len(current) else None
    shift_sd, mean_pvalue = mean_shift(baseline, current)
    ks_stat = _round(float(ks.statistic)) if ks is not None else None
    ks_pvalue = float(ks.pvalue) if ks is not None else None
    flagged_by = flags(value, ks_stat, ks_pvalue, shift_sd, mean_pvalue)
    change = None
    if mean_then and mean_now is not None and math.isfinite(mean_then) and math.isfinite(mean_now):
        change = _round(100 * (mean_now - mean_then) / abs(mean_then), 3)
    return {
        "column": name,
        "n_then": len(baseline),
        "n_now": len(current),
        "mean_then": mean_then,
        "mean_now": mean_now,
        "mean_change_pct": change,
        # an infinite shift (a constant baseline that moved) has no JSON number: null, still flagged
        "mean_shift_sd": _round(shift_sd) if shift_sd is not None and math.isfinite(shift_sd) else None,
        "mean_pvalue": mean_pvalue,
        "psi": _round(value),
        "ks": ks_stat,
        "ks_pvalue": ks_pvalue,
        "flagged_by": flagged_by,
        "flag": (MAJOR if flag(value) == MAJOR else MODERATE) if flagged_by else None,
    }


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def with_transactions(results: pa.Table) -> pa.Table:
    return results.filter(pc.fill_null(pc.greater(results.column("N_TRANSACTIONS"), 0), False))


def drift_columns(baseline: pa.Table, current: pa.Table, features: Sequence[str]) -> list[str]:
    """The feature columns both runs have, in the current run's order, then the two predictions."""
    shared = [c for c in features if c in baseline.column_names]
    return shared + [c for c in PREDICTIONS if c in baseline.column_names and c in current.column_names]


def drift(baseline: pa.Table, current: pa.Table, columns: Sequence[str]) -> list[dict]:
    """Per column, over the members with transactions of each run."""
    then, now = with_transactions(baseline), with_transactions(current)
    return [column_drift(c, finite(then.column(c).to_pylist()), finite(now.column(c).to_pylist()))
            for c in columns]


def _outcome(offer: str | None, status: str) -> str:
    """What a member ended with: its offer, or its status when it got none (NO_TRANSACTIONS, FAILED)."""
    return offer if offer is not None else status


def one_row_per_member(results: pa.Table) -> pa.Table:
    """The results with one row per member: a streaming output has one row per update, and the
    member's state is its latest (highest ``UPDATE_SEQ``); a batch output is returned as it is."""
    if "UPDATE_SEQ" not in results.column_names or results.num_rows == 0:
        return results
    order = pc.sort_indices(results, sort_keys=[("MEMBER_ID", "ascending"), ("UPDATE_SEQ", "descending")])
    ordered = results.take(order)
    ids = ordered.column("MEMBER_ID").to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return ordered.filter(pa.array(first))


def _outcomes(results: pa.Table) -> list[str]:
    return list(map(_outcome, results.column("OFFER").to_pylist(), results.column("STATUS").to_pylist()))


def _as_float(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values as float64 with nulls as 0, validity mask)."""
    valid = np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False), dtype=bool)
    values = np.asarray(pc.fill_null(column.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False),
                        dtype=np.float64)
    return values, valid


def _changed(then: pa.ChunkedArray, now: pa.ChunkedArray, shift: float = 0.0) -> np.ndarray:
    """Per row: the value changed (null on one side only, or values apart by more than round-off).

    ``shift`` is added to the baseline's value first: a day-count from the as-of date grows by
    the dates' gap without anything having happened."""
    a, a_valid = _as_float(then)
    b, b_valid = _as_float(now)
    with np.errstate(all="ignore"):
        same = (a + shift == b) | np.isclose(a + shift, b, rtol=FEATURE_RTOL, atol=0.0) | (np.isnan(a) & np.isnan(b))
    return np.where(a_valid & b_valid, ~same, a_valid != b_valid)


def _gap_days(baseline_as_of: str | None, current_as_of: str | None) -> int:
    try:
        return (dt.date.fromisoformat(current_as_of) - dt.date.fromisoformat(baseline_as_of)).days
    except (TypeError, ValueError):
        return 0


MEMBER_CHANGES_SCHEMA = pa.schema([
    ("MEMBER_ID", pa.string()),
    ("CHANGE", pa.string()),  # new, gone, or kept (with an outcome or features changed)
    ("OUTCOME_THEN", pa.string()),
    ("OUTCOME_NOW", pa.string()),
    ("OFFER_CHANGED", pa.bool_()),
    ("FEATURES_CHANGED", pa.list_(pa.string())),  # the kept member's columns whose value changed
])


def member_changes(baseline: pa.Table, current: pa.Table, columns: Sequence[str],
                   gap_days: int = 0) -> pa.Table:
    """One row per member that is new, gone, or kept with its outcome or a feature changed.

    ``columns`` are the feature columns both runs have (plus ``N_TRANSACTIONS``);
    ``gap_days`` is how many days the current as-of date is after the baseline's."""
    compared = [c for c in (*columns, "N_TRANSACTIONS") if c in baseline.column_names and c in current.column_names]
    compared = list(dict.fromkeys(compared))

    def side(results: pa.Table, seen: str) -> pa.Table:
        return pa.table({"MEMBER_ID": results.column("MEMBER_ID").cast(pa.string()),
                         **{c: results.column(c).cast(pa.float64()) for c in compared},
                         "OUTCOME": pa.array(_outcomes(results), pa.string()),
                         seen: pa.array(np.ones(results.num_rows, dtype=bool))})

    left, right = side(baseline, "IN_THEN"), side(current, "IN_NOW")
    joined = left.join(right, "MEMBER_ID", join_type="full outer", left_suffix="_THEN", right_suffix="_NOW",
                       coalesce_keys=True)
    if joined.num_rows == 0:
        return MEMBER_CHANGES_SCHEMA.empty_table()
    joined = joined.sort_by("MEMBER_ID")
    in_then = np.asarray(pc.fill_null(joined.column("IN_THEN"), False).to_numpy(zero_copy_only=False), dtype=bool)
    in_now = np.asarray(pc.fill_null(joined.column("IN_NOW"), False).to_numpy(zero_copy_only=False), dtype=bool)
    kept = in_then & in_now
    then_outcome, now_outcome = joined.column("OUTCOME_THEN"), joined.column("OUTCOME_NOW")
    offer_changed = kept & np.asarray(
        pc.fill_null(pc.not_equal(then_outcome, now_outcome), False).to_numpy(zero_copy_only=False), dtype=bool)
    per_column = {c: kept & _changed(joined.column(f"{c}_THEN"), joined.column(f"{c}_NOW"),
                                     gap_days if c == DAYS_SINCE else 0.0) for c in compared}
    any_feature = np.zeros(joined.num_rows, dtype=bool)
    for mask in per_column.values():
        any_feature |= mask
    keep = ~kept | offer_changed | any_feature
    rows = np.flatnonzero(keep)
    names = [[c for c in compared if per_column[c][i]] or None for i in rows]
    change = np.where(in_then & ~in_now, "gone", np.where(~in_then, "new", "kept"))[rows]
    return pa.table({
        "MEMBER_ID": joined.column("MEMBER_ID").take(pa.array(rows)),
        "CHANGE": pa.array(change.tolist(), pa.string()),
        "OUTCOME_THEN": then_outcome.take(pa.array(rows)),
        "OUTCOME_NOW": now_outcome.take(pa.array(rows)),
        "OFFER_CHANGED": pa.array(offer_changed[rows]),
        "FEATURES_CHANGED": pa.array(names, pa.list_(pa.string())),
    }, schema=MEMBER_CHANGES_SCHEMA)


def _ids(changes: pa.Table, mask) -> dict:
    ids = changes.filter(mask).column("MEMBER_ID").to_pylist()
    return {"count": len(ids), "ids": ids[:MEMBER_IDS_LISTED], "all_listed": len(ids) <= MEMBER_IDS_LISTED}


def members(baseline: pa.Table, current: pa.Table, changes: pa.Table | None = None) -> dict:
    """Members new, gone and kept; for the kept ones the outcome transitions then -> now, how many
    changed features; and the ids of the new, gone and changed-offer members (first
    ``MEMBER_IDS_LISTED`` of each; ``changes`` has them all)."""
    then = dict(zip(baseline.column("MEMBER_ID").to_pylist(), _outcomes(baseline), strict=True))
    now = dict(zip(current.column("MEMBER_ID").to_pylist(), _outcomes(current), strict=True))
    kept = then.keys() & now.keys()
    transitions = Counter((then[m], now[m]) for m in kept)
    if changes is None:
        changes = member_changes(baseline, current, [])
    change = changes.column("CHANGE")
    features = changes.filter(pc.is_valid(changes.column("FEATURES_CHANGED")))
    by_column = Counter(c for names in features.column("FEATURES_CHANGED").to_pylist() for c in names)
    return {
        "compared": True,
        "then": len(then),
        "now": len(now),
        "new": len(now.keys() - then.keys()),
        "gone": len(then.keys() - now.keys()),
        "kept": len(kept),
        "kept_changed_outcome": sum(n for (a, b), n in transitions.items() if a != b),
        "kept_changed_features": features.num_rows,
        "kept_changed_features_by_column": dict(sorted(by_column.items())),
        "transitions": [{"then": a, "now": b, "members": n}
                        for (a, b), n in sorted(transitions.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1])))],
        "new_ids": _ids(changes, pc.equal(change, "new")),
        "gone_ids": _ids(changes, pc.equal(change, "gone")),
        "changed_offer_ids": _ids(changes, changes.column("OFFER_CHANGED")),
    }


def offer_mix(results: pa.Table) -> dict[str, int]:
    counts = Counter(o for o in results.column("OFFER").to_pylist() if o is not None)
    return dict(sorted(counts.items()))


def largest_share_change(then: dict[str, int], now: dict[str, int]) -> dict | None:
    """The offer whose share of the members with an offer moved most (percentage points)."""
    total_then, total_now = sum(then.values()), sum(now.values())
    if not total_then or not total_now:
        return None
    moves = [{"offer": o, "then_pct": round(100 * then.get(o, 0) / total_then, 3),
              "now_pct": round(100 * now.get(o, 0) / total_now, 3)} for o in sorted(set(then) | set(now))]
    # With two offers both move by the same points: name the one that moved most relative to its size.
    return max(moves, key=lambda m: (round(abs(m["now_pct"] - m["then_pct"]), 6),
                                     abs(m["now_pct"] - m["then_pct"]) / max(m["then_pct"], 1e-9)))


def offers(baseline: pa.Table, current: pa.Table) -> dict:
    then, now = offer_mix(baseline), offer_mix(current)
    value = categorical_psi(then, now)
    largest = largest_share_change(then, now)
    moved = flag(value) is not None or (
        largest is not None and abs(largest["now_pct"] - largest["then_pct"]) >= OFFER_SHARE_POINTS)
    return {"then": then, "now": now, "psi": _round(value), "flag": flag(value), "largest_share_change": largest,
            "moved": moved}


def dead_letters(baseline_summary: dict, current_summary: dict) -> dict:
    """Rejected rows by reason, then and now (from each run's run.json)."""
    then = baseline_summary.get("dead_letter_reasons") or {}
    now = current_summary.get("dead_letter_reasons") or {}
    reasons = {r: {"then": then.get(r, 0), "now": now.get(r, 0)} for r in sorted(set(then) | set(now))}
    rows_then = (baseline_summary.get("accounting") or {}).get("rows_read")
    rows_now = (current_summary.get("accounting") or {}).get("rows_read")
    return {"reasons": reasons, "total_then": sum(then.values()), "total_now": sum(now.values()),
            "rows_read_then": rows_then, "rows_read_now": rows_now}


def latency(results: pa.Table, column: str) -> dict:
    """p50/p95 of one latency column (ms) and how many calls it covers."""
    if column not in results.column_names:
        return {"p50": None, "p95": None, "calls": 0}
    values = finite(results.column(column).to_pylist())
    if len(values) == 0:
        return {"p50": None, "p95": None, "calls": 0}
    p50, p95 = np.quantile(values, [0.5, 0.95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "calls": len(values)}


def failure_rate(results: pa.Table) -> float | None:
    """FAILED members over the members whose endpoints were called (OK + FAILED)."""
    statuses = Counter(results.column("STATUS").to_pylist())
    called = statuses["OK"] + statuses["FAILED"]
    return statuses["FAILED"] / called if called else None


# The parts of a call's latency compared, by results column suffix: the whole call, and (where both
# runs measured it) its time on the wire, the server's share, which queueing cannot blur.
LATENCY_PARTS = (("LATENCY_MS", "latency"), ("WIRE_MS", "wire time"))


def regressions(latency_ms: dict, part: str = "latency") -> list[dict]:
    """Endpoints whose p50 or p95 rose by more than ``LATENCY_RISE`` and at least ``LATENCY_MIN_MS``."""
    out = []
    for kind, both in latency_ms.items():
        for q in ("p50", "p95"):
            then, now = both["then"][q], both["now"][q]
            if then is not None and now is not None and now - then >= LATENCY_MIN_MS \
                    and now > then * (1 + LATENCY_RISE):
                out.append({"endpoint": kind, "part": part, "percentile": q, "then_ms": then, "now_ms": now,
                            "rise_pct": round(100 * (now - then) / then, 1) if then else None})
    return out


def endpoints(baseline: pa.Table, current: pa.Table) -> dict:
    out, found = {}, []
    for suffix, part in LATENCY_PARTS:
        columns = [f"{kind.upper()}_{suffix}" for kind in ENDPOINTS]
        if suffix != "LATENCY_MS" and not all(c in t.column_names for c in columns for t in (baseline, current)):
            continue
        table = {kind: {"then": latency(baseline, column), "now": latency(current, column)}
                 for kind, column in zip(ENDPOINTS, columns, strict=True)}
        out[suffix.lower()] = table
        found += regressions(table, part)
    return {
        **out,
        "latency_regressions": found,
        "failure_rate": {"then": failure_rate(baseline), "now": failure_rate(current)},
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _why(column: dict) -> str:
    """What flagged a column, in words: the mean's move, then KS, then PSI."""
    parts = []
    if "mean" in column["flagged_by"]:
        change = column["mean_change_pct"]
        parts.append(f"mean {change:+.1f}%" if change is not None else
                     f"mean {column['mean_then']:.3g} -> {column['mean_now']:.3g}")
    if "ks" in column["flagged_by"]:
        parts.append(f"KS {column['ks']:.2f}")
    parts.append(f"PSI {column['psi']:.2f}")
    return ", ".join(parts)


def _severity(column: dict) -> tuple:
    return (column["flag"] != MAJOR, -(column["psi"] or 0), -(column["ks"] or 0))


def headline(comparison: dict) -> str:
    """One sentence: members, the offer mix, what changed for kept members, every flagged column
    (worst first), latency regressions, and failures and rejected rows if they moved."""
    m = comparison["members"]
    if m["compared"]:
        parts = [f"{m['now']:,} members ({m['new']:,} new, {m['gone']:,} gone)"]
    else:
        parts = [f"{m['now']:,} members ({m['then']:,} in the baseline, not compared by id)"]
    mix = comparison["offers"]
    if mix["psi"] is None:
        parts.append("no offers to compare")
    elif not mix["moved"]:
        parts.append("offer mix stable")
    else:
        big = mix["largest_share_change"]
        parts.append(f"offer mix moved ({big['offer']} {big['then_pct']:.1f}% -> {big['now_pct']:.1f}% "
                     f"of offers, PSI {mix['psi']:.2f})")
    if m.get("kept_changed_outcome"):
        parts.append(f"{m['kept_changed_outcome']:,} kept members changed offer")
    if m.get("kept_changed_features"):
        parts.append(f"{m['kept_changed_features']:,} of {m['kept']:,} kept members' features changed")
    drifted = sorted((c for c in comparison["columns"] if c["flag"]), key=_severity)
    if drifted:
        parts.append(", ".join(f"{c['column']} drifted ({_why(c)})" for c in drifted))
    else:
        parts.append("no feature or prediction drifted")
    for r in comparison["endpoints"]["latency_regressions"]:
        parts.append(f"{r['endpoint']} {r['part']} {r['percentile']} {r['then_ms']:.1f} -> {r['now_ms']:.1f} ms")
    rate = comparison["endpoints"]["failure_rate"]
    if rate["then"] is not None and rate["now"] is not None and abs(rate["now"] - rate["then"]) >= 0.01:
        parts.append(f"failure rate {_pct(rate['then'])} -> {_pct(rate['now'])}")
    dead = comparison["dead_letters"]
    if dead["total_then"] != dead["total_now"]:
        parts.append(f"rejected rows {dead['total_then']:,} -> {dead['total_now']:,}")
    if comparison["not_compared"]:
        parts.append(f"not compared: {', '.join(n['what'] for n in comparison['not_compared'])}")
    return "; ".join(parts)


def _feature_columns(results: pa.Table, features: Sequence[str] | None) -> list[str]:
    if features is not None:
        return list(features)
    names = results.column_names
    end = names.index("N_TRANSACTIONS") if "N_TRANSACTIONS" in names else len(names)
    return names[names.index("MEMBER_ID") + 1:end]


def compare(baseline_summary: dict, baseline: pa.Table, current_summary: dict, current: pa.Table,
            features: Sequence[str] | None = None, baseline_output: str | None = None,
            current_output: str | None = None) -> tuple[dict, pa.Table]:
    """Everything ``comparison.json`` holds, and the per-member changes table.

    ``features`` are the current run's feature columns (default: those of its results);
    ``baseline_output`` is the baseline folder as the user named it. Columns only one run
    has, and member-level comparisons across partners, are listed under ``not_compared``.
    """
    baseline, current = one_row_per_member(baseline), one_row_per_member(current)
    features = _feature_columns(current, features)
    baseline_features = _feature_columns(baseline, None)
    columns = drift_columns(baseline, current, features)
    shared_features = [c for c in columns if c not in PREDICTIONS]
    partner_then, partner_now = baseline_summary.get("partner"), current_summary.get("partner")
    same_partner = partner_then == partner_now
    not_compared = []
    only_now = [c for c in features if c not in columns]
    only_then = [c for c in baseline_features if c not in features]
    if only_now:
        not_compared.append({"what": ", ".join(only_now), "why": "not in the baseline's results"})
    if only_then:
        not_compared.append({"what": ", ".join(only_then), "why": "only in the baseline's results"})
    if same_partner:
        changes = member_changes(baseline, current, shared_features,
                                 _gap_days(baseline_summary.get("as_of"), current_summary.get("as_of")))
        member_part = members(baseline, current, changes)
    else:
        changes = MEMBER_CHANGES_SCHEMA.empty_table()
        member_part = {"compared": False, "then": baseline.num_rows, "now": current.num_rows}
        not_compared.append({"what": "members by id",
                             "why": f"the baseline is partner {partner_then!r}, this run {partner_now!r}"})
    out = {
        "baseline": {"run_id": baseline_summary.get("run_id"), "partner": partner_then,
                     "as_of": baseline_summary.get("as_of"),
                     "output": baseline_output if baseline_output is not None else baseline_summary.get("output"),
                     "recorded_output": baseline_summary.get("output")},
        "current": {"run_id": current_summary.get("run_id"), "partner": partner_now,
                    "as_of": current_summary.get("as_of"),
                    "output": current_output if current_output is not None else current_summary.get("output")},
        "thresholds": {"psi_moderate": PSI_MODERATE, "psi_major": PSI_MAJOR, "psi_bins": PSI_BINS,
                       "ks_pvalue": KS_PVALUE, "ks_min_statistic": KS_MIN_STATISTIC,
                       "mean_pvalue": MEAN_PVALUE, "mean_min_shift_sd": MEAN_MIN_SHIFT_SD,
                       "latency_rise": LATENCY_RISE, "latency_min_ms": LATENCY_MIN_MS},
        "members": member_part,
        "offers": offers(baseline, current),
        "columns": drift(baseline, current, columns),
        "columns_not_compared": only_now + only_then,
        "not_compared": not_compared,
        "dead_letters": dead_letters(baseline_summary, current_summary),
        "endpoints": endpoints(baseline, current),
    }
    out["headline"] = headline(out)
    return out, changes
