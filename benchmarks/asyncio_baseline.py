"""The bare asyncio approach to the same job, as a yardstick: one aiohttp session, every call in flight.

    python benchmarks/asyncio_baseline.py EXPORT.csv --url http://127.0.0.1:8000 [--json OUT.json]

Reads a SPEC-format export, computes the 8 features per member in one plain
pass (the rows the pipeline would dead-letter are skipped), then makes the
three calls of every member at once: ATS and RESP together, the offer as soon
as both answered, all members started together and held back only by aiohttp's
connection pool (100 connections, its default). No retries, no metrics, no
output files: what is left is the least a client can spend on these calls, the
approach of the take-home solutions this project is compared with. Prints (and
with ``--json`` saves) the seconds of each phase and the call phase's members/s.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import sys
import time
from pathlib import Path

import aiohttp

KINDS = {"buy": 0, "gift": 1, "redeem": 2}


def features(path: Path, as_of: dt.date) -> dict[str, dict]:
    """member id -> the 8 SPEC features; a simple pass, tie-breaking as the pipeline does not matter here."""
    members: dict[str, list] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        next(rows)
        for row in rows:
            if len(row) != 5 or not row[0].strip() or not all(row[1:]):
                continue
            try:
                ts = dt.datetime.strptime(row[1], "%Y-%m-%d %H:%M:%S")
                kind = KINDS[row[2].lower()]
                points, revenue = float(row[3]), float(row[4])
            except (ValueError, KeyError):
                continue
            if points != points or revenue != revenue or ts.date() > as_of:
                continue
            members.setdefault(row[0].strip(), []).append((ts, kind, points, revenue))
    out = {}
    for member, txns in members.items():
        txns.sort(reverse=True)
        n, last3 = len(txns), txns[:3]
        counts = [sum(1 for t in txns if t[1] == k) for k in range(3)]
        out[member] = {
            "AVG_POINTS_BOUGHT": sum(t[2] for t in txns) / n,
            "AVG_REVENUE_USD": sum(t[3] for t in txns) / n,
            "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": sum(t[2] for t in last3) / len(last3),
            "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": sum(t[3] for t in last3) / len(last3),
            "PCT_BUY_TRANSACTIONS": counts[0] / n,
            "PCT_GIFT_TRANSACTIONS": counts[1] / n,
            "PCT_REDEEM_TRANSACTIONS": counts[2] / n,
            "DAYS_SINCE_LAST_TRANSACTION": (as_of - txns[0][0].date()).days,
        }
    return out


async def call_all(url: str, members: dict[str, dict], connections: int) -> dict[str, str | None]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def post(path: str, body: dict) -> dict:
            async with session.post(url + path, json=body) as response:
                return await response.json()

        async def member(body: dict) -> str | None:
            try:
                ats, resp = await asyncio.gather(post("/ml/ats/predict", body), post("/ml/resp/predict", body))
                offer = await post("/offer/assign", {"ats_prediction": ats["prediction"],
                                                     "resp_prediction": resp["prediction"]})
                return offer["offer"]
            except (aiohttp.ClientError, KeyError, TimeoutError):
                return None

        offers = await asyncio.gather(*(member(body) for body in members.values()))
    return dict(zip(members, offers, strict=True))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--as-of", default="2026-11-24")
    parser.add_argument("--connections", type=int, default=100, help="aiohttp's connection pool (its default: 100)")
    parser.add_argument("--json", type=Path, help="also save the figures here")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    members = features(args.export, dt.date.fromisoformat(args.as_of))
    t1 = time.perf_counter()
    offers = asyncio.run(call_all(args.url.rstrip("/"), members, args.connections))
    t2 = time.perf_counter()
    result = {"members": len(members), "failed": sum(1 for o in offers.values() if o is None),
              "features_s": round(t1 - t0, 3), "calls_s": round(t2 - t1, 3), "wall_s": round(t2 - t0, 3),
              "call_members_per_s": round(len(members) / (t2 - t1), 1)}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["failed"] == 0 else 3)
