"""Incremental runs against full recomputes: a day's cost, reading a state, its size and its memory.

    python benchmarks/incremental.py                             # 5M-row history, 200k members, 50k-row day
    python benchmarks/incremental.py --repeats 1 --history-rows 200000 --members 20000 --day-rows 2000
    python benchmarks/incremental.py --memory                    # also 10M rows, 2M members (peak RSS)

One export of history + day rows is generated (``beam_pipeline.generate``, members spread through
it; kept under ``benchmarks/data/``) and cut in two: the history is every line but the last
``--day-rows``, the day is those. Per repeat, all ``--features-only`` (no endpoint involved):

1. ``full``: one run over the history and the day together (two ``--input``): the full recompute;
2. ``base``: a run over the history alone (it writes the state the day folds into);
3. ``incremental``: the day alone, ``--incremental-from`` the base: its wall time over ``full``'s of
   the same repeat is the ratio the target bounds;
4. ``state_read``: in this process, the base's state checked against its manifest
   (``load_base``: sizes and checksums), its files read and cut into the shuffle's shard
   batches (``base_batches``): what a run pays to take the state in.

Each run is a whole process, timed with its start-up; peak RSS is summed over its process tree
(``benchmarks/perf.py``'s measurement). ``--memory`` repeats 1-3 once at 10M rows with 2M members
and compares the incremental run's peak RSS (it reads and writes a 2M-member state) with the full
run's. Results are saved as JSON and the table in docs/performance.md is generated from them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from beam_pipeline import generate  # noqa: E402
from benchmarks.perf import run_measured  # noqa: E402
from benchmarks.results import DOC, Recorder, render  # noqa: E402
from lantern.state_fold import base_batches  # noqa: E402
from transforms.member_state_io import load_base  # noqa: E402

AS_OF = "2026-11-24"
DATA = ROOT / "benchmarks" / "data"
COLUMNS = ["scenario", "rows", "members", "repeat", "wall_s", "peak_rss_mb", "ratio_to_full", "state_read_s",
           "state_bytes_per_member"]


def exports(history_rows: int, day_rows: int, members: int) -> tuple[Path, Path]:
    """(history, day) cut from one generated export of history + day rows (made once, kept)."""
    total = history_rows + day_rows
    stem = DATA / f"incremental-{total}-{members}m"
    history, day = stem.with_suffix(".history.csv"), stem.with_suffix(".day.csv")
    if history.exists() and day.exists():
        return history, day
    DATA.mkdir(parents=True, exist_ok=True)
    with open(history, "w", encoding="utf-8", newline="") as h, open(day, "w", encoding="utf-8", newline="") as d:
        h.write(",".join(generate.HEADER) + "\n")
        d.write(",".join(generate.HEADER) + "\n")
        for i, line in enumerate(generate.rows(total, seed=total, rows_per_member=total / members)):
            (h if i < history_rows else d).write(line + "\n")
    return history, day


def pipeline(*argv: str) -> tuple[float, int]:
    """(wall seconds, peak RSS MB) of one features-only run."""
    cmd = [sys.executable, "-m", "beam_pipeline", *argv, "--features-only", "--as-of", AS_OF,
           "--log-level", "WARNING", "--heartbeat-seconds", "0"]
    wall, rss, code, _ = run_measured(cmd)
    if code != 0:
        sys.exit(f"exited {code}: {' '.join(cmd)}")
    return wall, rss


def read_state(output: Path) -> tuple[float, int, int]:
    """(seconds to check and read a state into shard batches, members, bytes of its files)."""
    t0 = time.perf_counter()
    base = load_base(str(output))
    members = 0
    for path in base.paths:
        table = pq.read_table(path)
        members += table.num_rows
        for _ in base_batches(table):
            pass
    seconds = time.perf_counter() - t0
    return seconds, members, sum(f.size_bytes for f in base.manifest.files)


def scenario(recorder: Recorder, name: str, history: Path, day: Path, repeats: int, work: Path) -> dict:
    walls: dict[str, list[float]] = {"full": [], "incremental": [], "state_read": []}
    ratios: list[float] = []
    rss: dict[str, list[int]] = {"full": [], "base": [], "incremental": []}
    for repeat in range(1, repeats + 1):
        out = work / f"{name}-{repeat}"
        full_wall, full_rss = pipeline("--input", str(history), "--input", str(day), "--output", str(out / "full"))
        summary = json.loads((out / "full" / "run.json").read_text())
        members, rows = summary["state"]["members"], summary["accounting"]["rows_read"]
        recorder.row(scenario=f"{name} full", rows=rows, members=members, repeat=repeat, wall_s=round(full_wall, 2),
                     peak_rss_mb=full_rss)
        base_wall, base_rss = pipeline("--input", str(history), "--output", str(out / "base"))
        base_rows = json.loads((out / "base" / "run.json").read_text())["accounting"]["rows_read"]
        recorder.row(scenario=f"{name} base (history)", rows=base_rows, members=None,
                     repeat=repeat, wall_s=round(base_wall, 2), peak_rss_mb=base_rss)
        read_s, state_members, state_bytes = read_state(out / "base")
        recorder.row(scenario=f"{name} state read", members=state_members, repeat=repeat,
                     state_read_s=round(read_s, 3), state_bytes_per_member=round(state_bytes / state_members, 1))
        inc_wall, inc_rss = pipeline("--input", str(day), "--incremental-from", str(out / "base"),
                                     "--output", str(out / "incremental"))
        inc = json.loads((out / "incremental" / "run.json").read_text())
        ratio = inc_wall / full_wall
        recorder.row(scenario=f"{name} incremental (day)", rows=inc["accounting"]["rows_read"],
                     members=inc["state"]["members"], repeat=repeat, wall_s=round(inc_wall, 2), peak_rss_mb=inc_rss,
                     ratio_to_full=round(ratio, 3))
        print(f"{name} {repeat}: full {full_wall:.1f}s {full_rss} MB; base {base_wall:.1f}s {base_rss} MB; "
              f"state read {read_s:.3f}s ({state_bytes / state_members:.0f} B/member); "
              f"incremental {inc_wall:.1f}s {inc_rss} MB = {ratio:.3f}x full", flush=True)
        walls["full"].append(full_wall)
        walls["incremental"].append(inc_wall)
        walls["state_read"].append(read_s)
        ratios.append(ratio)
        rss["full"].append(full_rss)
        rss["base"].append(base_rss)
        rss["incremental"].append(inc_rss)
        bytes_per_member = state_bytes / state_members
        for folder in ("full", "base", "incremental"):
            os.system(f"rm -rf '{out / folder}'")
    return {"ratio": statistics.median(ratios), "state_read_s": statistics.median(walls["state_read"]),
            "bytes_per_member": bytes_per_member, "members": state_members,
            "rss": {k: statistics.median(v) for k, v in rss.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history-rows", type=int, default=5_000_000)
    parser.add_argument("--members", type=int, default=200_000)
    parser.add_argument("--day-rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also 10M rows with 2M members, once")
    args = parser.parse_args(argv)
    recorder = Recorder("incremental", argv if argv is not None else sys.argv[1:], COLUMNS)
    work = Path(tempfile.mkdtemp(prefix="incremental-", dir=os.environ.get("TMPDIR")))
    history, day = exports(args.history_rows, args.day_rows, args.members)
    cost = scenario(recorder, "cost", history, day, args.repeats, work)
    recorder.note(f"cost: a {args.day_rows:,}-row day folded into a {args.history_rows:,}-row history of "
                  f"{cost['members']:,} members: median {cost['ratio']:.3f}x the full recompute's wall time "
                  f"(target <= 0.35x); state of {cost['members']:,} members checked and read in median "
                  f"{cost['state_read_s']:.3f} s (target < 1 s); {cost['bytes_per_member']:.0f} bytes per member "
                  "(target <= 200)")
    if args.memory:
        history, day = exports(10_000_000 - 50_000, 50_000, 2_000_000)
        big = scenario(recorder, "memory", history, day, 1, work)
        rss = big["rss"]
        recorder.note(f"memory: 10M rows, {big['members']:,} members: full run peak {rss['full']:.0f} MB, history "
                      f"run (writes the state) {rss['base']:.0f} MB, incremental run (reads and writes the state) "
                      f"{rss['incremental']:.0f} MB = {rss['incremental'] / rss['full']:.2f}x the full run's "
                      f"(target <= 1.0x); state read {big['state_read_s']:.2f} s, {big['bytes_per_member']:.0f} B/member")
    path = recorder.save()
    DOC.write_text(render(DOC.read_text()))
    print(f"saved {path.relative_to(ROOT)}; docs/performance.md regenerated")
    for note in recorder.data["notes"]:
        print(note)


if __name__ == "__main__":
    main()
