"""Lantern against the limits of this machine: one command, one table (README "Performance").

    python benchmarks/perf.py                         # 10k, 100k, 1M rows, 3 runs each
    python benchmarks/perf.py --sizes 10000 --runs 1  # a quick look

Needs the project installed (``scripts/venv.sh`` or /work/venv), polars and
pandas for the in-memory references (``pip install -e ".[test,bench]"``; benchmark
only, never a dependency of the pipeline) and ``wrk`` for the endpoint capacity
(``apt-get install -y wrk``). Exports are generated under ``benchmarks/data/``
(ignored by git) and reused; run outputs go to a temporary folder.

Scenarios, medians of ``--runs`` runs each:

1. ``features``: a ``--features-only`` run, against the same 8 features computed
   by a polars and by a pandas group-by on the same file in the same run.
2. ``per_member``: the ``default`` partner (three calls per member), against the
   endpoint capacity measured by wrk on the ATS, RESP and offer routes in the same
   run: limit (members/s) = 1 / (1/ats + 1/resp + 1/offer).
3. ``batch``: the ``reference_batch`` partner, against scenario 1 (time ratio) and
   scenario 2 (members/s) at the same size.
4. ``beam_floor`` (opt in with ``--scenarios``): ``benchmarks/beam_floor.py``, the
   same shape (read, key, CombinePerKey) with trivial steps on the same runner:
   the framework's own cost, below which no features-only run can go.
5. ``features_2p`` (opt in with ``--scenarios``): scenario 1 with two SDK worker
   processes (``--direct_num_workers 2 --direct_running_mode multi_processing``),
   against pandas and against scenario 1 when both ran.
6. ``members_fixed`` and ``members_10m`` (opt in with ``--scenarios``; once per
   invocation; members_fixed ``--memory-runs`` times, members_10m once): ``--features-only`` on 5M rows holding the
   ~200k members of the 1M-row export (peak RSS against scenario 1 at 1M rows), and
   on 10M rows with 2M members (wall time and peak RSS).
7. ``remote`` (opt in with ``--scenarios``): ``benchmarks/remote.py``, per-member
   calls against the reference service with 25 ms added per call, the pipeline
   against a bare asyncio + aiohttp client on the same export and server
   (``--remote-rows``, default 20,000); it saves its own results file.

Each run also prints the CPU seconds the pipeline (its process tree) and the
server used meanwhile, and the load average at its end: the pipeline and the
server share the machine's cores, and other jobs on them move every figure.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from beam_pipeline import generate  # noqa: E402
from benchmarks.results import DOC, Recorder, render  # noqa: E402
from tests.conftest import free_port  # noqa: E402

AS_OF = "2026-11-24"
DATA = ROOT / "benchmarks" / "data"
SAMPLE_FEATURES = {
    "AVG_POINTS_BOUGHT": 1520.0, "AVG_REVENUE_USD": 12.5, "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 2100.0,
    "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 18.25, "PCT_BUY_TRANSACTIONS": 0.5, "PCT_GIFT_TRANSACTIONS": 0.25,
    "PCT_REDEEM_TRANSACTIONS": 0.25, "DAYS_SINCE_LAST_TRANSACTION": 1090,
}
ROUTES = {
    "ats": ("/ml/ats/predict", SAMPLE_FEATURES),
    "resp": ("/ml/resp/predict", SAMPLE_FEATURES),
    "offer": ("/offer/assign", {"ats_prediction": 1400.0, "resp_prediction": 0.1}),
}


# --- measuring a process tree ------------------------------------------------------------

def _tree(root: int) -> list[int]:
    """A process and all its descendants (Beam may start worker processes, uvicorn its workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def _sum_over_tree(root: int, name: str, read) -> int:
    """``read(text of /proc/PID/name)`` summed over a process tree; processes that end meanwhile count 0."""
    total = 0
    for pid in _tree(root):
        try:
            with open(f"/proc/{pid}/{name}") as handle:
                total += read(handle.read())
        except (OSError, IndexError, ValueError, StopIteration):
            pass
    return total


def _rss_kb(pids: list[int]) -> int:
    """Resident memory of these processes now; processes that ended meanwhile count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as handle:
                total += next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            pass
    return total


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by a running process tree."""
    def ticks(text: str) -> int:
        fields = text.rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime
    return _sum_over_tree(root, "stat", ticks) / os.sysconf("SC_CLK_TCK")


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, int, int, float]:
    """(wall seconds, peak RSS in MB of the process tree, exit code, CPU seconds of the tree)."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    pids, listed = [proc.pid], 0.0
    while proc.poll() is None:
        # Listing the process tree reads every /proc entry: done once a second, not at every sample,
        # so the measuring takes little of the 2 cores it shares with the pipeline.
        if time.perf_counter() - listed > 1.0:
            pids, listed = _tree(proc.pid), time.perf_counter()
        peak = max(peak, _rss_kb(pids))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    reader.join()
    if proc.returncode not in (0, 3):
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{''.join(stderr)[-3000:]}")
    return wall, peak // 1024, proc.returncode, cpu


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    """``cmd`` run on one core (``taskset``), where a core is given and taskset exists."""
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None and shutil.which("taskset") else cmd


@contextmanager
def reference_server(workers: int, env: dict | None = None, cpu: int | None = None):
    """``benchmarks/serve.py`` (uvicorn, ``workers`` processes, TCP_NODELAY) on a free port, with
    ``env`` (e.g. ``FAULT_*`` settings) and pinned to ``cpu`` if given: yields (base URL, the server's pid)."""
    url = f"http://127.0.0.1:{free_port()}"
    cmd = pinned(cpu, [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--port", url.rsplit(":", 1)[1],
                       "--workers", str(workers)])
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    sys.exit("the reference server did not start")
                time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- the limits -----------------------------------------------------------------------------

def pandas_features(path: Path) -> tuple[float, int]:
    """The 8 SPEC features by a plain in-memory group-by; returns (seconds, members)."""
    import numpy as np
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.columns = ["id", "ts", "type", "points", "revenue"]
    df["id"] = df["id"].str.strip()
    ts = pd.to_datetime(df["ts"], format="%Y-%m-%d %H:%M:%S", errors="coerce")
    kind = df["type"].str.lower().map({"buy": 0, "gift": 1, "redeem": 2})
    points = pd.to_numeric(df["points"], errors="coerce")
    revenue = pd.to_numeric(df["revenue"], errors="coerce")
    ok = (df["id"] != "") & ts.notna() & kind.notna() & np.isfinite(points) & np.isfinite(revenue)
    members = df.loc[df["id"] != "", "id"].nunique()
    t = pd.DataFrame({"id": df["id"], "ts": ts, "kind": kind, "points": points, "revenue": revenue})[ok]
    t = t.sort_values(["id", "ts", "points", "revenue", "kind"], ascending=[True] + [False] * 4)
    g = t.groupby("id", sort=False)
    last3 = t.groupby("id", sort=False).head(3).groupby("id", sort=False)
    n = g.size()
    features = pd.DataFrame({
        "AVG_POINTS_BOUGHT": g["points"].mean(),
        "AVG_REVENUE_USD": g["revenue"].mean(),
        "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": last3["points"].mean(),
        "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": last3["revenue"].mean(),
        "PCT_BUY_TRANSACTIONS": t["kind"].eq(0).groupby(t["id"]).sum() / n,
        "PCT_GIFT_TRANSACTIONS": t["kind"].eq(1).groupby(t["id"]).sum() / n,
        "PCT_REDEEM_TRANSACTIONS": t["kind"].eq(2).groupby(t["id"]).sum() / n,
        "DAYS_SINCE_LAST_TRANSACTION": (pd.Timestamp(AS_OF) - g["ts"].max().dt.normalize()).dt.days,
    })
    assert len(features) <= members
    return time.perf_counter() - t0, members


def polars_features(path: Path) -> tuple[float, int]:
    """The same 8 features as ``pandas_features`` with polars (multi-threaded, columnar): the
    in-memory reference the issue's target names. Returns (seconds, members)."""
    import polars as pl

    t0 = time.perf_counter()
    df = pl.read_csv(path, infer_schema=False, new_columns=["id", "ts", "type", "points", "revenue"],
                     truncate_ragged_lines=True)
    df = df.with_columns(
        pl.col("id").fill_null("").str.strip_chars(),
        pl.col("ts").str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S", strict=False),
        pl.col("type").str.to_lowercase().replace_strict({"buy": 0, "gift": 1, "redeem": 2}, default=None,
                                                         return_dtype=pl.Int8),
        pl.col("points").cast(pl.Float64, strict=False),
        pl.col("revenue").cast(pl.Float64, strict=False),
    )
    members = df.filter(pl.col("id") != "")["id"].n_unique()
    ok = df.filter((pl.col("id") != "") & pl.col("ts").is_not_null() & pl.col("type").is_not_null()
                   & pl.col("points").is_finite() & pl.col("revenue").is_finite())
    ok = ok.sort(["id", "ts", "points", "revenue", "type"], descending=[False, True, True, True, True])
    as_of = dt.date.fromisoformat(AS_OF)
    features = ok.group_by("id", maintain_order=True).agg(
        pl.col("points").mean().alias("AVG_POINTS_BOUGHT"),
        pl.col("revenue").mean().alias("AVG_REVENUE_USD"),
        pl.col("points").head(3).mean().alias("LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT"),
        pl.col("revenue").head(3).mean().alias("LAST_3_TRANSACTIONS_AVG_REVENUE_USD"),
        (pl.col("type") == 0).mean().alias("PCT_BUY_TRANSACTIONS"),
        (pl.col("type") == 1).mean().alias("PCT_GIFT_TRANSACTIONS"),
        (pl.col("type") == 2).mean().alias("PCT_REDEEM_TRANSACTIONS"),
        (pl.lit(as_of) - pl.col("ts").first().dt.date()).dt.total_days().alias("DAYS_SINCE_LAST_TRANSACTION"),
    )
    assert len(features) <= members
    return time.perf_counter() - t0, members


def wrk_rate(url: str, route: str, body: dict, seconds: int, connections: int) -> float:
    """Requests/s the server sustains on one route (wrk, keep-alive, ``connections`` in flight)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = '{json.dumps(body)}'\n")
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script.name, url + route],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    if "Non-2xx" in out:
        sys.exit(f"wrk saw errors on {route}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def endpoint_limit(url: str, seconds: int, connections: int) -> dict:
    rates = {kind: wrk_rate(url, route, body, seconds, connections) for kind, (route, body) in ROUTES.items()}
    return {**rates, "members_per_s": 1 / sum(1 / r for r in rates.values())}


# The local runner with one SDK worker process per core (2 here): the read's splits and the
# members are shared between them, and the runner process holds the shuffle.
TWO_PROCESSES = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]


# --- the scenarios --------------------------------------------------------------------------

def export(rows: int, members: int | None = None) -> Path:
    """The export of ``rows`` rows (made once, kept under benchmarks/data/): about ``rows / 5`` members
    unless ``members`` is given, spread through the whole file either way."""
    path = DATA / (f"export-{rows}.csv" if members is None else f"export-{rows}-{members}m.csv")
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            generate.write(out, rows, seed=rows, rows_per_member=5.0 if members is None else rows / members)
        tmp.rename(path)
    return path


def generate_members(path: Path):
    """The distinct member ids of an export (first field of each data line)."""
    with open(path, "rb") as handle:
        next(handle)
        yield from {line.split(b",", 1)[0] for line in handle}


def pipeline_run(path: Path, out: Path, server: tuple[str, int], scenario: str, beam_args: list[str]) -> dict:
    """One timed run; also the CPU seconds the pipeline and the server used meanwhile, and
    the machine's load average at the end (other jobs on the cores move every figure)."""
    url, server_pid = server
    if scenario == "beam_floor":
        cmd = [sys.executable, str(ROOT / "benchmarks" / "beam_floor.py"), str(path), *beam_args]
        wall, rss, code, cpu = run_measured(cmd)
        if code != 0:
            sys.exit(f"{scenario}: exited {code}")
        members = sum(1 for _ in generate_members(path))
        return {"wall": wall, "rss_mb": rss, "members": members, "called": 0, "cpu": cpu, "server_cpu": 0.0,
                "load": os.getloadavg()[0]}
    mode = {"features": ["--features-only"], "features_2p": ["--features-only", *TWO_PROCESSES],
            "per_member": ["--partner", "default"], "batch": ["--partner", "reference_batch"]}[scenario]
    cmd = [sys.executable, "-m", "beam_pipeline", "--input", str(path), "--output", str(out),
           "--as-of", AS_OF, "--endpoint-url", url, "--log-level", "WARNING", *mode, *beam_args]
    server_cpu = tree_cpu_s(server_pid)
    wall, rss, code, cpu = run_measured(cmd)
    server_cpu = tree_cpu_s(server_pid) - server_cpu
    if code not in (0, 3):  # 3: some members FAILED, reported just below
        sys.exit(f"{scenario}: the pipeline exited {code}")
    summary = json.loads((out / "run.json").read_text())
    acc = summary["accounting"]
    if acc["members_failed"]:
        sys.exit(f"{scenario}: {acc['members_failed']} members FAILED; the numbers would mean nothing")
    called = acc["members_ok"] + acc["members_features_only"]
    return {"wall": wall, "rss_mb": rss, "members": acc["members"], "called": called,
            "cpu": cpu, "server_cpu": server_cpu, "load": os.getloadavg()[0]}


# Memory scenarios (opt in with --scenarios, run once per invocation, not per size): features-only on
# an export of (rows, members). members_fixed: the 1M-row export's ~200k members spread through 5M rows,
# its peak RSS against the 1M-row features run of the same invocation; members_10m: 10M rows, 2M members.
MEMORY = {"members_fixed": (5_000_000, 200_000), "members_10m": (10_000_000, None)}

COLUMNS = ("scenario", "rows", "members", "wall_s", "members_per_s", "peak_rss_mb", "vs_limit")


def median_run(runs: list[dict]) -> dict:
    mid = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
    return {**mid, "rss_mb": statistics.median(r["rss_mb"] for r in runs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="rows per export, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario and size (median reported)")
    parser.add_argument("--scenarios", default="features,per_member,batch")
    parser.add_argument("--per-member-max-rows", type=int, default=100_000,
                        help="skip per-member mode above this size (it is the slow baseline)")
    # One worker: on the 2-core machine the pipeline, which shares the cores with the server,
    # then has a core of its own; with 2 workers both compete for both (README "Performance").
    parser.add_argument("--server-workers", type=int, default=1, help="uvicorn --workers")
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--wrk-connections", type=int, default=16)
    parser.add_argument("--beam-args", default="", help="extra pipeline options, e.g. '--direct_num_workers 2'")
    parser.add_argument("--memory-runs", type=int, default=1, help="runs of members_fixed (median); members_10m runs once")
    parser.add_argument("--no-docs", action="store_true", help="save the results, leave docs/performance.md alone")
    parser.add_argument("--remote-rows", type=int, default=20_000, help="rows of the remote scenario's export")
    args = parser.parse_args(argv)
    scenarios = args.scenarios.split(",")
    if "remote" in scenarios:  # own servers, contenders and results file
        from benchmarks import remote

        remote.main(["--rows", str(args.remote_rows), "--runs", str(args.runs), "--scenarios", "remote"])
        scenarios.remove("remote")
        if not scenarios:
            return
    try:
        import pandas  # noqa: F401
    except ImportError:
        sys.exit("the benchmark's in-memory reference needs pandas: pip install pandas")
    if shutil.which("wrk") is None:
        sys.exit("the endpoint capacity is measured with wrk: apt-get install -y wrk")
    sizes = [int(s) for s in args.sizes.split(",")]
    beam_args = args.beam_args.split()

    recorder = Recorder("perf", argv if argv is not None else sys.argv[1:], columns=list(COLUMNS))
    facts = recorder.data["machine"]
    print(f"# {recorder.started:%Y-%m-%d %H:%M} UTC, nproc {facts['nproc']}, memory {facts['memory_gib']} GiB, "
          f"Python {facts['python']}, uvicorn workers {args.server_workers}, runs {args.runs}")
    print(f"# command: {recorder.data['command']}")
    rows_out = []
    per_member_called: list[tuple[int, float]] = []
    walls: dict[tuple[int, str], float] = {}
    rss: dict[tuple[int, str], float] = {}
    with reference_server(args.server_workers) as server, tempfile.TemporaryDirectory() as tmp:
        url = server[0]
        limit = endpoint_limit(url, args.wrk_seconds, args.wrk_connections)
        capacity = (f"endpoint capacity (wrk, {args.wrk_connections} connections): ats {limit['ats']:.0f}/s, "
                    f"resp {limit['resp']:.0f}/s, offer {limit['offer']:.0f}/s -> "
                    f"limit {limit['members_per_s']:.0f} members/s")
        print(f"# {capacity}", flush=True)
        recorder.note(capacity)
        for rows in sizes:
            path = export(rows)
            per_member_rate = None
            for scenario in scenarios:
                if scenario in MEMORY or (scenario == "per_member" and rows > args.per_member_max_rows):
                    continue
                runs, refs = [], []
                for i in range(args.runs):
                    run = pipeline_run(path, Path(tmp) / f"{scenario}-{rows}-{i}", server, scenario, beam_args)
                    runs.append(run)
                    print(f"    run {i + 1}: {run['wall']:.2f} s, pipeline CPU {run['cpu']:.1f} s, "
                          f"server CPU {run['server_cpu']:.1f} s, load average {run['load']:.1f}", flush=True)
                    if scenario.startswith("features") or scenario == "beam_floor":
                        refs.append((pandas_features(path)[0], polars_features(path)[0]))
                r = median_run(runs)
                rate = r["members"] / r["wall"]
                if scenario.startswith("features") or scenario == "beam_floor":
                    ref = statistics.median(pandas for pandas, _ in refs)
                    fast = statistics.median(polars for _, polars in refs)
                    versus = f"{r['wall'] / fast:.1f}x polars ({fast:.2f} s), {r['wall'] / ref:.1f}x pandas ({ref:.2f} s)"
                    if scenario == "features_2p" and (rows, "features") in walls:
                        versus += f", speed {walls[rows, 'features'] / r['wall']:.2f}x one process's"
                elif scenario == "per_member":
                    per_member_rate = rate
                    achieved = r["called"] / r["wall"]
                    per_member_called.append((rows, achieved))
                    versus = f"{achieved / limit['members_per_s']:.0%} of limit ({achieved:.0f} called/s)"
                else:
                    versus = f"{rate / per_member_rate:.1f}x per-member" if per_member_rate else "-"
                    if (rows, "features") in walls:
                        versus = f"{r['wall'] / walls[rows, 'features']:.2f}x features-only, {versus}"
                rows_out.append((scenario, rows, r["members"], r["wall"], rate, r["rss_mb"], versus))
                recorder.row(**dict(zip(COLUMNS, rows_out[-1], strict=True)), runs=runs)
                walls[rows, scenario] = r["wall"]
                rss[rows, scenario] = r["rss_mb"]
                print(f"  {scenario:10} {rows:>9,} rows: {r['wall']:7.2f} s, {rate:8.0f} members/s, "
                      f"{r['rss_mb']} MB, {versus}", flush=True)
        for scenario in [s for s in scenarios if s in MEMORY]:
            rows, members = MEMORY[scenario]
            path = export(rows, members)
            runs = []
            for i in range(args.memory_runs if scenario == "members_fixed" else 1):  # 10M rows: once
                runs.append(pipeline_run(path, Path(tmp) / f"{scenario}-{i}", server, "features", beam_args))
                print(f"    run {i + 1}: {runs[-1]['wall']:.2f} s, {runs[-1]['rss_mb']} MB, pipeline CPU "
                      f"{runs[-1]['cpu']:.1f} s, load average {runs[-1]['load']:.1f}", flush=True)
            r = median_run(runs)
            if scenario == "members_fixed" and (1_000_000, "features") in rss:
                base = rss[1_000_000, "features"]
                versus = f"peak RSS {r['rss_mb'] / base:.2f}x the 1,000,000-row features run ({base} MB)"
            else:
                versus = f"{r['wall']:.0f} s, {r['rss_mb'] / 1024:.2f} GB peak"
            rows_out.append((scenario, rows, r["members"], r["wall"], r["members"] / r["wall"], r["rss_mb"], versus))
            recorder.row(**dict(zip(COLUMNS, rows_out[-1], strict=True)), runs=runs)
            print(f"  {scenario:10} {rows:>9,} rows: {r['wall']:7.2f} s, {r['rss_mb']} MB, {versus}", flush=True)
        if per_member_called:
            # The capacity moves with the machine's load: measured again once the runs are done.
            after = endpoint_limit(url, args.wrk_seconds, args.wrk_connections)
            again = (f"endpoint capacity after the runs: ats {after['ats']:.0f}/s, resp {after['resp']:.0f}/s, "
                     f"offer {after['offer']:.0f}/s -> limit {after['members_per_s']:.0f} members/s; per_member "
                     + ", ".join(f"{rows:,} rows: {achieved / after['members_per_s']:.0%} of it"
                                 for rows, achieved in per_member_called))
            print(f"# {again}")
            recorder.note(again)
    print()
    print("| scenario | rows | members | wall s | members/s | peak RSS MB | vs limit |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for scenario, rows, members, wall, rate, peak, versus in rows_out:
        print(f"| {scenario} | {rows:,} | {members:,} | {wall:.2f} | {rate:,.0f} | {peak} | {versus} |")
    largest = max(sizes)
    for scenario in scenarios:  # the memory target: peak RSS at the largest size over that at 100k rows
        if (largest, scenario) in rss and (100_000, scenario) in rss and largest != 100_000:
            ratio = (f"peak RSS {scenario}: {largest:,} rows / 100,000 rows = "
                     f"{rss[largest, scenario]} / {rss[100_000, scenario]} MB = "
                     f"{rss[largest, scenario] / rss[100_000, scenario]:.2f}x")
            print(f"# {ratio}")
            recorder.note(ratio)
    path = recorder.save()
    print(f"# saved {path.relative_to(ROOT)}")
    if not args.no_docs:
        DOC.write_text(render(DOC.read_text()))
        print(f"# regenerated {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
