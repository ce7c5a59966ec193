"""Seeded generator of member exports with the quirks of real ones.

``member_data.csv`` is made by this module (see docs/reference-service.md), and the benchmarks
use it for large files: repeated members, members with only an id, rows without
an id, and a few malformed rows, in a ratio close to the partner's real export.

    python -m beam_pipeline.generate --rows 5000 --seed 7 --out member_data.csv
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import random
import sys
from collections.abc import Iterator
from typing import TextIO

HEADER = [
    "MEMBER_ID", "LAST_TRANSACTION_TS", "LAST_TRANSACTION_TYPE",
    "LAST_TRANSACTION_POINTS_BOUGHT", "LAST_TRANSACTION_REVENUE_USD",
]
_START = dt.datetime(2019, 1, 1)
_SPAN_S = int((dt.datetime(2024, 1, 5) - _START).total_seconds())
_MALFORMED = (
    "{id},not-a-date,buy,100,1.0",
    "{id},2021-05-01 10:00:00,transfer,100,1.0",
    "{id},2021-05-01 10:00:00,buy,lots,1.0",
    "{id},2021-05-01 10:00:00,buy,,1.0",
    "{id},2021-05-01 10:00:00,buy,100",
    "{id},2021-05-01 10:00:00,gift,nan,1.0",
)


def _transaction(rng: random.Random) -> tuple[str, str, str, str]:
    ts = (_START + dt.timedelta(seconds=rng.randrange(_SPAN_S))).strftime("%Y-%m-%d %H:%M:%S")
    kind = rng.choice(("buy", "gift", "redeem"))
    points = rng.randrange(1, 100) * 100
    if kind == "redeem":
        return ts, kind, str(-points), "0.0"
    return ts, kind, str(points), repr(points / rng.randrange(100, 2000) * rng.choice((1, 1, 2, 7)))


def _member_ids(rng: random.Random, n: int) -> list[str]:
    ids: dict[str, None] = {}
    while len(ids) < n:
        ids[f"{rng.getrandbits(32):08X}"] = None
    return list(ids)


def rows(n_rows: int, seed: int, rows_per_member: float = 5.0) -> Iterator[str]:
    """CSV data lines (no header): a tenth of the members appear once with only their id;
    about 0.25% of rows have no id and 0.15% are malformed."""
    rng = random.Random(seed)
    n_members = max(2, round(n_rows / rows_per_member))
    ids = _member_ids(rng, n_members)
    n_idle = n_members // 10
    idle, active = ids[:n_idle], ids[n_idle:]
    idle_at = set(rng.sample(range(n_rows), min(n_idle, n_rows)))
    for position in range(n_rows):
        if position in idle_at:
            yield f"{idle.pop()},,,,"
            continue
        member = rng.choice(active)
        roll = rng.random()
        if roll < 0.0025:
            yield "," + ",".join(_transaction(rng))
        elif roll < 0.004:
            yield rng.choice(_MALFORMED).format(id=member)
        else:
            yield member + "," + ",".join(_transaction(rng))


def write(out: TextIO, n_rows: int, seed: int, rows_per_member: float = 5.0, partner=None) -> None:
    """Write an export; with a partner config, in that partner's columns, delimiter, time format and type
    spellings."""
    header, delimiter, ts_format, kinds = HEADER, ",", None, {}
    if partner is not None:
        cols = partner.input.columns
        header = [cols.member_id, cols.timestamp, cols.type, cols.points, cols.revenue]
        delimiter = partner.input.delimiter
        ts_format = next((f for f in partner.input.timestamp_formats if f != "iso"), None)
        values = partner.input.type_values
        kinds = {kind: getattr(values, kind)[0] for kind in ("buy", "gift", "redeem")}
    if partner is None or partner.input.header:
        out.write(delimiter.join(header) + "\n")
    for line in rows(n_rows, seed, rows_per_member):
        fields = line.split(",")
        if ts_format and len(fields) > 1:
            with contextlib.suppress(ValueError):  # malformed on purpose: keep it malformed
                fields[1] = dt.datetime.strptime(fields[1], "%Y-%m-%d %H:%M:%S").strftime(ts_format)
        if len(fields) > 2:
            fields[2] = kinds.get(fields[2], fields[2])  # the partner's first spelling of each type
        out.write(delimiter.join(fields) + "\n")


def main(argv: list[str] | None = None) -> int:
    from lantern.errors import ConfigError
    from lantern.partner import load, load_named

    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rows-per-member", type=float, default=5.0)
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--partner", help="write in this partner's layout (partner_options/NAME.yaml)")
    who.add_argument("--partner-config", help="write in the layout of this partner file (a path)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        partner = None
        if args.partner_config:
            partner = load(args.partner_config)
        elif args.partner:
            partner = load_named(args.partner)
        with open(args.out, "w", encoding="utf-8", newline="") as out:
            write(out, args.rows, args.seed, args.rows_per_member, partner)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
