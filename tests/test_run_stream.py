"""scripts/run_stream.sh: the streaming demo starts the reference service itself, replays an export
as a stream, publishes the run, and stops the service (no server left behind, exit code kept)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pipeline import generate

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    venv = Path(sys.prefix)
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
           "EXTRAS": "test,dataflow", "INPUT": str(tmp_path / "export.csv"), "OUTPUT": str(tmp_path / "out"),
           "TMPDIR": str(tmp_path)}
    if not (venv / ".venv-installed-test,dataflow").exists():  # the demo would install: not in a test
        pytest.skip("needs the environment scripts/test.sh makes")
    return subprocess.run(["bash", str(ROOT / "scripts" / "run_stream.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=240)


def _closed(url: str) -> bool:
    host, port = re.search(r"http://([\d.]+):(\d+)", url).groups()
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def test_demo_replays_publishes_and_stops_its_server(tmp_path):
    lines = list(generate.rows(40, seed=4, rows_per_member=3))
    (tmp_path / "export.csv").write_text(",".join(generate.HEADER) + "\n" + "\n".join(lines) + "\n")
    proc = _run(tmp_path, "--rate", "50", "--debounce-seconds", "1", "--log-level", "WARNING")
    assert proc.returncode == 0, proc.stderr[-2000:]
    url = re.search(r"reference ML service on (\S+)", proc.stdout).group(1)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["streaming"] is True and run["accounting"]["updates_ok"] > 0
    assert _closed(url)

