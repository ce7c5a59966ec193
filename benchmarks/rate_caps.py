"""Rate caps against a real server: calls per second as the server saw them arrive.

    python benchmarks/rate_caps.py              # every case, 3 runs each
    python benchmarks/rate_caps.py --runs 1

Each case runs the default partner's per-member calls on a generated export against the
reference service (``tests/arrivals_service.py`` notes each request's arrival), with a
cap of ``--cap`` calls/s: ``calls.rate_limit_per_s`` per SDK process, or
``calls.job_rate_limit_per_s`` for the job, in one thread, four threads of one process,
and two processes. Rate = (calls - 1) / (last arrival - first arrival); medians of the runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from beam_pipeline import generate  # noqa: E402
from benchmarks.results import Recorder  # noqa: E402
from tests.conftest import uvicorn_server, write_partner  # noqa: E402

THREADS = ["--direct_running_mode", "multi_threading", "--direct_num_workers", "4"]
PROCESSES = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
CASES = {  # name -> (cap option, Beam options)
    "process cap: 1 thread": ("rate_limit_per_s", []),
    "process cap: 4 threads": ("rate_limit_per_s", THREADS),
    "process cap: 2 processes": ("rate_limit_per_s", PROCESSES),
    "job cap: 4 threads": ("job_rate_limit_per_s", THREADS),
    "job cap: 2 processes": ("job_rate_limit_per_s", PROCESSES),
}
COLUMNS = ["case", "cap", "calls", "calls_per_s", "vs_cap", "wall_s"]


def one_run(export: Path, folder: Path, option: str, cap: float, beam_args: list[str]) -> dict:
    with uvicorn_server("tests.arrivals_service:app") as url:
        partner = write_partner(folder, url, concurrency=16, **{option: cap})
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "beam_pipeline", "--input", str(export), "--output", str(folder / "out"),
                        "--partner-config", str(partner), "--as-of", "2026-11-24", "--log-level", "WARNING",
                        "--heartbeat-seconds", "0", *beam_args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        with urllib.request.urlopen(url + "/_arrivals") as answer:
            arrivals = sorted(json.load(answer))
    return {"calls": len(arrivals), "calls_per_s": (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), "wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1500, help="rows of the generated export")
    parser.add_argument("--cap", type=float, default=100.0, help="calls per second")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    args = parser.parse_args(argv)
    recorder = Recorder("rate_caps", argv if argv is not None else sys.argv[1:], columns=COLUMNS)
    print("| " + " | ".join(COLUMNS) + " |\n|" + " --- |" * len(COLUMNS), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export.csv"
        with open(export, "w", encoding="utf-8", newline="") as out:
            generate.write(out, args.rows, seed=8)
        for name in args.cases.split(","):
            option, beam_args = CASES[name]
            runs = []
            for i in range(args.runs):
                folder = Path(tmp) / f"{len(recorder.data.get('rows', []))}-{i}-{option}"
                folder.mkdir()
                runs.append(one_run(export, folder, option, args.cap, beam_args))
            mid = sorted(runs, key=lambda r: r["calls_per_s"])[len(runs) // 2]
            row = {"case": name, "cap": args.cap, "calls": mid["calls"],
                   "calls_per_s": round(statistics.median(r["calls_per_s"] for r in runs), 1),
                   "vs_cap": round(statistics.median(r["calls_per_s"] for r in runs) / args.cap, 2),
                   "wall_s": round(mid["wall_s"], 1), "runs": runs}
            recorder.row(**row)
            print("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |", flush=True)
    print(f"# saved {recorder.save()}")


if __name__ == "__main__":
    main()
