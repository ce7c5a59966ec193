"""Shared fixtures: a real uvicorn server on a free loopback port, and a local Beam runner."""
from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from apache_beam.testing.test_pipeline import TestPipeline

# Beam's TestPipeline is a pipeline, not a test class: tests import it by that name.
TestPipeline.__test__ = False

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def uvicorn_server(app: str = "app:app", env: dict | None = None, workers: int = 1):
    """Start ``uvicorn APP`` on a free port, wait for ``GET /``, yield its base URL, stop it."""
    with uvicorn_process(app, env, workers) as (url, _):
        yield url


@contextmanager
def uvicorn_process(app: str = "app:app", env: dict | None = None, workers: int = 1,
                    access_log: Path | None = None):
    """Like ``uvicorn_server`` but yields (URL, process), for tests that kill the server.

    With ``access_log``, uvicorn's access lines (one per answered request) go to that file.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "info" if access_log else "warning"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    stdout = open(access_log, "wb") if access_log else subprocess.DEVNULL  # noqa: SIM115 - closed after the server stops
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=stdout, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=1)  # noqa: S310 - our own http://127.0.0.1 URL
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"uvicorn {app} exited: {proc.stderr.read().decode()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn {app} did not answer on {url}") from None
                time.sleep(0.05)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        if access_log:
            stdout.close()


def write_partner(directory: Path, base_url: str, endpoints: dict | None = None, **calls) -> Path:
    """A partner file for fast reliability tests: default columns, short timeouts and backoffs.

    ``calls`` override the call policy (e.g. ``retries=0``), ``endpoints`` the endpoint
    settings (e.g. batch routes); returns the file's path.
    """
    policy = {"connect_timeout_s": 1.0, "read_timeout_s": 2.0, "retries": 3, "backoff_s": 0.01,
              "backoff_max_s": 0.05, "backoff_jitter_s": 0.01, "concurrency": 4,
              "retry_after_max_s": 1, **calls}
    path = Path(directory) / "fast_partner.yaml"
    endpoints = {"base_url": base_url, **(endpoints or {})}
    path.write_text(json.dumps({"name": "fast", "endpoints": endpoints, "calls": policy}))
    return path


@pytest.fixture(scope="session")
def server_url():
    with uvicorn_server() as url:
        yield url


@pytest.fixture(scope="session")
def dataflow_extra():
    """Skip without the ``dataflow`` extra, unless LANTERN_REQUIRE_DATAFLOW (set by scripts/test.sh) demands it."""
    try:
        for module in ("apache_beam.runners.dataflow.internal.apiclient",  # apitools: only with [gcp]
                       "google.cloud.storage", "google.api_core.exceptions", "google.cloud.secretmanager"):
            importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("LANTERN_REQUIRE_DATAFLOW"):
            raise
        pytest.skip(f"needs the dataflow extra (pip install -e '.[dataflow]'): {exc}")


@pytest.fixture(scope="session")
def export(tmp_path_factory) -> Path:
    """300 generated rows: 60 members, 6 of them without transactions, a few dead letters."""
    from beam_pipeline import generate

    path = tmp_path_factory.mktemp("input") / "export.csv"
    with open(path, "w", encoding="utf-8", newline="") as out:
        generate.write(out, 300, seed=5)
    return path


@pytest.fixture
def local_runner():
    from beam_pipeline.runners import local_runner as make

    return make()


@pytest.fixture(scope="session")
def small_export(tmp_path_factory) -> Path:
    """300 generated rows and two bad ones: the export of ``small_run``."""
    from beam_pipeline import generate

    export = tmp_path_factory.mktemp("small_export") / "export.csv"
    with open(export, "w", encoding="utf-8", newline="") as out:
        generate.write(out, n_rows=300, seed=11)
        out.write(",2026-01-02 03:04:05,buy,10,1.5\n")  # no member id
        out.write("M-BAD,yesterday,buy,10,1.5\n")  # bad timestamp
    return export


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, server_url, small_export):
    """One small end-to-end run of ``small_export`` against the reference service, on the local runner:
    (exit code, run summary, output dir)."""
    from beam_pipeline import cli

    output = tmp_path_factory.mktemp("small_run") / "out"
    code, summary = cli.run(["--input", str(small_export), "--output", str(output), "--as-of", "2026-11-24",
                             "--endpoint-url", server_url, "--heartbeat-seconds", "0"])
    return code, summary, output
