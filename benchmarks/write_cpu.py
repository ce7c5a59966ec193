"""CPU per results row of writing Parquet: Beam's ``WriteToParquet`` against ``WriteParquetRows``.

    python benchmarks/write_cpu.py               # 100,000 rows, best of 3
    python benchmarks/write_cpu.py --rows 20000

Each writer runs in a local pipeline whose rows are made inside it (one
``FlatMap`` of ``result_row`` over features-only members, as a features-only
run writes them); a pipeline that makes the same rows and drops them is the
floor. ``time.process_time`` covers every thread of this process, where the
FnApiRunner runs its bundles, so the figures hold on a loaded machine better
than wall time does.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import apache_beam as beam  # noqa: E402
from apache_beam.io.parquetio import WriteToParquet  # noqa: E402

from beam_pipeline.runners import local_runner  # noqa: E402
from lantern.features import SPEC_FEATURES  # noqa: E402
from transforms.parquet_rows import WriteParquetRows  # noqa: E402
from transforms.results import NOT_CALLED, feature_columns, result_row, results_schema  # noqa: E402

AS_OF = dt.date(2026, 11, 24)
COLUMNS = feature_columns(SPEC_FEATURES)
SCHEMA = results_schema(SPEC_FEATURES)


def rows(n: int):
    for i in range(n):
        features = {name: (i % 3000 if name == "DAYS_SINCE_LAST_TRANSACTION" else i / 7) for name in COLUMNS}
        yield result_row(f"M{i:08d}", {"N_TRANSACTIONS": 5, "FEATURES": features}, NOT_CALLED, COLUMNS, "default", AS_OF)


WRITERS = {
    "make rows, drop them (floor)": lambda prefix: beam.Map(lambda row: None),
    "WriteToParquet": lambda prefix: WriteToParquet(prefix, SCHEMA, file_name_suffix=".parquet"),
    "WriteParquetRows": lambda prefix: WriteParquetRows(prefix, SCHEMA),
}


def cpu_seconds(writer, n: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        c0 = time.process_time()
        with beam.Pipeline(runner=local_runner()) as p:
            p | beam.Create([n]) | beam.FlatMap(rows) | writer(str(Path(folder) / "part"))
        return time.process_time() - c0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per writer")
    args = parser.parse_args(argv)
    print(f"| writer ({args.rows:,} results rows, best of {args.repeat}) | CPU s | CPU us/row over the floor |")
    print("| --- | ---: | ---: |")
    floor = None
    for name, writer in WRITERS.items():
        cpu = min(cpu_seconds(writer, args.rows) for _ in range(args.repeat))
        floor = cpu if floor is None else floor
        print(f"| {name} | {cpu:.2f} | {(cpu - floor) * 1e6 / args.rows:.1f} |", flush=True)


if __name__ == "__main__":
    main()
