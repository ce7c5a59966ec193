"""An independent reference for end-to-end tests: the contract's features and formulas in plain
arithmetic over a member's list of transactions (no accumulators, no exact sums)."""
from __future__ import annotations

import datetime as dt

import pytest


def expected_member(txns: list[tuple], as_of: dt.date) -> dict | None:
    """(time, type, points, revenue) tuples -> features, predictions, offer; None without transactions."""
    if not txns:
        return None
    n = len(txns)
    recent = sorted(txns, key=lambda t: (t[0], t[2], t[3]), reverse=True)[:3]
    f = {
        "AVG_POINTS_BOUGHT": sum(t[2] for t in txns) / n,
        "AVG_REVENUE_USD": sum(t[3] for t in txns) / n,
        "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": sum(t[2] for t in recent) / len(recent),
        "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": sum(t[3] for t in recent) / len(recent),
        "PCT_BUY_TRANSACTIONS": sum(t[1] == "buy" for t in txns) / n,
        "PCT_GIFT_TRANSACTIONS": sum(t[1] == "gift" for t in txns) / n,
        "PCT_REDEEM_TRANSACTIONS": sum(t[1] == "redeem" for t in txns) / n,
        "DAYS_SINCE_LAST_TRANSACTION": (as_of - max(t[0] for t in txns).date()).days,
    }
    volume = 0.7 * f["LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT"] + 0.3 * f["AVG_POINTS_BOUGHT"]
    weight = max(0.0, f["PCT_BUY_TRANSACTIONS"] + f["PCT_GIFT_TRANSACTIONS"] - f["PCT_REDEEM_TRANSACTIONS"])
    ats = abs(volume * weight)
    p = 0.4 * f["PCT_BUY_TRANSACTIONS"] + 0.3 * f["PCT_GIFT_TRANSACTIONS"] + 0.3 * f["PCT_REDEEM_TRANSACTIONS"]
    r = (0.3 * f["AVG_REVENUE_USD"] + 0.7 * f["LAST_3_TRANSACTIONS_AVG_REVENUE_USD"]) / 100
    resp = min(0.9, 1000 * p * r / (f["DAYS_SINCE_LAST_TRANSACTION"] + 1))
    f.update(ATS_PREDICTION=ats, RESP_PREDICTION=resp, OFFER="OFFER_2" if ats * resp >= 200 else "OFFER_1",
             N_TRANSACTIONS=n)
    return f


def assert_row_matches(row: dict, expected: dict, member: str, abs_tol: float) -> None:
    """An OK results row against ``expected_member``'s values: floats to 1e-9 relative, the rest exactly."""
    assert row["STATUS"] == "OK", row["ERROR"]
    for name, value in expected.items():
        if isinstance(value, float):
            assert row[name] == pytest.approx(value, rel=1e-9, abs=abs_tol), (member, name)
        else:
            assert row[name] == value, (member, name)
