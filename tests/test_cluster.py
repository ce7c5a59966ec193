"""The product on a cluster: Beam's portable job server and an external worker pool on loopback.

The jobs run in other processes than their launcher (``tests/cluster.py``), over
the Fn API, as on Dataflow, and nobody waits on them: each is launched with
``--detach`` and the launch returns once the job is submitted (the last test's
launcher is a subprocess, as a scheduler would start it, and exits while its
job runs). The tests read only what a scheduler can see: the output folder, the
exit codes and ``python -m beam_pipeline wait``.
"""
from __future__ import annotations

import contextlib
import io
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


@contextlib.contextmanager
def _removed(path: Path):
    """Deletes ``path`` on the way out, whatever happened."""
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def launch(cluster, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m beam_pipeline ARGS`` on the cluster, as a scheduler would start it."""
    cmd = [sys.executable, "-m", "beam_pipeline", "--as-of", AS_OF, "--heartbeat-seconds", "0",
           "--log-level", "WARNING", *args, *cluster.beam_args()]
    return subprocess.Popen(cmd, cwd=ROOT, env={**cluster_env(Path(tempfile.gettempdir())), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen, cluster, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err + ("" if proc.returncode in (0, 2, 3, 4) else cluster.log_tail())


def waited(output: Path, capsys, *args: str) -> tuple[int, str, str]:
    """``python -m beam_pipeline wait OUTPUT``: exit code, stdout, stderr."""
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
def detached(tmp_path_factory, cluster, server_url, small_export):
    """The module's runs, each launched with --detach (the cluster runs them side by side): name -> output."""
    base = tmp_path_factory.mktemp("detached")
    (base / "tmp").mkdir()
    # The launcher has the partner's key; the cluster's workers do not: that job fails where it calls.
    keyed = base / "keyed.yaml"
    keyed.write_text(json.dumps({"name": "keyed", "endpoints": {"base_url": server_url},
                                 "auth": {"header": "X-Partner-Key", "env": "LANTERN_TEST_KEY"}}))
    late = small_export.parent / "late.csv"
    runs = {
        "generated": ["--input", str(small_export.parent / "*.csv"), "--endpoint-url", server_url],
        "bundled": ["--input", str(ROOT / "member_data.csv"), "--endpoint-url", server_url],
        "held_back": ["--input", str(small_export), "--endpoint-url", server_url, "--max-dead-letter-ratio", "0.001"],
        "failing": ["--input", str(small_export), "--partner-config", str(keyed)],
    }
    launched = {}
    with _removed(late):
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
            patch.setenv("TMPDIR", str(base / "tmp"))
            patch.setattr(tempfile, "tempdir", None)
            patch.setenv("LANTERN_TEST_KEY", "launcher-only")
            for name, args in runs.items():  # in this process: the last test launches as a scheduler would
                code, record = cli.run(["--as-of", AS_OF, "--heartbeat-seconds", "0", "--log-level", "WARNING",
                                        *args, "--output", str(base / name), "--detach", *cluster.beam_args()])
                assert code == 0 and record["job_id"], record
                launched[name] = base / name
                if name == "generated":
                    # A file that lands in the input folder after the launch is not the run's input.
                    late.write_text(small_export.read_text(encoding="utf-8").replace("M-BAD", "M-LATE"),
                                    encoding="utf-8")
        yield launched


def test_detached_runs_equal_the_local_runners_digit_for_digit(detached, server_url, small_run, tmp_path, capsys):
    code, summary = cli.run(["--input", str(ROOT / "member_data.csv"), "--output", str(tmp_path / "bundled"),
                             "--as-of", AS_OF, "--endpoint-url", server_url, "--heartbeat-seconds", "0",
                             "--log-level", "WARNING"])
    assert code == 0, summary
    local = {"bundled": tmp_path / "bundled", "generated": small_run[2]}  # small_run read small_export alone
    for name, local_output in local.items():
        output = detached[name]
        code, stdout, stderr = waited(output, capsys)
        assert (code, stderr) == (0, "")
        assert stdout.startswith(f"outputs: {output} (results/")
        same_outputs(output, local_output)
        assert sorted(p.name for p in output.iterdir()) == ["dead_letter", "results", "run.json", "state"]
    assert json.loads((detached["generated"] / "run.json").read_text())["accounting"]["members_ok"] > 0


def test_a_detached_run_past_the_dead_letter_limit_ends_wait_with_exit_4_and_nothing_published(detached, capsys):
    output = detached["held_back"]
    code, stdout, stderr = waited(output, capsys)
    assert code == 4
    assert "NOT published" in stdout
    assert stderr.startswith("error: ") and "above the limit 0.001" in stderr and stderr.count("\n") == 1
    [staging] = output.iterdir()  # nothing in the output but the held-back staging folder
    assert staging.name.startswith("_staging-")
    held = json.loads((staging / "run.json").read_text())
    assert (held["published"], held["exit_code"]) == (False, 4)


def test_a_detached_job_that_fails_ends_wait_with_exit_1_and_the_runners_error(detached, capsys, monkeypatch):
    output = detached["failing"]  # submitted, exit 0: the job fails later, where its workers call
    monkeypatch.setattr(wait, "SETTLE_S", 1.0)
    code, stdout, stderr = waited(output, capsys)
    assert (code, stdout) == (1, "")
    run_id = run_folder.runs(str(output))[-1].run_id
    assert stderr.startswith(f"error: run {run_id}: job ")
    assert " ended FAILED without finishing the run: " in stderr
    assert stderr.endswith("lantern.errors.ConfigError: partner keyed: environment variable LANTERN_TEST_KEY "
                           "(auth header X-Partner-Key) is not set, and no --auth-secret names a Secret Manager "
                           "version [while running 'DecideOffers/CallEndpoints/Call']\n")
    assert stderr.count("\n") == 1
    assert not (output / "run.json").exists() and not (output / "results").exists()


def test_a_detached_retry_of_a_detached_run_carries_it_over(cluster, detached, server_url, tmp_path, capsys):
    previous = detached["generated"]
    assert waited(previous, capsys)[0] == 0
    out = tmp_path / "retry"
    code, record = cli.run(["--retry-failed", str(previous), "--output", str(out), "--endpoint-url", server_url,
                            "--heartbeat-seconds", "0", "--log-level", "WARNING", "--detach", *cluster.beam_args()])
    assert code == 0 and record["job_id"] and record["detached"] is True
    code, stdout, stderr = waited(out, capsys)
    assert (code, stderr) == (0, "")
    assert "nothing to retry (no FAILED member)" in stdout
    assert table(out, "results", ["MEMBER_ID"]) == table(previous, "results", ["MEMBER_ID"])
    assert json.loads((out / "run.json").read_text())["retry_of"] == json.loads((previous / "run.json").read_text())["run_id"]


def test_a_detached_launch_ends_before_its_job_a_second_launch_is_refused_and_a_killed_job_leaves_nothing_complete(
        cluster, export, tmp_path, capsys, monkeypatch):
    """The module's last test: the cluster dies with the job."""
    out = tmp_path / "out"
    # Every call takes 300 ms: the job is still calling when the launcher has long exited, and when its cluster dies.
    with uvicorn_server(env={"FAULT_LATENCY_MS": "300"}) as slow:
        code, printed, err = finished(launch(cluster, "--input", str(export), "--output", str(out),
                                             "--endpoint-url", slow, "--detach"), cluster)
        assert code == 0, err
        # The launcher has exited; its job has not ended, and says where the run will appear.
        record = from_text(next(out.glob("_staging-*/job.json")).read_text())
        staging = out / f"_staging-{record.run_id}"
        assert not jobs.state_of(record).terminal
        assert printed.splitlines() == [
            f"submitted: run {record.run_id}, job {record.job_id} on PortableRunner at {cluster.job_endpoint}",
            f"outputs: {out} once the run is published (run.json last); a run held back stays in {staging}",
            f"wait for it: python -m beam_pipeline wait {out}",
        ]
        assert (record.detached, record.job_endpoint) == (True, cluster.job_endpoint)

        # A second launch into the output of the pending run is refused, --overwrite or not.
        code = cli.main(["--input", str(export), "--output", str(out), "--overwrite", "--features-only", "--detach",
                         *cluster.beam_args()])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1
        assert err.startswith(f"error: output {out} has run {record.run_id} pending (job {record.job_id} on "
                              f"PortableRunner at {cluster.job_endpoint}: ")

        deadline = time.monotonic() + 60
        while jobs.state_of(record).state != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # the worker is starting, or calling
        assert not jobs.state_of(record).terminal
        cluster.kill()
    assert sorted(p.name for p in out.iterdir()) == [staging.name]
    assert not (staging / "run.json").exists()

    monkeypatch.setattr(wait, "UNREACHABLE_S", 1.0)
    monkeypatch.setattr(wait, "ASK_EVERY_S", 0.5)
    code, stdout, stderr = waited(out, capsys)
    assert (code, stdout) == (1, "")
    assert stderr.startswith(f"error: run {record.run_id}: the job service at {cluster.job_endpoint} does not "
                             "answer (UNAVAILABLE) (for ")
    assert stderr.count("\n") == 1
    # The job cannot be asked: a new launch into the folder is refused, and told what to delete if it is gone.
    code = cli.main(["--input", str(export), "--output", str(out), "--features-only"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.rstrip().endswith(f"if that job is gone, delete {staging} and launch again")
