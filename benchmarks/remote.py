"""Per-member calls against a remote-like endpoint: this project against the bare asyncio approach.

    python benchmarks/remote.py                        # 20k rows (about 12k members), 25 ms per call, 3 runs
    python benchmarks/remote.py --rows 5000 --runs 1   # a quick look
    python benchmarks/remote.py --scenarios remote,local,fragile

Scenarios, each with the runs alternating between the contenders on the same
export and the same server (ratios are within one invocation):

- ``remote``: the reference service with ``FAULT_LATENCY_MS`` (25) added to each
  call; the pipeline (``default`` partner, default settings) against
  ``benchmarks/asyncio_baseline.py``: wall time, and the call step's members/s.
- ``local``: no added latency, the server pinned to CPU 0 and the clients to
  CPU 1 (``taskset``), so neither takes the other's core.
- ``fragile``: 25 ms plus 20% HTTP 503: the pipeline alone; every member must end
  OK, and its adaptive limits (the ``concurrency_limit_*`` metrics) are set
  beside those of the last healthy ``remote`` run.

Prints a table and saves every run and the medians under ``benchmarks/results/``
(``benchmarks/results.py``; ``docs/performance.md`` shows the newest). The
machine's load average is printed with each run: other jobs move every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from beam_pipeline import generate  # noqa: E402
from benchmarks.perf import AS_OF, DATA, pinned, reference_server  # noqa: E402
from benchmarks.results import Recorder  # noqa: E402

KINDS = ("ats", "resp", "offer")
COLUMNS = ["scenario", "rows", "members", "pipeline_s", "asyncio_s", "wall_ratio", "pipeline_call_members_per_s",
           "asyncio_call_members_per_s", "call_rate_ratio", "failed", "mean_limit_ats_resp_offer"]


def export(rows: int, rows_per_member: float) -> Path:
    """A generated SPEC-format export in ``benchmarks/data/`` (made once, then reused)."""
    path = DATA / f"export-{rows}-rpm{rows_per_member:g}.csv"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            generate.write(out, rows, seed=rows, rows_per_member=rows_per_member)
        tmp.rename(path)
    return path


@contextmanager
def server(env: dict, cpu: int | None = None):
    """The reference service (one uvicorn worker) with ``FAULT_*`` settings, on a free port."""
    with reference_server(1, env, cpu) as (url, _):
        yield url


def run_pipeline(path: Path, url: str, out: Path, cpu: int | None) -> dict:
    cmd = pinned(cpu, [sys.executable, "-m", "beam_pipeline", "--input", str(path), "--output", str(out),
                       "--as-of", AS_OF, "--endpoint-url", url, "--log-level", "WARNING", "--partner", "default"])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        sys.exit(f"the pipeline exited {proc.returncode}: {proc.stderr[-2000:]}")
    summary = json.loads((out / "run.json").read_text())
    step = next(s for s in summary["steps"] if s["name"] == "call_endpoints")
    limits = {}
    for row in pq.read_table(out / "metrics").to_pylist():
        name = row["NAME"]
        if row["KIND"] == "distribution" and name.startswith("concurrency_limit_") and row["COUNT"]:
            limits[name.removeprefix("concurrency_limit_")] = {
                "mean": round(row["SUM"] / row["COUNT"], 1), "min": row["MIN"], "max": row["MAX"]}
    acc = summary["accounting"]
    return {"wall_s": round(wall, 3), "members": acc["members"], "failed": acc["members_failed"],
            "call_members_per_s": step["per_second"], "call_s": step["seconds"], "limits": limits,
            "load": os.getloadavg()[0]}


def run_baseline(path: Path, url: str, cpu: int | None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = pinned(cpu, [sys.executable, str(ROOT / "benchmarks" / "asyncio_baseline.py"), str(path),
                           "--url", url, "--as-of", AS_OF, "--json", out.name])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 3):
            sys.exit(f"the baseline exited {proc.returncode}: {proc.stderr[-2000:]}")
        result = json.loads(Path(out.name).read_text())
    return {**result, "wall_s": round(wall, 3), "load": os.getloadavg()[0]}


SCENARIOS = {
    # name: (server environment, server CPU, client CPU, contenders)
    "remote": ({"FAULT_LATENCY_MS": "25"}, None, None, ("pipeline", "asyncio")),
    "local": ({}, 0, 1, ("pipeline", "asyncio")),
    "fragile": ({"FAULT_LATENCY_MS": "25", "FAULT_RATE": "0.2", "FAULT_STATUS": "503"}, None, None, ("pipeline",)),
}


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def run_scenarios(rows: int, rows_per_member: float, runs: int, scenarios: list[str], recorder: Recorder) -> None:
    path = export(rows, rows_per_member)
    with tempfile.TemporaryDirectory() as tmp:
        for name in scenarios:
            env, server_cpu, client_cpu, contenders = SCENARIOS[name]
            measured: dict[str, list[dict]] = {c: [] for c in contenders}
            with server(env, server_cpu) as url:
                for i in range(runs):
                    for contender in contenders:
                        if contender == "pipeline":
                            run = run_pipeline(path, url, Path(tmp) / f"{name}-{i}", client_cpu)
                        else:
                            run = run_baseline(path, url, client_cpu)
                        measured[contender].append(run)
                        print(f"  {name} run {i + 1} {contender:8}: {run['wall_s']:7.2f} s, "
                              f"calls {run['call_members_per_s']:8.0f} members/s, failed {run['failed']}, "
                              f"load {run['load']:.1f}" + (f", limits {run['limits']}" if run.get("limits") else ""),
                              flush=True)
            pipe, base = measured["pipeline"], measured.get("asyncio")
            limits = {k: statistics.median(r["limits"].get(k, {}).get("mean", 0) for r in pipe) for k in KINDS}
            row = {"scenario": name, "rows": rows, "members": pipe[0]["members"],
                   "pipeline_s": median(pipe, "wall_s"), "pipeline_call_members_per_s": median(pipe, "call_members_per_s"),
                   "failed": max(r["failed"] for r in pipe),
                   "mean_limit_ats_resp_offer": "/".join(f"{limits[k]:.0f}" for k in KINDS),
                   "pipeline_runs": pipe}
            if base:
                row.update(asyncio_s=median(base, "wall_s"), asyncio_call_members_per_s=median(base, "call_members_per_s"),
                           asyncio_runs=base)
                row["wall_ratio"] = round(row["pipeline_s"] / row["asyncio_s"], 3)
                row["call_rate_ratio"] = round(row["pipeline_call_members_per_s"] / row["asyncio_call_members_per_s"], 3)
            recorder.row(**row)


def print_table(recorder: Recorder) -> None:
    print(f"\n# {recorder.data['started_at']}, nproc {os.cpu_count()}, medians of each scenario's runs")
    print("| " + " | ".join(COLUMNS) + " |")
    print("| " + " | ".join("---" for _ in COLUMNS) + " |")
    for row in recorder.data["rows"]:
        print("| " + " | ".join(str(row.get(c, "-")) for c in COLUMNS) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rows-per-member", type=float, default=1.6,
                        help="1.6: 20k rows hold about 12k members, the shape of a real export")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", default="remote,local,fragile")
    args = parser.parse_args(argv)
    recorder = Recorder("remote", argv if argv is not None else sys.argv[1:], COLUMNS)
    run_scenarios(args.rows, args.rows_per_member, args.runs, args.scenarios.split(","), recorder)
    print_table(recorder)
    print(f"# saved {recorder.save().relative_to(ROOT)}")


if __name__ == "__main__":
    main()
