"""The image's build context: every file the Dockerfile copies reaches the Docker daemon.

The context is computed with docker-py's ``exclude_paths`` (Docker's own .dockerignore rules,
as ``docker build`` applies them) over the files a fresh clone holds, so a pattern that drops a
package the Dockerfile copies fails here instead of in Cloud Build's ``build`` step.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths

ROOT = Path(__file__).resolve().parent.parent


def dockerignore_patterns(text: str) -> list[str]:
    """The patterns as docker-py's ``build`` reads them: stripped lines, no blanks or comments."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def copy_sources(dockerfile: str) -> list[str]:
    """Sources of every COPY/ADD from the build context (not ``--from=`` another stage)."""
    text = re.sub(r"\\\n", " ", dockerfile)
    sources = []
    for line in text.splitlines():
        words = shlex.split(line.split("#", 1)[0]) if line.strip() else []
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = words[1:]
        if any(a.startswith("--from=") for a in args):
            continue
        args = [a for a in args if not a.startswith("--")]
        sources.extend(args[:-1])  # the last one is the destination
    return sources


def tracked_files() -> list[str]:
    """What a fresh clone holds (and what Cloud Build uploads): the files git tracks."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout")
    dest = tmp_path_factory.mktemp("clone")
    for rel in tracked_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    # What a developer's checkout also holds: never part of the image.
    (dest / "beam_pipeline" / "__pycache__").mkdir(exist_ok=True)
    (dest / "beam_pipeline" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"")
    return dest


def build_context(root: Path) -> set[str]:
    patterns = dockerignore_patterns((root / ".dockerignore").read_text())
    return {p.replace("\\", "/") for p in exclude_paths(str(root), patterns, dockerfile="Dockerfile")}


def test_copy_sources_are_parsed_from_the_dockerfile():
    sources = copy_sources((ROOT / "Dockerfile").read_text())
    assert {"setup.py", "main.py", "lantern/", "beam_pipeline/", "transforms/", "partner_options/"} <= set(sources)
    assert copy_sources("COPY --from=launcher /opt/x /opt/x\nCOPY --chown=1:1 a.py b/ /dst/\n") == ["a.py", "b/"]


def test_every_copy_source_is_in_the_build_context(clone):
    context = build_context(clone)
    missing = []
    for source in copy_sources((clone / "Dockerfile").read_text()):
        path = source.rstrip("/")
        if (clone / path).is_dir():
            files = [p.relative_to(clone).as_posix() for p in (clone / path).rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts]
            assert files, f"COPY {source}: nothing in the clone"
            missing += [f for f in files if f not in context]
        elif path not in context:
            missing.append(path)
    assert not missing, f".dockerignore drops files the Dockerfile copies: {sorted(missing)[:10]}"


def test_every_package_setup_py_installs_is_copied():
    """``pip install -e .`` in the image finds every package setup.py names only if it was copied."""
    sources = {s.rstrip("/") for s in copy_sources((ROOT / "Dockerfile").read_text())}
    setup = (ROOT / "setup.py").read_text()
    packages = set(re.findall(r'"(\w+)"', setup.split("include=", 1)[1].split("]", 1)[0]))
    assert packages and packages <= sources, f"not copied into the image: {sorted(packages - sources)}"


def test_the_context_holds_no_caches_tests_or_local_outputs(clone):
    context = build_context(clone)
    assert not [p for p in context if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in context if p.startswith(("tests/", ".venv", "out/", "benchmarks/", ".git/"))]
    assert "member_data.csv" not in context


def test_a_dockerignore_that_drops_a_package_is_caught(clone, tmp_path):
    broken = tmp_path / "ctx"
    shutil.copytree(clone, broken)
    text = (broken / ".dockerignore").read_text().replace("!lantern/\n", "")
    (broken / ".dockerignore").write_text(text)
    context = build_context(broken)
    assert "lantern/partner.py" not in context
    assert "beam_pipeline/cli.py" in context
