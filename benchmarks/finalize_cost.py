"""What it costs a run to end itself, and what its launcher holds while it waits.

    python benchmarks/finalize_cost.py                                   # 1M rows x 3 pairs; 200k and 2M members
    python benchmarks/finalize_cost.py --rows 100000 --pairs 1 --members 20000 200000   # a quick look

Scenarios:

1. ``finalize_cost``: the ``--features-only`` run of the 1M-row export (as ``benchmarks/perf.py``'s
   ``features`` scenario) with its in-pipeline end (the counts, the last step: accounting, run.json,
   publication) and without it (the same job, its writes left in the staging folder), alternating in
   one invocation, each in a fresh process. The wall time is the job's (``launch.run_job``: building
   the job, running and waiting for it); the last step's own seconds come from its log line. The
   cost is the median over pairs of (with / without - 1), each pair run back to back, in wall time
   and in CPU time (the local runner's workers are threads of the job's process, so its CPU time
   is the job's, and moves less with other load on the machine than wall time does).
2. ``driver_rss``: the launcher's own peak RSS (``VmHWM`` of its process alone) while it runs a
   ``--features-only`` job on Beam's portable runner (a job server and an external worker pool,
   separate processes, as on a cluster) and waits for it, at each of ``--members`` members
   (two rows per member). The job's memory is the job server's and the workers'; the launcher's
   must not grow with the members.

Results: ``benchmarks/results/finalize_cost-*.json``; the table in docs/performance.md is generated
from the newest (``python benchmarks/results.py``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.perf import AS_OF, export  # noqa: E402
from benchmarks.results import Recorder  # noqa: E402
from tests.conftest import free_port  # noqa: E402

COLUMNS = ["scenario", "rows", "members", "with_s", "without_s", "cost_pct", "cpu_cost_pct", "last_step_s",
           "driver_peak_rss_mb", "vs_first"]


# --- one job, in a fresh process --------------------------------------------------------------------


def child(mode: str, path: str, output: str) -> None:
    """Run the features-only job once, ``with`` or ``without`` its in-pipeline end; print one JSON line."""
    import dataclasses

    from beam_pipeline import cli, launch, summary

    timings: dict[str, float] = {}
    real_run_job, real_build = launch.run_job, cli.build_pipeline

    def timed_run_job(pipeline, launched):
        started, cpu = time.perf_counter(), time.process_time()
        out = real_run_job(pipeline, launched)
        timings["job_s"] = time.perf_counter() - started
        timings["job_cpu_s"] = time.process_time() - cpu  # the local runner's workers are this process's threads
        return out

    class LastStep(logging.Handler):
        def emit(self, record):
            if hasattr(record, "finalize_seconds"):
                timings["last_step_s"] = record.finalize_seconds

    step_log = logging.getLogger("beam_pipeline.finalize")
    step_log.addHandler(LastStep())
    step_log.setLevel(logging.INFO)
    step_log.propagate = False
    launch.run_job = timed_run_job
    if mode == "without":
        cli.build_pipeline = lambda p, job: real_build(p, dataclasses.replace(job, plan=None))
        summary.conclude = lambda launched, result, failure: (0, None)
    started = time.perf_counter()
    code, _ = cli.run(["--input", path, "--output", output, "--as-of", AS_OF, "--features-only",
                       "--log-level", "WARNING", "--heartbeat-seconds", "0"])
    timings["total_s"] = time.perf_counter() - started
    if code != 0 or (mode == "with" and not (Path(output) / "run.json").exists()):
        sys.exit(f"{mode}: exit code {code}")
    print(json.dumps({"mode": mode, **timings}), flush=True)


def one_job(mode: str, path: Path, workdir: Path) -> dict:
    output = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=workdir))
    env = {**os.environ, "TMPDIR": str(workdir)}
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(output / "out")],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def finalize_cost(rows: int, pairs: int, workdir: Path, recorder: Recorder) -> None:
    path = export(rows)
    runs = []
    for i in range(pairs):
        order = ("with", "without") if i % 2 == 0 else ("without", "with")  # neither always goes first
        pair = {mode: one_job(mode, path, workdir) for mode in order}
        pair["cost"] = pair["with"]["job_s"] / pair["without"]["job_s"] - 1
        pair["cpu_cost"] = pair["with"]["job_cpu_s"] / pair["without"]["job_cpu_s"] - 1
        pair["load"] = os.getloadavg()[0]
        runs.append(pair)
        print(f"  pair {i + 1}: with {pair['with']['job_s']:.2f} s (last step {pair['with'].get('last_step_s', 0):.3f} s), "
              f"without {pair['without']['job_s']:.2f} s: {pair['cost'] * 100:+.1f}% wall, "
              f"{pair['cpu_cost'] * 100:+.1f}% CPU  load {pair['load']:.1f}", flush=True)
    with_s = statistics.median(r["with"]["job_s"] for r in runs)
    without_s = statistics.median(r["without"]["job_s"] for r in runs)
    members = _members(workdir)
    recorder.row(scenario="finalize_cost", rows=rows, members=members, with_s=with_s, without_s=without_s,
                 cost_pct=round(statistics.median(r["cost"] for r in runs) * 100, 1),
                 cpu_cost_pct=round(statistics.median(r["cpu_cost"] for r in runs) * 100, 1),
                 last_step_s=statistics.median(r["with"].get("last_step_s", 0.0) for r in runs),
                 driver_peak_rss_mb=None, vs_first=None, runs=runs)


def _members(workdir: Path) -> int | None:
    for summary in sorted(workdir.glob("with-*/out/run.json")):
        return json.loads(summary.read_text())["accounting"]["members"]
    return None


# --- the launcher's memory on the portable runner -------------------------------------------------


def _peak_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Cluster:
    """Beam's portable job server and an external worker pool on loopback, each a process of its own."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        env = {**os.environ, "TMPDIR": str(workdir),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        port_file = workdir / "job_port"
        self.pool_port = free_port()
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                              "--port", "0", "--port_file", str(port_file), "--staging_dir", str(workdir / "staging")],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                              "--service_port", str(self.pool_port)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline:
                self.stop()
                sys.exit("the job server did not start")
            time.sleep(0.2)
        self.job_port = int(port_file.read_text())
        time.sleep(2)

    def args(self) -> list[str]:
        return ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{self.job_port}",
                "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{self.pool_port}"]

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def driver_rss(members_list: list[int], workdir: Path, recorder: Recorder) -> None:
    cluster = Cluster(workdir)
    first = None
    try:
        for members in members_list:
            rows = 2 * members
            path = export(rows, members)
            output = workdir / f"portable-{members}"
            cmd = [sys.executable, "-m", "beam_pipeline", "--input", str(path), "--output", str(output),
                   "--as-of", AS_OF, "--features-only", "--log-level", "WARNING", "--heartbeat-seconds", "0",
                   *cluster.args()]
            started = time.perf_counter()
            proc = subprocess.Popen(cmd, env={**os.environ, "TMPDIR": str(workdir)}, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            peak = 0
            while proc.poll() is None:
                peak = max(peak, _peak_kb(proc.pid))
                time.sleep(0.05)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                sys.exit(f"portable run at {members:,} members exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
            summary = json.loads((output / "run.json").read_text())
            peak_mb = round(peak / 1024, 1)
            first = first or peak_mb
            recorder.row(scenario="driver_rss", rows=rows, members=summary["accounting"]["members"], with_s=wall,
                         without_s=None, cost_pct=None, cpu_cost_pct=None, last_step_s=None, driver_peak_rss_mb=peak_mb,
                         vs_first=round(peak_mb / first, 2))
            print(f"  {members:>9,} members: launcher peak RSS {peak_mb} MB ({peak_mb / first:.2f}x), job {wall:.1f} s",
                  flush=True)
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(*argv[1:4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the finalize_cost export")
    parser.add_argument("--pairs", type=int, default=3, help="with/without pairs (medians)")
    parser.add_argument("--members", type=int, nargs="*", default=[200_000, 2_000_000],
                        help="members of each driver_rss run (two rows each)")
    parser.add_argument("--scenarios", default="finalize_cost,driver_rss")
    args = parser.parse_args(argv)
    scenarios = args.scenarios.split(",")
    recorder = Recorder("finalize_cost", argv, COLUMNS)
    with tempfile.TemporaryDirectory(prefix="finalize-cost-") as tmp:
        workdir = Path(tmp)
        if "finalize_cost" in scenarios:
            print(f"finalize_cost: {args.rows:,} rows, {args.pairs} pairs", flush=True)
            finalize_cost(args.rows, args.pairs, workdir, recorder)
        if "driver_rss" in scenarios and args.members:
            print(f"driver_rss: {', '.join(f'{m:,}' for m in args.members)} members on the portable runner", flush=True)
            driver_rss(args.members, workdir, recorder)
    recorder.note("cost_pct (cpu_cost_pct): median over pairs of the job's wall time (CPU time of its process, whose "
                  "threads are the local runner's workers) with its in-pipeline end over without, minus 1; pairs run "
                  "back to back, alternating which goes first; last_step_s: the last step's own time")
    recorder.note("driver_peak_rss_mb: the launching process alone (VmHWM), on the portable runner; vs_first: "
                  "against the first driver_rss row")
    path = recorder.save()
    print(f"saved {path.relative_to(ROOT)}")
    print("| " + " | ".join(COLUMNS) + " |")
    for row in recorder.data["rows"]:
        print("| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
