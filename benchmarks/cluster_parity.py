"""Detached runs on a cluster against the local runner: the same exports, cell by cell.

    python benchmarks/cluster_parity.py                 # the bundled export and a generated one of 20,000 rows
    python benchmarks/cluster_parity.py --rows 100000   # a larger generated export

For each export, one run on the local runner (the launcher waits) and one detached run on
Beam's portable job server with an external worker pool on loopback (``tests/cluster.py``):
the launcher submits and exits, then ``python -m beam_pipeline wait`` waits for the run.
Both call the same reference service. Every cell of ``results/`` and ``dead_letter/`` is
compared exactly, rows matched by member (dead letters by file, line and reason), the
wall-clock latency columns aside; so are run.json's accounting, offers and dead-letter
reasons. Timings are in the rows for orientation only: the two runners are not a
performance comparison.

Results: ``benchmarks/results/cluster_parity-*.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from beam_pipeline import generate  # noqa: E402
from benchmarks.results import Recorder  # noqa: E402
from tests.cluster import cluster_env, portable_cluster  # noqa: E402
from tests.conftest import uvicorn_server  # noqa: E402
from transforms.results import TIMING_COLUMNS  # noqa: E402

AS_OF = "2026-11-24"
KEYS = {"results": ["MEMBER_ID"], "dead_letter": ["SOURCE", "RAW_LINE", "REASON"]}
COLUMNS = ["export", "rows_read", "members", "cells_compared", "cells_different", "run_json_equal",
           "detach_exit_s", "detached_s", "local_s"]


def beam_pipeline(*args: str, env: dict) -> tuple[int, str, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "beam_pipeline", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 3):
        sys.exit(f"python -m beam_pipeline {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.returncode, proc.stdout, time.perf_counter() - start


def compare(a: Path, b: Path) -> tuple[int, int]:
    """(cells compared, cells that differ) over results/ and dead_letter/."""
    compared = different = 0
    for part, key in KEYS.items():
        tables = []
        for folder in (a, b):
            data = pq.read_table(folder / part)
            data = data.drop_columns([c for c in TIMING_COLUMNS if c in data.column_names])
            tables.append(data.sort_by([(k, "ascending") for k in key]))
        left, right = tables
        if left.schema != right.schema or left.num_rows != right.num_rows:
            return compared, max(left.num_rows, right.num_rows) * max(left.num_columns, right.num_columns)
        for name in left.column_names:
            x, y = left.column(name).to_pylist(), right.column(name).to_pylist()
            compared += len(x)
            different += sum(1 for p, q in zip(x, y, strict=True) if p != q and not (p != p and q != q))
    return compared, different


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000, help="rows of the generated export")
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args(argv)
    recorder = Recorder("cluster_parity", argv if argv is not None else sys.argv[1:], columns=COLUMNS)
    print("| " + " | ".join(COLUMNS) + " |\n|" + " --- |" * len(COLUMNS), flush=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "out" if (ROOT / "out").is_dir() else None) as tmp:
        work = Path(tmp)
        generated = work / f"generated-{args.rows}.csv"
        with open(generated, "w", encoding="utf-8", newline="") as out:
            generate.write(out, args.rows, seed=args.seed)
        exports = {"bundled member_data.csv": ROOT / "member_data.csv", f"generated {args.rows:,} rows": generated}
        env = cluster_env(work)
        with uvicorn_server() as url, portable_cluster(work / "cluster") as cluster:
            for i, (name, path) in enumerate(exports.items()):
                common = ["--input", str(path), "--as-of", AS_OF, "--endpoint-url", url, "--heartbeat-seconds", "0",
                          "--log-level", "WARNING"]
                detached, local = work / f"{i}-detached", work / f"{i}-local"
                start = time.perf_counter()
                _, _, detach_exit_s = beam_pipeline(*common, "--output", str(detached), "--detach",
                                                    *cluster.beam_args(), env=env)
                code, _, _ = beam_pipeline("wait", str(detached), "--poll-seconds", "0.5", env=env)
                detached_s = time.perf_counter() - start
                _, _, local_s = beam_pipeline(*common, "--output", str(local), env=env)
                compared, different = compare(detached, local)
                runs = [json.loads((folder / "run.json").read_text()) for folder in (detached, local)]
                same_run = all(runs[0][k] == runs[1][k] for k in ("accounting", "offers", "dead_letter_reasons"))
                row = {"export": name, "rows_read": runs[1]["accounting"]["rows_read"],
                       "members": runs[1]["accounting"]["members"], "cells_compared": compared,
                       "cells_different": different, "run_json_equal": same_run, "wait_exit_code": code,
                       "detach_exit_s": round(detach_exit_s, 1), "detached_s": round(detached_s, 1),
                       "local_s": round(local_s, 1)}
                recorder.row(**row)
                print("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |", flush=True)
    recorder.note("detach_exit_s: until the detached launcher exited; detached_s: launch to the end of `wait`; "
                  "local_s: the local run, launcher included. One machine, other work on it: orientation only.")
    print(f"# saved {recorder.save()}")


if __name__ == "__main__":
    main()
