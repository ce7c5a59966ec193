"""The product on a cluster: Beam's portable job server and an external worker pool on loopback.

The job runs in other processes than its launcher (``tests/cluster.py``), over
the Fn API, as on Dataflow: the launcher is a subprocess, as a scheduler's
would be, and the tests read only what a scheduler can see: the output folder,
the exit codes and ``python -m beam_pipeline wait``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from beam_pipeline import cli, jobs, run_folder, wait
from lantern.job_record import from_text
from tests.cluster import cluster_env, portable_cluster
from tests.conftest import ROOT, uvicorn_server
from tests.test_distributed import table

AS_OF = "2026-11-24"
DEAD_KEY = ["SOURCE", "RAW_LINE", "REASON"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with portable_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(autouse=True)
def own_tmpdir(tmp_path, monkeypatch):
    """Beam leaves temp folders behind: each test's go into its own."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)


def launch(cluster, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m beam_pipeline ARGS`` on the cluster, as a scheduler would start it."""
    cmd = [sys.executable, "-m", "beam_pipeline", "--as-of", AS_OF, "--heartbeat-seconds", "0",
           "--log-level", "WARNING", *args, *cluster.beam_args()]
    return subprocess.Popen(cmd, cwd=ROOT, env={**cluster_env(Path(tempfile.gettempdir())), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen, cluster, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err + ("" if proc.returncode in (0, 2, 3, 4) else cluster.log_tail())


def job_record(output: Path, timeout: float = 60):
    """The pending run's job record, once the runner has accepted the job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for staging in output.glob("_staging-*"):
            path = staging / "job.json"
            if path.exists():
                record = from_text(path.read_text())
                if record.job_id:
                    return record
        time.sleep(0.1)
    raise AssertionError(f"no job record with a job id in {output} after {timeout}s")


def waited(output: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["wait", str(output), "--poll-seconds", "0.2", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def same_outputs(a: Path, b: Path) -> None:
    """Every result and dead-letter row, digit for digit (wall-clock latencies aside), and the accounting."""
    assert table(a, "results", ["MEMBER_ID"]) == table(b, "results", ["MEMBER_ID"])
    assert table(a, "dead_letter", DEAD_KEY) == table(b, "dead_letter", DEAD_KEY)
    run_a, run_b = (json.loads((p / "run.json").read_text()) for p in (a, b))
    for key in ("accounting", "offers", "dead_letter_reasons"):
        assert run_a[key] == run_b[key], key


@pytest.fixture(scope="module")
def launched(tmp_path_factory, cluster, server_url, small_export):
    """The module's jobs, all launched at once (the cluster runs them side by side): name -> (launcher, output)."""
    base = tmp_path_factory.mktemp("runs")
    (base / "tmp").mkdir()
    # The launcher has the partner's key; the cluster's workers do not: that job fails where it calls.
    keyed = base / "keyed.yaml"
    keyed.write_text(json.dumps({"name": "keyed", "endpoints": {"base_url": server_url},
                                 "auth": {"header": "X-Partner-Key", "env": "LANTERN_TEST_KEY"}}))
    jobs_to_run = {
        "bundled": ["--input", str(ROOT / "member_data.csv"), "--endpoint-url", server_url],
        "generated": ["--input", str(small_export), "--endpoint-url", server_url],
        "failing": ["--input", str(small_export), "--partner-config", str(keyed)],
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(base / "tmp"))
        patch.setattr(tempfile, "tempdir", None)
        procs = {name: (launch(cluster, *args, "--output", str(base / name), env={"LANTERN_TEST_KEY": "launcher-only"}),
                        base / name)
                 for name, args in jobs_to_run.items()}
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_runs_on_the_cluster_equal_the_local_runners_digit_for_digit_and_a_pending_output_is_refused(
        cluster, launched, server_url, small_export, small_run, tmp_path, capsys):
    # While its job runs, the output is taken: a second launch is refused in one line, --overwrite or not.
    pending = launched["generated"][1]
    record = job_record(pending)
    assert jobs.state_of(record).state in ("STARTING", "RUNNING")
    code = cli.main(["--input", str(small_export), "--output", str(pending), "--overwrite", "--features-only"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: output {pending} has run {record.run_id} pending (job {record.job_id} on "
                             f"PortableRunner at {cluster.job_endpoint}: ")

    code, summary = cli.run(["--input", str(ROOT / "member_data.csv"), "--output", str(tmp_path / "bundled"),
                             "--as-of", AS_OF, "--endpoint-url", server_url, "--heartbeat-seconds", "0",
                             "--log-level", "WARNING"])
    assert code == 0, summary
    local = {"bundled": tmp_path / "bundled", "generated": small_run[2]}
    for name, local_output in local.items():
        proc, output = launched[name]
        code, out, err = finished(proc, cluster)
        assert code == 0, err
        same_outputs(output, local_output)
        assert waited(output, capsys) == (0, out, "")
    assert json.loads((pending / "run.json").read_text())["accounting"]["members_ok"] > 0


def test_a_job_that_fails_on_the_cluster_ends_wait_with_exit_1_and_the_runners_error(cluster, launched, capsys):
    proc, out = launched["failing"]
    code, _, _ = finished(proc, cluster)
    assert code == 1
    assert not (out / "run.json").exists() and not (out / "results").exists()
    code, stdout, stderr = waited(out, capsys)
    assert (code, stdout) == (1, "")
    assert stderr.startswith(f"error: run {run_folder.runs(str(out))[-1].run_id}: job ")
    assert stderr.endswith("lantern.errors.ConfigError: partner keyed: environment variable LANTERN_TEST_KEY "
                           "(auth header X-Partner-Key) is not set, and no --auth-secret names a Secret Manager "
                           "version [while running 'DecideOffers/CallEndpoints/Call']\n")
    assert stderr.count("\n") == 1


def test_a_job_killed_mid_run_leaves_nothing_that_looks_complete(cluster, export, tmp_path, capsys, monkeypatch):
    """The module's last test: the cluster dies with the job."""
    out = tmp_path / "out"
    # Every call takes 100 ms: the job is still calling when its cluster dies.
    with uvicorn_server(env={"FAULT_LATENCY_MS": "100"}) as slow:
        proc = launch(cluster, "--input", str(export), "--output", str(out), "--endpoint-url", slow)
        record = job_record(out)
        deadline = time.monotonic() + 60
        while jobs.state_of(record).state != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # the worker is starting, or calling
        assert not jobs.state_of(record).terminal
        cluster.kill()
        code, _, _ = finished(proc, cluster)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == [f"_staging-{record.run_id}"]
    assert not (out / f"_staging-{record.run_id}" / "run.json").exists()

    monkeypatch.setattr(wait, "UNREACHABLE_S", 1.0)
    code, stdout, stderr = waited(out, capsys)
    assert (code, stdout) == (1, "")
    assert stderr.startswith(f"error: run {record.run_id}: ")
