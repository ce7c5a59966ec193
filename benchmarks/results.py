"""Benchmark results as data: each benchmark invocation saves one JSON file, and the tables in
``docs/performance.md`` (and ``docs/failure-handling.md``) are generated from the newest file of
each benchmark.

    python benchmarks/results.py            # regenerate the pages from benchmarks/results/
    python benchmarks/results.py --check    # exit 1 if a page is not what the results give

A results file holds the machine's facts (cores, memory, Python, load average before and
after), the commit and the command, and the benchmark's rows: every run's figures, not
only the medians, so a later reader can judge the spread. Figures live here, never in prose.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"
DOCS = (DOC, ROOT / "docs" / "failure-handling.md")  # pages with generated tables
_BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n).*?(<!-- end generated -->)", re.S)


def machine() -> dict:
    """Facts that move every figure: state them with the figures."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()),
    }


def commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


class Recorder:
    """Collects one invocation's rows; ``save`` writes them with the machine's facts."""

    def __init__(self, benchmark: str, argv: list[str], columns: list[str] | None = None):
        self.benchmark = benchmark
        self.started = dt.datetime.now(dt.timezone.utc)
        self.data: dict = {
            "benchmark": benchmark,
            "started_at": self.started.isoformat(timespec="seconds"),
            "command": " ".join(["python", f"benchmarks/{benchmark}.py", *argv]),
            "commit": commit(),
            "machine": machine(),
            "columns": columns,  # what the docs table shows; rows may hold more (every run's figures)
            "rows": [],
            "notes": [],
        }

    def row(self, **figures) -> None:
        self.data["rows"].append(figures)

    def note(self, text: str) -> None:
        """A measured fact that is not a table row (e.g. an endpoint's capacity)."""
        self.data["notes"].append(text)

    def save(self, directory: Path = RESULTS) -> Path:
        self.data["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.data["load_average_after"] = list(os.getloadavg())
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.benchmark}-{self.started:%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(self.data, indent=1) + "\n")
        return path


def latest(benchmark: str, directory: Path = RESULTS) -> dict | None:
    """The newest saved invocation of a benchmark (file names sort by time)."""
    files = sorted(directory.glob(f"{benchmark}-*.json"))
    if not files:
        return None
    return {**json.loads(files[-1].read_text()), "file": files[-1].name}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def table(result: dict) -> str:
    """A markdown table of a result's rows (its ``columns``, in order; by default the first
    row's keys), with the invocation's facts on the line above it."""
    columns = result.get("columns") or (list(result["rows"][0]) if result["rows"] else [])
    m = result["machine"]
    lines = [
        f"From `{result['command']}` on {m['nproc']} cores, {m['memory_gib']} GiB, Python {m['python']}; "
        f"the machine's load, the commit and every run's figures are in "
        f"[{result.get('file', 'the results file')}](../benchmarks/results/{result.get('file', '')}).",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    for row in result["rows"]:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    if result.get("notes"):
        lines.append("")
        lines.extend(f"- {note}" for note in result["notes"])
    return "\n".join(lines) + "\n"


def render(text: str, directory: Path = RESULTS) -> str:
    """``text`` with each ``<!-- generated: NAME -->`` block replaced by NAME's newest results."""
    def block(match: re.Match) -> str:
        result = latest(match["name"], directory)
        body = table(result) if result and result["rows"] else f"No saved results of `{match['name']}` yet.\n"
        return match.group(1) + body + match.group(3)

    return _BLOCK.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a page is out of date")
    args = parser.parse_args(argv)
    stale = 0
    for doc in DOCS:
        current = doc.read_text()
        wanted = render(current)
        if args.check:
            if wanted != current:
                print(f"{doc.relative_to(ROOT)} is out of date: run python benchmarks/results.py", file=sys.stderr)
                stale += 1
            continue
        doc.write_text(wanted)
        print(f"wrote {doc.relative_to(ROOT)}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
