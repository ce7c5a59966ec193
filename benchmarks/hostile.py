"""Whole runs against an endpoint that misbehaves for 10% of members, against the same runs healthy.

    python benchmarks/hostile.py [--rows 20000] [--rate 0.1] [--repeat 3] [--modes per-member,batch]

Each repeat runs the CLI twice per mode, alternating, against ``tests/hostile_server.py`` in its
own process: once with no misbehaviour (the healthy run), once with ``--rate`` of ATS requests
misbehaving in every known way (drips at a byte a second, hangs, 1 GiB gzip bombs, 30 MB bodies,
redirects to another origin, deep JSON, resets, ...), the partner's secret in ``X-Api-Key``.
It checks the issue's targets on every hostile run and saves the figures (benchmarks/results/):

- exit 3, wall time at most 2 x the healthy run's plus the configured member deadline;
- peak RSS (the CLI process, ``/usr/bin/time``) at most 1.5 x the healthy run's;
- each misbehaving member FAILED with the reason its behaviour calls for;
- every other member OK and its row equal to the healthy run's (latency and attempts aside);
- the secret seen by no other origin, and in no output file and no log line.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from benchmarks.results import Recorder  # noqa: E402
from tests.hostile_server import BEHAVIOURS, instance_key  # noqa: E402

SECRET = "bench-s3cr3t-x-api-key"
KEY_ENV = "LANTERN_BENCH_KEY"
AS_OF = "2026-11-24"
CALLS = {"read_timeout_s": 2.0, "attempt_timeout_s": 5.0, "member_timeout_s": 15.0}

BATCH = {"ats": {"path": "/ml/ats/predict", "batch_path": "/ml/ats/predict/batch"},
         "resp": {"path": "/ml/resp/predict", "batch_path": "/ml/resp/predict/batch"},
         "offer": {"path": "/offer/assign", "batch_path": "/offer/assign/batch", "response_field": "offer"},
         "batch": True, "max_batch_size": 20}
FEATURES = ("AVG_POINTS_BOUGHT", "AVG_REVENUE_USD", "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT",
            "LAST_3_TRANSACTIONS_AVG_REVENUE_USD", "PCT_BUY_TRANSACTIONS", "PCT_GIFT_TRANSACTIONS",
            "PCT_REDEEM_TRANSACTIONS", "DAYS_SINCE_LAST_TRANSACTION")


def volatile(column: str) -> bool:
    """Columns that differ between runs by nature: latencies (and their parts) and attempts."""
    return column.endswith("_MS") or column == "ATTEMPTS"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(rate: float, report: Path) -> tuple[subprocess.Popen, str, str]:
    port, other = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.hostile_server", "--port", str(port), "--other-port",
                             str(other), "--rate", str(rate), "--secret", SECRET, "--report", str(report)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # "hostile URL other URL": serving
    return proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{other}"


def stop(proc: subprocess.Popen, report: Path) -> dict:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return json.loads(report.read_text())


def partner_file(folder: Path, url: str, batch: bool) -> Path:
    path = folder / "partner.json"
    path.write_text(json.dumps({"name": "hostile_bench", "endpoints": {"base_url": url, **(BATCH if batch else {})},
                                "auth": {"header": "X-Api-Key", "env": KEY_ENV}, "calls": CALLS}))
    return path


def run(export: Path, folder: Path, url: str, batch: bool) -> dict:
    """One CLI run in its own process: exit code, wall seconds, peak RSS (MiB), its log."""
    out, log = folder / "out", folder / "log.txt"
    cmd = ["/usr/bin/time", "-f", "MAXRSS_KB %M", sys.executable, "-m", "beam_pipeline", "--input", str(export),
           "--output", str(out), "--partner-config", str(partner_file(folder, url, batch)), "--as-of", AS_OF,
           "--log-level", "INFO"]
    t0 = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.run(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, KEY_ENV: SECRET}).returncode
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    rss = int(text.rsplit("MAXRSS_KB ", 1)[1].split()[0]) / 1024
    return {"exit": code, "wall_s": wall, "rss_mib": rss, "out": out, "log": text}


def rows_by_member(out: Path) -> dict[str, dict]:
    return {r["MEMBER_ID"]: r for r in pq.read_table(out / "results").to_pylist()}


def reason_fits(behaviour: str, error: str, other: str, own: str) -> bool:
    expected = BEHAVIOURS[behaviour]
    return any(e.format(other=other, self=own) in error for e in (expected if isinstance(expected, tuple) else (expected,)))


def check(healthy: dict, hostile: dict, report: dict, own: str, other: str) -> dict:
    """The outcome checks of one hostile run against its healthy run."""
    base, rows = rows_by_member(healthy["out"]), rows_by_member(hostile["out"])
    wrong, misbehaving, failed_right, healthy_equal = [], 0, 0, 0
    for member, row in rows.items():
        if row["STATUS"] == "NO_TRANSACTIONS":
            continue
        behaviour = report["affected"].get(instance_key({name: row[name] for name in FEATURES}))
        if behaviour is None:
            same = {k: v for k, v in row.items() if not volatile(k)} == \
                   {k: v for k, v in base[member].items() if not volatile(k)}
            healthy_equal += row["STATUS"] == "OK" and same
            if not (row["STATUS"] == "OK" and same):
                wrong.append((member, None, row["ERROR"]))
        else:
            misbehaving += 1
            ok = row["STATUS"] == "FAILED" and reason_fits(behaviour, row["ERROR"] or "", other, own)
            failed_right += ok
            if not ok:
                wrong.append((member, behaviour, row["ERROR"]))
    leaked = [str(p) for p in hostile["out"].rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    return {"members": len(rows), "misbehaving": misbehaving, "failed_with_reason": failed_right,
            "healthy_ok_equal": healthy_equal, "wrong": wrong[:5], "n_wrong": len(wrong),
            "secret_in_outputs": len(leaked), "secret_in_log": SECRET in hostile["log"],
            "other_origin_requests": report["other_requests"], "other_origin_secret": report["other_secret_seen"],
            "behaved": report["behaved"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="per-member,batch")
    args = parser.parse_args(argv)
    recorder = Recorder("hostile", argv if argv is not None else sys.argv[1:],
                        ["mode", "healthy_wall_s", "hostile_wall_s", "wall_bound_s", "healthy_rss_mib",
                         "hostile_rss_mib", "rss_ratio", "members", "misbehaving", "failed_with_reason",
                         "healthy_ok_equal", "secret_leaks", "exit"])
    failures = 0
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as tmp:
        work = Path(tmp)
        export = work / "export.csv"
        subprocess.run([sys.executable, "-m", "beam_pipeline.generate", "--rows", str(args.rows), "--out", str(export)],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        print("| mode | healthy wall s | hostile wall s | bound s | healthy RSS MiB | hostile RSS MiB | RSS ratio "
              "| members | misbehaving | FAILED with reason | healthy OK and equal | secret leaks | exit |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for mode in args.modes.split(","):
            batch = mode == "batch"
            runs = []
            for i in range(args.repeat):
                pair = {}
                for kind, rate in (("healthy", 0.0), ("hostile", args.rate)):
                    folder = work / f"{mode}-{kind}-{i}"
                    folder.mkdir()
                    report_path = folder / "server.json"
                    proc, url, other = serve(rate, report_path)
                    try:
                        pair[kind] = run(export, folder, url, batch)
                    finally:
                        report = stop(proc, report_path)
                    pair[kind + "_report"], pair["url"], pair["other"] = report, url, other
                checks = check(pair["healthy"], pair["hostile"], pair["hostile_report"], pair["url"], pair["other"])
                runs.append({"healthy_wall_s": round(pair["healthy"]["wall_s"], 2),
                             "hostile_wall_s": round(pair["hostile"]["wall_s"], 2),
                             "healthy_rss_mib": round(pair["healthy"]["rss_mib"], 1),
                             "hostile_rss_mib": round(pair["hostile"]["rss_mib"], 1),
                             "healthy_exit": pair["healthy"]["exit"], "exit": pair["hostile"]["exit"],
                             **{k: v for k, v in checks.items() if k != "wrong"}, "wrong_examples": checks["wrong"]})
            med = {k: statistics.median(r[k] for r in runs) for k in
                   ("healthy_wall_s", "hostile_wall_s", "healthy_rss_mib", "hostile_rss_mib")}
            bound = 2 * med["healthy_wall_s"] + CALLS["member_timeout_s"]
            leaks = sum(r["secret_in_outputs"] + r["secret_in_log"] + r["other_origin_requests"]
                        + r["other_origin_secret"] for r in runs)
            last = runs[-1]
            row = {"mode": mode, **med, "wall_bound_s": round(bound, 2),
                   "rss_ratio": round(med["hostile_rss_mib"] / med["healthy_rss_mib"], 2),
                   "members": last["members"], "misbehaving": last["misbehaving"],
                   "failed_with_reason": last["failed_with_reason"], "healthy_ok_equal": last["healthy_ok_equal"],
                   "secret_leaks": leaks, "exit": "/".join(str(r["exit"]) for r in runs), "runs": runs}
            recorder.row(**row)
            print("| " + " | ".join(str(row[c]) for c in recorder.data["columns"]) + " |", flush=True)
            met = (med["hostile_wall_s"] <= bound and row["rss_ratio"] <= 1.5 and not leaks
                   and all(r["exit"] == 3 and r["healthy_exit"] == 0 and not r["n_wrong"] for r in runs))
            failures += not met
            if not met:
                print(f"# {mode}: a target is missed; examples: {[r['wrong_examples'] for r in runs]}", flush=True)
    recorder.note(f"{args.rows} generated rows, {args.rate:.0%} of ATS requests misbehaving (chosen by request body), "
                  f"medians of {args.repeat} alternating healthy/hostile runs; calls: {CALLS}; bound = 2 x healthy "
                  "wall + calls.member_timeout_s; RSS is the CLI process's peak (/usr/bin/time)")
    print(f"# saved {recorder.save().relative_to(ROOT)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
