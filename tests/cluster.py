"""A cluster on loopback for tests: Beam's portable job server and an external worker pool.

The job server (``local_job_service_main``) accepts jobs over the Beam Job API
and runs each one in its own process with the FnApiRunner; the worker pool
(``worker_pool_main``) starts the SDK workers that job asks for, as separate
``python`` processes speaking the Fn API. Together they stand in for a cluster:
the launcher only submits, and can exit while the job runs.

What the pieces need, found by trying:

- The pool starts workers as plain ``python`` from ``PATH`` and ignores staged
  packages, so this interpreter's bin folder goes first on ``PATH`` (the project
  is installed in that environment).
- The pool pipes each worker's stdout and never reads it: a worker that prints
  megabytes hangs. Nothing in the product prints on a worker.
- Beam leaves temp folders behind: both processes get their own ``TMPDIR``.
- Both stop on SIGTERM (SIGINT is ignored by background processes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port

START_TIMEOUT_S = 60


@dataclasses.dataclass
class Cluster:
    """Where to submit (``job_endpoint``) and where the workers come from (``worker_pool``)."""

    job_endpoint: str
    worker_pool: str
    job_server: subprocess.Popen
    pool: subprocess.Popen
    logs: Path

    def beam_args(self) -> list[str]:
        """The pipeline options that run a job on this cluster."""
        return ["--runner=PortableRunner", f"--job_endpoint={self.job_endpoint}",
                "--environment_type=EXTERNAL", f"--environment_config={self.worker_pool}"]

    def log_tail(self, chars: int = 4000) -> str:
        """The end of both processes' logs, for a failing test's message."""
        parts = []
        for name in ("job_server.log", "worker_pool.log"):
            path = self.logs / name
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {name}\n{text[-chars:]}")
        return "\n".join(parts)

    def kill(self) -> None:
        """SIGKILL both, as a machine that dies would: no clean-up runs."""
        for proc in (self.job_server, self.pool):
            _signal_group(proc, signal.SIGKILL)
        for proc in (self.job_server, self.pool):
            proc.wait()


def cluster_env(tmpdir: Path) -> dict[str, str]:
    """This interpreter's environment first on PATH, and a private TMPDIR."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TMPDIR"] = str(tmpdir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def portable_cluster(folder: Path):
    """Start a job server and a worker pool under ``folder``; yield a :class:`Cluster`; stop both."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp"
    tmp.mkdir(exist_ok=True)
    env = cluster_env(tmp)
    port_file = folder / "job_server.port"
    pool_port = free_port()
    procs: list[subprocess.Popen] = []
    try:
        with open(folder / "job_server.log", "wb") as server_log, open(folder / "worker_pool.log", "wb") as pool_log:
            # Each in its own process group: SIGTERM/SIGKILL reach the workers the pool started too.
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                 "--port", "0", "--port_file", str(port_file), "--staging_dir", str(folder / "staging")],
                env=env, stdout=server_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                 "--service_port", str(pool_port)],
                env=env, stdout=pool_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True))
        job_port = _wait_for_port_file(port_file, procs, folder)
        _wait_for_listening(pool_port, procs, folder)
        yield Cluster(f"localhost:{job_port}", f"localhost:{pool_port}", procs[0], procs[1], folder)
    finally:
        for proc in procs:
            _stop(proc)


def _wait_for_port_file(port_file: Path, procs: list[subprocess.Popen], folder: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_file.exists():
        _check_alive(procs, folder)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the job server wrote no port file in {START_TIMEOUT_S}s")
        time.sleep(0.05)
    return int(port_file.read_text())


def _wait_for_listening(port: int, procs: list[subprocess.Popen], folder: Path) -> None:
    import socket

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        _check_alive(procs, folder)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker pool did not listen on port {port} in {START_TIMEOUT_S}s")
        time.sleep(0.05)


def _check_alive(procs: list[subprocess.Popen], folder: Path) -> None:
    for proc in procs:
        if proc.poll() is not None:
            logs = "".join(p.read_text(errors="replace")[-2000:] for p in folder.glob("*.log"))
            raise RuntimeError(f"{proc.args[2]} exited with {proc.returncode}: {logs}")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process and the workers it started; SIGKILL what is still there after 10 s."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    _signal_group(proc, signal.SIGKILL)  # workers left behind by a process that exited on its own
