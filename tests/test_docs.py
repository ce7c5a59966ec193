"""The docs stay true to the tree: generated parts in sync, every relative link resolves."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for heading in re.findall(r"^#+\s+(.*)$", _FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_readme_code_map_is_generated_from_the_tree():
    codemap = _load(ROOT / "scripts" / "codemap.py").codemap()
    readme = (ROOT / "README.md").read_text()
    assert f"<!-- code map -->\n{codemap}<!-- end code map -->" in readme, \
        "run `python scripts/codemap.py` and paste its output into README.md"


def test_performance_tables_are_generated_from_saved_results():
    results = _load(ROOT / "benchmarks" / "results.py")
    for doc in results.DOCS:
        text = doc.read_text()
        assert results.render(text) == text, f"run `python benchmarks/results.py` ({doc.name})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_anchors_resolve(page):
    text = page.read_text()
    broken = []
    for target in _LINK.findall(_FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_docs_point_nowhere_outside_the_repository():
    for page in PAGES:
        assert "SPEC.md" not in page.read_text(), f"{page.name} cites a file outside the repository"
