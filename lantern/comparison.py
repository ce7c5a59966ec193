"""How one run moved against another: members, offers, feature and prediction drift, rows, endpoints.

Pure functions over the two runs' ``run.json`` and results tables, no Beam and
no drawing, so every number in ``comparison.json`` (and the report's "Since the
baseline" section) is tested on its own.

Drift is measured per column over the members with transactions (the others
have no features): the population stability index (PSI) over ten bins cut at
the baseline's deciles, and scipy's two-sample Kolmogorov-Smirnov statistic.
PSI flags follow the usual credit-risk convention: above 0.1 a moderate shift,
above 0.25 a major one. Bins from the baseline's quantiles put a tenth of the
baseline in each bin, so a shift anywhere in the distribution moves the index;
a run identical to its baseline gets exactly 0.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

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
    if value is None or value <= PSI_MODERATE:
        return None
    return MAJOR if value > PSI_MAJOR else MODERATE


def column_drift(name: str, baseline: np.ndarray, current: np.ndarray) -> dict:
    """One column's drift: PSI and its flag, the KS statistic and p-value, and the means."""
    value = psi(baseline, current)
    ks = stats.ks_2samp(baseline, current) if len(baseline) and len(current) else None
    return {
        "column": name,
        "n_then": len(baseline),
        "n_now": len(current),
        "mean_then": float(np.mean(baseline)) if len(baseline) else None,
        "mean_now": float(np.mean(current)) if len(current) else None,
        "psi": _round(value),
        "ks": _round(float(ks.statistic)) if ks is not None else None,
        "ks_pvalue": float(ks.pvalue) if ks is not None else None,
        "flag": flag(value),
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


def members(baseline: pa.Table, current: pa.Table) -> dict:
    """Members new, gone and kept, and for the kept ones the offer transitions then -> now."""
    then = dict(zip(baseline.column("MEMBER_ID").to_pylist(),
                    map(_outcome, baseline.column("OFFER").to_pylist(), baseline.column("STATUS").to_pylist()),
                    strict=True))
    now = dict(zip(current.column("MEMBER_ID").to_pylist(),
                   map(_outcome, current.column("OFFER").to_pylist(), current.column("STATUS").to_pylist()),
                   strict=True))
    kept = then.keys() & now.keys()
    transitions = Counter((then[m], now[m]) for m in kept)
    return {
        "then": len(then),
        "now": len(now),
        "new": len(now.keys() - then.keys()),
        "gone": len(then.keys() - now.keys()),
        "kept": len(kept),
        "kept_changed_outcome": sum(n for (a, b), n in transitions.items() if a != b),
        "transitions": [{"then": a, "now": b, "members": n}
                        for (a, b), n in sorted(transitions.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1])))],
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


def latency(results: pa.Table, kind: str) -> dict:
    """p50/p95 of one endpoint's latency column (ms, retries included) and how many calls it covers."""
    values = finite(results.column(f"{kind.upper()}_LATENCY_MS").to_pylist())
    if len(values) == 0:
        return {"p50": None, "p95": None, "calls": 0}
    p50, p95 = np.quantile(values, [0.5, 0.95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "calls": len(values)}


def failure_rate(results: pa.Table) -> float | None:
    """FAILED members over the members whose endpoints were called (OK + FAILED)."""
    statuses = Counter(results.column("STATUS").to_pylist())
    called = statuses["OK"] + statuses["FAILED"]
    return statuses["FAILED"] / called if called else None


def endpoints(baseline: pa.Table, current: pa.Table) -> dict:
    return {
        "latency_ms": {kind: {"then": latency(baseline, kind), "now": latency(current, kind)} for kind in ENDPOINTS},
        "failure_rate": {"then": failure_rate(baseline), "now": failure_rate(current)},
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def headline(comparison: dict) -> str:
    """One sentence: members, the offer mix, what drifted (worst first), and failures if they moved."""
    m = comparison["members"]
    parts = [f"{m['now']:,} members ({m['new']:,} new, {m['gone']:,} gone)"]
    mix = comparison["offers"]
    if mix["psi"] is None:
        parts.append("no offers to compare")
    elif not mix["moved"]:
        parts.append("offer mix stable")
    else:
        big = mix["largest_share_change"]
        parts.append(f"offer mix moved ({big['offer']} {big['then_pct']:.1f}% -> {big['now_pct']:.1f}% "
                     f"of offers, PSI {mix['psi']:.2f})")
    if m["kept_changed_outcome"]:
        parts.append(f"{m['kept_changed_outcome']:,} kept members changed offer")
    drifted = sorted((c for c in comparison["columns"] if c["flag"]), key=lambda c: -c["psi"])
    if drifted:
        parts.append(", ".join(f"{c['column']} drifted (PSI {c['psi']:.2f})" for c in drifted))
    else:
        parts.append("no feature or prediction drifted")
    rate = comparison["endpoints"]["failure_rate"]
    if rate["then"] is not None and rate["now"] is not None and abs(rate["now"] - rate["then"]) >= 0.01:
        parts.append(f"failure rate {_pct(rate['then'])} -> {_pct(rate['now'])}")
    dead = comparison["dead_letters"]
    if dead["total_then"] != dead["total_now"]:
        parts.append(f"rejected rows {dead['total_then']:,} -> {dead['total_now']:,}")
    return "; ".join(parts)


def compare(baseline_summary: dict, baseline: pa.Table, current_summary: dict, current: pa.Table,
            features: Sequence[str]) -> dict:
    """Everything ``comparison.json`` holds; ``features`` are the current run's feature columns."""
    columns = drift_columns(baseline, current, features)
    out = {
        "baseline": {"run_id": baseline_summary.get("run_id"), "as_of": baseline_summary.get("as_of"),
                     "output": baseline_summary.get("output")},
        "current": {"run_id": current_summary.get("run_id"), "as_of": current_summary.get("as_of"),
                    "output": current_summary.get("output")},
        "thresholds": {"psi_moderate": PSI_MODERATE, "psi_major": PSI_MAJOR, "psi_bins": PSI_BINS},
        "members": members(baseline, current),
        "offers": offers(baseline, current),
        "columns": drift(baseline, current, columns),
        "columns_not_compared": [c for c in features if c not in columns],
        "dead_letters": dead_letters(baseline_summary, current_summary),
        "endpoints": endpoints(baseline, current),
    }
    out["headline"] = headline(out)
    return out
