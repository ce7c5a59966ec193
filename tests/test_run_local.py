"""scripts/run_local.sh passes the pipeline exactly one set of inputs: INPUT, or the --input given.

The script is run with a stand-in ``python`` on PATH that records its arguments, so
the test checks the command line the demo builds without a server or a run.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_PYTHON = """#!/usr/bin/env bash
case "$1 $2" in
  "-c import socket"*) echo 4242 ;;
  "-m uvicorn") exec sleep 30 ;;
  "-m beam_pipeline") shift 2; printf '%s\\n' "$@" > "$CALLS/pipeline" ;;
  "-m beam_pipeline.report") echo "$3" > "$CALLS/report" ;;
esac
exit 0
"""


def _run(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[int, list[str], str]:
    bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
    bin_dir.mkdir(exist_ok=True)
    venv.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    (venv / ".venv-installed-report").touch()  # newer than setup.py: venv.sh installs nothing
    os.utime(venv / ".venv-installed-report", (2**33, 2**33))
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "VIRTUAL_ENV": str(venv), "CALLS": str(tmp_path),
                "TMPDIR": str(tmp_path), **(env or {})}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_local.sh"), *args], env=full_env,
                          capture_output=True, text=True, timeout=60)
    calls = tmp_path / "pipeline"
    report = tmp_path / "report"
    return (proc.returncode, calls.read_text().splitlines() if calls.exists() else [],
            report.read_text().strip() if report.exists() else "")


def _inputs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--input"]


def test_default_input_is_the_bundled_export(tmp_path):
    code, argv, report = _run(tmp_path)
    assert code == 0 and _inputs(argv) == ["member_data.csv"] and report == "out/local"


def test_input_variable_replaces_the_default(tmp_path):
    code, argv, _ = _run(tmp_path, env={"INPUT": "day2.csv"})
    assert code == 0 and _inputs(argv) == ["day2.csv"]


@pytest.mark.parametrize("given", [["--input", "day2.csv"], ["--input=day2.csv"]])
def test_a_passed_input_replaces_never_adds(tmp_path, given):
    code, argv, report = _run(tmp_path, *given, "--as-of", "2026-11-24", "--output", str(tmp_path / "o"),
                              env={"INPUT": "ignored.csv"})
    assert code == 0 and _inputs(argv) == ["day2.csv"]
    assert "member_data.csv" not in argv and "ignored.csv" not in argv
    assert argv[-4:] == ["--as-of", "2026-11-24", "--output", str(tmp_path / "o")]
    assert report == str(tmp_path / "o")  # the report follows the --output given


def test_several_passed_inputs_are_all_used_once(tmp_path):
    _, argv, _ = _run(tmp_path, "--input", "a.csv", "--input", "b.csv")
    assert _inputs(argv) == ["a.csv", "b.csv"]
