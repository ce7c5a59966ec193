"""Day two: a ``--retry-failed`` run against a full re-run, and the cost of ``--baseline``'s statistics.

    python benchmarks/day_two.py                      # 20,000 rows, 10% of RESP calls failing, 3 repeats
    python benchmarks/day_two.py --rows 5000 --repeats 1

The failed run is the export against the reference service with RESP failing
for a share of calls (fault injection, no retries, no throttling); then, against a
healthy service, the retry of that run and a full re-run of the export, which
is what finishing the day cost without ``--retry-failed``. Wall seconds and
endpoint requests per repeat; the ratio is taken within each repeat. Then
``lantern.comparison.compare`` over two result tables of ``--members`` members,
with the share spent in ``scipy.stats.ks_2samp``. Results are saved as JSON
(benchmarks/results.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from scipy import stats  # noqa: E402

from beam_pipeline import cli, generate  # noqa: E402
from benchmarks.results import Recorder  # noqa: E402
from lantern import comparison  # noqa: E402
from lantern.features import SPEC_FEATURES  # noqa: E402
from tests.conftest import uvicorn_server, write_partner  # noqa: E402

AS_OF = "2026-11-24"
COLUMNS = ["scenario", "members", "failed", "repeat", "retry_s", "full_rerun_s", "speedup", "retry_requests",
           "full_rerun_requests", "compare_cpu_s", "ks_2samp_cpu_s"]


def _run(*argv: str) -> tuple[int, float, dict]:
    t0 = time.perf_counter()
    code = cli.main([*argv, "--log-level", "WARNING", "--heartbeat-seconds", "0"])
    seconds = time.perf_counter() - t0
    out = Path(argv[argv.index("--output") + 1])
    return code, seconds, json.loads((out / "run.json").read_text())


def _requests(run_summary: dict) -> int:
    return sum(n for kind in run_summary["requests"].values() for k, n in kind.items() if k != "retries")


def retry_rows(rows: int, fail_rate: float, repeats: int, recorder: Recorder) -> None:
    work = Path(tempfile.mkdtemp(prefix="day_two-"))
    export = work / "export.csv"
    with open(export, "w", encoding="utf-8", newline="") as out:
        generate.write(out, rows, seed=7)
    fault = {"FAULT_RATE": str(fail_rate), "FAULT_STATUS": "503", "FAULT_PATHS": "/ml/resp/predict", "FAULT_SEED": "1"}
    with uvicorn_server(env=fault) as bad, uvicorn_server() as good:
        for i in range(repeats):
            failing = write_partner(work, bad, retries=0, adaptive_throttling=False)
            code, _, day1 = _run("--input", str(export), "--output", str(work / f"day1-{i}"),
                                 "--partner-config", str(failing), "--as-of", AS_OF)
            assert code == 3, code
            code, retry_s, retried = _run("--retry-failed", str(work / f"day1-{i}"), "--output",
                                          str(work / f"retry-{i}"), "--endpoint-url", good)
            assert code == 0, code
            code, full_s, full = _run("--input", str(export), "--output", str(work / f"full-{i}"),
                                      "--partner-config", str(failing), "--endpoint-url", good, "--as-of", AS_OF)
            assert code == 0, code
            recorder.row(scenario="retry vs full re-run", rows=rows, members=day1["accounting"]["members"],
                         failed=day1["accounting"]["members_failed"], repeat=i + 1,
                         retry_s=round(retry_s, 2), full_rerun_s=round(full_s, 2),
                         speedup=round(full_s / retry_s, 2),
                         retry_requests=_requests(retried), full_rerun_requests=_requests(full))


def _table(n: int, seed: int, scale: float = 1.0) -> pa.Table:
    rng = np.random.default_rng(seed)
    cols = {"MEMBER_ID": [f"m{i}" for i in range(n)]}
    for name in SPEC_FEATURES:
        cols[name] = rng.gamma(2.0, 10.0, n) * (scale if name == "AVG_REVENUE_USD" else 1.0)
    cols["N_TRANSACTIONS"] = np.full(n, 3)
    cols["ATS_PREDICTION"] = rng.gamma(2.0, 100.0, n)
    cols["RESP_PREDICTION"] = rng.uniform(0, 0.9, n)
    cols["OFFER"] = np.where(rng.uniform(size=n) < 0.2, "OFFER_2", "OFFER_1")
    cols["STATUS"] = np.full(n, "OK")
    for kind in ("ATS", "RESP", "OFFER"):
        cols[f"{kind}_LATENCY_MS"] = rng.uniform(5, 15, n)
    return pa.table(cols)


def comparison_rows(members: int, repeats: int, recorder: Recorder) -> None:
    then, now = _table(members, 1), _table(members, 2, scale=2.0)
    summary = {"run_id": "r", "dead_letter_reasons": {}, "accounting": {"rows_read": members}}
    a, b = np.asarray(then.column("AVG_REVENUE_USD")), np.asarray(now.column("AVG_REVENUE_USD"))
    for i in range(repeats):
        t0 = time.process_time()
        comparison.compare(summary, then, summary, now, list(SPEC_FEATURES))
        compare_s = time.process_time() - t0
        t0 = time.process_time()
        for _ in range(len(SPEC_FEATURES) + 2):  # one KS per compared column
            stats.ks_2samp(a, b)
        ks_s = time.process_time() - t0
        recorder.row(scenario="compare() CPU", rows=None, members=members, repeat=i + 1,
                     compare_cpu_s=round(compare_s, 3), ks_2samp_cpu_s=round(ks_s, 3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--fail-rate", type=float, default=0.1)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    recorder = Recorder("day_two", sys.argv[1:] if argv is None else argv, columns=COLUMNS)
    retry_rows(args.rows, args.fail_rate, args.repeats, recorder)
    comparison_rows(args.members, args.repeats, recorder)
    rows = recorder.data["rows"]
    retry = [r for r in rows if r["scenario"] == "retry vs full re-run"]
    cmp_rows = [r for r in rows if r["scenario"] == "compare() CPU"]
    recorder.note(f"retry vs full re-run: median speed-up {statistics.median(r['speedup'] for r in retry):.2f}x, "
                  f"median {statistics.median(r['retry_requests'] for r in retry):,} requests against "
                  f"{statistics.median(r['full_rerun_requests'] for r in retry):,}")
    recorder.note(f"compare() of {args.members:,} members: median {statistics.median(r['compare_cpu_s'] for r in cmp_rows):.2f}"
                  f" s CPU, of which ks_2samp {statistics.median(r['ks_2samp_cpu_s'] for r in cmp_rows):.2f} s")
    for row in rows:
        print(" | ".join(f"{k}={v}" for k, v in row.items() if v is not None))
    for note in recorder.data["notes"]:
        print(note)
    print(f"saved {recorder.save()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
