"""CPU per line of the parse with the default type words and with a partner vocabulary (input.type_values).

    python benchmarks/vocabulary_cpu.py [--rows 100000] [--runs 5] [--baseline-rev REV]

Generates an export in memory (``beam_pipeline.generate``), and the same export with
the partner's words (``Purchase``/``Present``/``Redemption`` in mixed case), then
times ``ParseLineFn.process`` on every line with ``time.process_time``, the cases
interleaved run by run so that the machine's load moves them alike. With
``--baseline-rev``, ``transforms/parse.py`` of that git revision is timed on the
default export too (the parser before a change). Prints a table of medians and
ratios, saves every run to ``benchmarks/results/`` and regenerates its table in
``docs/performance.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from beam_pipeline import generate  # noqa: E402
from benchmarks.results import DOC, Recorder, render  # noqa: E402
from lantern.partner import InputConfig  # noqa: E402
from transforms import parse  # noqa: E402

AS_OF = dt.date(2026, 11, 24)
PARTNER_WORDS = {"buy": ["Purchase", "P", "Kauf", "Achat"], "gift": ["Present", "Gift", "G", "Cadeau"],
                 "redeem": ["Redemption", "R", "Einlösung", "Rachat"]}
IN_EXPORT = {"buy": "PURCHASE", "gift": "Present", "redeem": "redemption"}  # mixed case, as partners write


def export_lines(rows: int, words: dict[str, str] | None) -> list[bytes]:
    text = io.StringIO()
    generate.write(text, rows, seed=7)
    lines = text.getvalue().splitlines()
    if words:
        out = [lines[0]]
        for line in lines[1:]:
            fields = line.split(",")
            if len(fields) == 5:
                fields[2] = words.get(fields[2], fields[2])
            out.append(",".join(fields))
        lines = out
    return [line.encode() for line in lines]


def load_parse_at(rev: str):
    """transforms/parse.py of a git revision, imported as its own module (it imports the current siblings)."""
    source = subprocess.run(["git", "show", f"{rev}:transforms/parse.py"], cwd=ROOT, check=True,
                            capture_output=True).stdout
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "parse_baseline.py")
    Path(path).write_bytes(source)
    spec = importlib.util.spec_from_file_location("parse_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def us_per_line(fn, lines: list[bytes]) -> float:
    fn.start_bundle()
    t0 = time.process_time()
    for line in lines:
        for _ in fn.process(("export", line)):
            pass
    elapsed = time.process_time() - t0
    fn.finish_bundle()
    return elapsed / len(lines) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline-rev", help="also time transforms/parse.py of this git revision")
    args = parser.parse_args(argv)

    plain = export_lines(args.rows, None)
    vocab = InputConfig.model_validate({"type_values": PARTNER_WORDS}).type_codes()
    worded = export_lines(args.rows, IN_EXPORT)
    layout = parse.FileLayout(plain[0], 5, 0, 1, 2, 3, 4)
    cases = {
        "default words": (lambda: parse.ParseLineFn({"export": layout}, ",", ["iso"], AS_OF), plain),
        f"partner vocabulary ({len(vocab)} spellings)": (
            lambda: parse.ParseLineFn({"export": layout}, ",", ["iso"], AS_OF, type_codes=vocab), worded),
    }
    if args.baseline_rev:
        old = load_parse_at(args.baseline_rev)
        old_layout = old.FileLayout(plain[0], 5, 0, 1, 2, 3, 4)
        cases[f"default words, parse.py at {args.baseline_rev}"] = (
            lambda: old.ParseLineFn({"export": old_layout}, ",", ["iso"], AS_OF), plain)
    timings: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, (make, lines) in cases.items():
            timings[name].append(us_per_line(make(), lines))

    recorder = Recorder("vocabulary_cpu", argv if argv is not None else sys.argv[1:],
                        columns=["case", "lines", "runs", "cpu_us_per_line", "ratio"])
    first = statistics.median(next(iter(timings.values())))
    print(f"| ParseLineFn.process ({len(plain):,} lines, median of {args.runs}) | CPU us/line | ratio |")
    print("| --- | ---: | ---: |")
    for name, runs in timings.items():
        median = statistics.median(runs)
        print(f"| {name} | {median:.2f} | {median / first:.3f} |")
        recorder.row(case=name, lines=len(plain), runs=args.runs, cpu_us_per_line=median,
                     ratio=round(median / first, 3), every_run_us=runs)
    print(f"load average: {os.getloadavg()[0]:.2f}")
    path = recorder.save()
    DOC.write_text(render(DOC.read_text()))
    print(f"# saved {path.relative_to(ROOT)}; regenerated {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
