"""CPU per line of the parse and of the feature fold, outside Beam, on an export.

    python benchmarks/parse_cpu.py [EXPORT.csv] [--runs 3]

Runs ``ParseLineFn.process`` on every line, then ``features.add`` for every
transaction into per-member accumulators, and prints the median CPU time per
line of each (``time.process_time``, so other jobs on the machine move it less
than wall time). The default export is ``benchmarks/data/export-100000.csv``
(``benchmarks/perf.py`` generates it).
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lantern import features  # noqa: E402
from transforms.parse import FileLayout, ParseLineFn  # noqa: E402

AS_OF = dt.date(2026, 11, 24)


def measure(lines: list[bytes]) -> tuple[float, float]:
    layout = FileLayout(lines[0].rstrip(b"\r"), 5, 0, 1, 2, 3, 4)
    fn = ParseLineFn({"export": layout}, ",", ["iso"], AS_OF)
    fn.start_bundle()
    t0 = time.process_time()
    parsed = [out for line in lines for out in fn.process(("export", line))]
    parse_s = time.process_time() - t0
    fn.finish_bundle()
    pairs = [out for out in parsed if isinstance(out, tuple) and out[1] is not None]
    accs = {member: features.create() for member, _ in pairs}
    t0 = time.process_time()
    for member, txn in pairs:
        features.add(accs[member], txn)
    add_s = time.process_time() - t0
    return parse_s / len(lines) * 1e6, add_s / len(lines) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", nargs="?", default=str(ROOT / "benchmarks" / "data" / "export-100000.csv"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    lines = Path(args.export).read_bytes().splitlines()
    runs = [measure(lines) for _ in range(args.runs)]
    print(f"| step | CPU us per line (median of {args.runs}, {len(lines):,} lines) |")
    print("| --- | ---: |")
    print(f"| ParseLineFn.process | {statistics.median(r[0] for r in runs):.2f} |")
    print(f"| features.add | {statistics.median(r[1] for r in runs):.2f} |")


if __name__ == "__main__":
    main()
