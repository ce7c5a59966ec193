"""``python -m beam_pipeline wait OUTPUT``: the folder says how a run ended; while it has not, the runner is asked.

The folder states are the contract ``docs/outputs.md`` describes (published
``run.json``, a held-back or failed run's staging ``run.json``, a pending run's
``job.json``); the runner is a fake here (``tests/test_cluster.py`` asks a real
job service).
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from beam_pipeline import cli, jobs, run_folder, wait
from lantern.errors import ConfigError
from lantern.job_record import JobRecord, Launcher, to_text

RUN_1, RUN_2 = "20261124T010000Z-aaaaaaaa", "20261124T020000Z-bbbbbbbb"


def summary(run_id: str, code: int, **extra) -> dict:
    """A run.json with what the console summary reads."""
    return {"run_id": run_id, "exit_code": code, "output": "/out", "wall_seconds": 1.0, "offers": {"OFFER_1": 2},
            "accounting": {"rows_read": 3, "transactions": 3, "member_only_rows": 0, "dead_letter_rows": 0,
                           "members": 2, "members_ok": 2, "members_no_transactions": 0, "members_failed": 0},
            **extra}


def publish(out: Path, run_id: str, code: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(summary(run_id, code)))


def hold_back(out: Path, run_id: str, code: int, error: str) -> Path:
    staging = out / f"_staging-{run_id}"
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "run.json").write_text(json.dumps(summary(run_id, code, published=False, staging=str(staging),
                                                         error=error)))
    return staging


def pending(out: Path, run_id: str, **fields) -> Path:
    staging = out / f"_staging-{run_id}"
    staging.mkdir(parents=True, exist_ok=True)
    record = JobRecord(run_id=run_id, runner="PortableRunner", output=str(out), detached=True,
                       submitted_at="2026-11-24T01:00:00+00:00", job_id="job-1", job_endpoint="localhost:1",
                       launcher=Launcher(host="elsewhere", pid=1), **fields)
    (staging / "job.json").write_text(to_text(record))
    return staging


class FakeRunner:
    """Answers with the given states in turn (the last one from then on); an exception is raised."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.asked = 0

    def __call__(self, record: JobRecord) -> jobs.JobState:
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    """Time that passes only when the waiter sleeps; ``on_sleep`` changes the folder meanwhile."""

    def __init__(self, on_sleep=None):
        self.now = 0.0
        self.on_sleep = on_sleep or (lambda now: None)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.on_sleep(self.now)


def waiter(out: Path, ask, clock: Clock | None = None, **kwargs) -> wait.Waiter:
    clock = clock or Clock()
    return wait.Waiter(str(out), ask=ask, clock=clock, sleep=clock.sleep, poll_s=1, ask_every_s=5, **kwargs)


def test_a_folder_without_a_run_is_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "out" / "_staging-20261124T000000Z-deadbeef").mkdir(parents=True)  # a crashed launcher's leftover
    assert cli.main(["wait", str(tmp_path / "out")]) == 2
    assert cli.main(["wait", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {tmp_path / 'out'} holds no run and none is pending",
                   f"error: {tmp_path / 'missing'} holds no run and none is pending"]


def test_usage_errors_are_one_line(capsys):
    assert cli.main(["wait"]) == 2
    assert cli.main(["wait", "/x", "--timeout", "-1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: usage: ") for line in err)


@pytest.mark.parametrize("code", [0, 3])
def test_a_published_run_gives_its_exit_code_and_summary(tmp_path, capsys, code):
    publish(tmp_path, RUN_1, code)
    assert cli.main(["wait", str(tmp_path)]) == code
    out = capsys.readouterr()
    assert "members 2: 2 OK" in out.out and out.err == ""


def test_a_run_held_back_past_the_dead_letter_limit_is_exit_4_with_its_error(tmp_path, capsys):
    hold_back(tmp_path, RUN_1, 4, "dead letters 0.5 of rows read, limit 0.05")
    assert cli.main(["wait", str(tmp_path)]) == 4
    out = capsys.readouterr()
    assert "NOT published" in out.out
    assert out.err == "error: dead letters 0.5 of rows read, limit 0.05\n"


def test_a_run_its_finalize_step_found_unfit_is_exit_1_with_its_error(tmp_path, capsys):
    hold_back(tmp_path, RUN_1, 1, "accounting does not close: rows_read 3 != 2 + 0 + 0")
    assert cli.main(["wait", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "error: accounting does not close: rows_read 3 != 2 + 0 + 0\n"


def test_the_newest_run_is_the_one_waited_for(tmp_path):
    publish(tmp_path, RUN_1, 0)
    hold_back(tmp_path, RUN_2, 4, "too many dead letters")
    outcome = waiter(tmp_path, FakeRunner(jobs.JobState("RUNNING"))).wait()
    assert (outcome.code, outcome.run_id) == (4, RUN_2)


def test_what_publishing_leaves_behind_on_an_object_store_is_not_a_pending_run(tmp_path):
    publish(tmp_path, RUN_1, 3)
    pending(tmp_path, RUN_1)  # job.json left in the staging "folder" of the run just published
    assert [(r.run_id, r.ended) for r in run_folder.runs(str(tmp_path))] == [(RUN_1, True)]
    assert waiter(tmp_path, FakeRunner(AssertionError("not asked"))).wait().code == 3


def test_a_pending_run_is_waited_for_until_it_publishes(tmp_path):
    staging = pending(tmp_path, RUN_2)
    publish(tmp_path, RUN_1, 0)  # the run before it: not the one waited for

    def job_publishes(now):
        if now >= 12:
            publish(tmp_path, RUN_2, 3)
            for child in staging.iterdir():
                child.unlink()
            staging.rmdir()

    runner = FakeRunner(jobs.JobState("RUNNING"))
    outcome = waiter(tmp_path, runner, Clock(job_publishes)).wait()
    assert (outcome.code, outcome.run_id) == (3, RUN_2)
    assert outcome.summary["run_id"] == RUN_2
    assert runner.asked == 3  # at 0, 5 and 10 s: the runner is asked every ask_every_s, the folder every poll


def test_a_job_that_failed_before_finishing_its_run_is_exit_1_with_the_runners_error(tmp_path, capsys):
    pending(tmp_path, RUN_1)
    error = "lantern.errors.ConfigError: partner keyed: environment variable KEY is not set"
    clock = Clock()
    outcome = waiter(tmp_path, FakeRunner(jobs.JobState("RUNNING"), jobs.JobState("FAILED", error)), clock,
                     settle_s=3).wait()
    assert outcome.code == 1
    assert outcome.error == (f"run {RUN_1}: job job-1 on PortableRunner at localhost:1 ended FAILED without "
                             f"finishing the run: {error}")
    assert 8 <= clock.now <= 9  # failed at 5 s, then the folder had settle_s to show a run.json


def test_a_job_that_failed_while_its_run_json_was_being_written_gives_the_run_json(tmp_path):
    pending(tmp_path, RUN_1)
    outcome = waiter(tmp_path, FakeRunner(jobs.JobState("FAILED", "boom")),
                     Clock(lambda now: now >= 2 and hold_back(tmp_path, RUN_1, 4, "too many dead letters")),
                     settle_s=10).wait()
    assert (outcome.code, outcome.error) == (4, "too many dead letters")


def test_a_job_done_without_a_run_json_is_exit_1(tmp_path):
    pending(tmp_path, RUN_1)
    outcome = waiter(tmp_path, FakeRunner(jobs.JobState("DONE")), settle_s=2).wait()
    assert outcome.code == 1 and outcome.error.endswith("ended DONE but wrote no run.json")


def test_a_runner_that_cannot_be_asked_for_long_ends_the_wait(tmp_path):
    pending(tmp_path, RUN_1)
    down = jobs.Unreachable("the job service at localhost:1 does not answer (UNAVAILABLE)")
    clock = Clock()
    outcome = waiter(tmp_path, FakeRunner(down), clock, unreachable_s=30).wait()
    assert outcome.code == 1
    assert outcome.error.startswith(f"run {RUN_1}: the job service at localhost:1 does not answer (UNAVAILABLE)")
    assert 30 <= clock.now <= 36


def test_a_runner_that_answers_again_resets_the_unreachable_clock(tmp_path):
    pending(tmp_path, RUN_1)
    down = jobs.Unreachable("down")
    runner = FakeRunner(down, down, down, jobs.JobState("RUNNING"), down, down, down, jobs.JobState("DONE"))
    outcome = waiter(tmp_path, runner, unreachable_s=12, settle_s=0).wait()
    assert outcome.code == 1 and "ended DONE" in outcome.error  # never 12 s in a row without an answer


def test_a_timeout_is_exit_5_and_leaves_the_job_running(tmp_path):
    pending(tmp_path, RUN_1)
    outcome = waiter(tmp_path, FakeRunner(jobs.JobState("RUNNING")), timeout_s=7).wait()
    assert outcome.code == wait.EXIT_TIMEOUT == 5
    assert outcome.error == (f"run {RUN_1} still pending after 7s (job job-1 on PortableRunner at localhost:1 "
                             "is RUNNING); the job keeps running")


def test_a_run_replaced_meanwhile_is_exit_1(tmp_path):
    staging = pending(tmp_path, RUN_1)

    def replaced(now):
        (staging / "job.json").unlink()
        staging.rmdir()

    outcome = waiter(tmp_path, FakeRunner(jobs.JobState("RUNNING")), Clock(replaced)).wait()
    assert outcome.code == 1 and "no longer in" in outcome.error


def test_a_launcher_that_saw_its_job_fail_says_so_without_asking_the_runner(tmp_path):
    pending(tmp_path, RUN_1, error="RuntimeError: the job service went away")
    clock = Clock()
    outcome = waiter(tmp_path, jobs.state_of, clock, settle_s=10).wait()
    assert outcome.code == 1 and outcome.error.endswith(": RuntimeError: the job service went away")
    assert clock.now == 0  # the job has ended: no run.json can come any more


# ---- a launch into a folder whose run is pending -----------------------------------------------------------


def in_process_record(out: Path, run_id: str, pid: int, host: str | None = None) -> None:
    staging = out / f"_staging-{run_id}"
    staging.mkdir(parents=True)
    record = JobRecord(run_id=run_id, runner="DirectRunner", output=str(out), detached=False,
                       submitted_at="2026-11-24T01:00:00+00:00",
                       launcher=Launcher(host=host or socket.gethostname(), pid=pid))
    (staging / "job.json").write_text(to_text(record))


def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_launch_into_an_output_whose_run_is_pending_is_refused_in_one_line(tmp_path, overwrite):
    in_process_record(tmp_path, RUN_1, os.getpid())
    with pytest.raises(ConfigError) as refused:
        run_folder.check(str(tmp_path), overwrite)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"output {tmp_path} has run {RUN_1} pending (the job on DirectRunner (pid ")
    assert message.endswith(f"RUNNING); wait for it (python -m beam_pipeline wait {tmp_path}) or stop that job, "
                            "then launch again")


def test_a_run_whose_launcher_is_gone_does_not_block_a_launch(tmp_path):
    in_process_record(tmp_path, RUN_1, dead_pid())
    run_folder.check(str(tmp_path), overwrite=False)
    outcome = waiter(tmp_path, jobs.state_of, settle_s=0).wait()
    assert outcome.code == 1 and "ended before the run did" in outcome.error


def test_a_pending_run_whose_runner_cannot_be_asked_blocks_a_launch_and_says_how_to_clear_it(tmp_path):
    in_process_record(tmp_path, RUN_1, 1, host="another-host")
    with pytest.raises(ConfigError, match=r"its runner cannot be asked .*; if that job is gone, delete .*_staging-"):
        run_folder.check(str(tmp_path), overwrite=True)


def test_the_cli_refuses_a_pending_output_with_exit_2(tmp_path, export, capsys):
    in_process_record(tmp_path, RUN_1, os.getpid())
    code = cli.main(["--input", str(export), "--output", str(tmp_path), "--features-only"])
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: output {tmp_path} has run {RUN_1} pending")
