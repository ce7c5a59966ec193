"""The README's code map, generated from each module's docstring (first sentence).

    python scripts/codemap.py          # print the map; tests/test_docs.py checks README.md holds it

A module's docstring is where it says what it is for, so the map cannot drift
from the code: a new module without a docstring, or a renamed one, fails the test.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the map covers, in the order the data flows through the product.
PACKAGES = ("beam_pipeline", "transforms", "lantern")
TOP_LEVEL = ("app.py", "prediction.py", "faults.py", "main.py")
SKIP = {"__init__.py", "__main__.py"}


def summary(path: Path) -> str:
    """The docstring's first sentence, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.split("\n\n", 1)[0].split())
    if not first:
        raise SystemExit(f"{path.relative_to(ROOT)} has no module docstring: say what it is for")
    end = first.find(". ")
    return first if end < 0 else first[: end + 1]


def modules() -> list[Path]:
    found = []
    for package in PACKAGES:
        folder = ROOT / package
        if folder.is_dir():
            found += sorted(p for p in folder.rglob("*.py") if p.name not in SKIP)
    found += [ROOT / name for name in TOP_LEVEL if (ROOT / name).exists()]
    return found


def codemap() -> str:
    lines = []
    for path in modules():
        rel = path.relative_to(ROOT).as_posix()
        lines.append(f"- [`{rel}`]({rel}): {summary(path)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(codemap())
