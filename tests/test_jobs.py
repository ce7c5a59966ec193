"""A run's job record, and asking its runner: Dataflow's jobs API through a fake client, the job service's
answers when it is down, the local launcher by its process."""
from __future__ import annotations

import datetime as dt
import json
import types

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import cli, jobs
from lantern.errors import ConfigError
from lantern.job_record import JobRecord, Launcher, from_text
from tests.conftest import free_port

TRACEBACK = """Traceback (most recent call last):
  File "apache_beam/runners/common.py", line 1576, in invoke_setup
lantern.errors.ConfigError: partner keyed: environment variable KEY is not set

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/x/bundle_processor.py", line 1199, in __init__
    op.setup(self.data_sampler)
lantern.errors.ConfigError: partner keyed: environment variable KEY is not set [while running 'DecideOffers/Call']
"""


def test_a_runners_traceback_becomes_its_last_exception_line():
    assert jobs.one_line(TRACEBACK) == ("lantern.errors.ConfigError: partner keyed: environment variable KEY is not set "
                                        "[while running 'DecideOffers/Call']")
    assert jobs.one_line("Workflow failed.\n") == "Workflow failed."
    assert len(jobs.one_line("ValueError: " + "x" * 1000)) == 400


def dataflow_record(**fields) -> JobRecord:
    return JobRecord(run_id="r1", runner="DataflowRunner", output="gs://b/out", detached=True,
                     submitted_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     launcher=Launcher(host="launcher-vm", pid=7), project="p", region="europe-west1",
                     job_name="lantern-default-r1", **fields)


class FakeDataflow:
    """What ``apiclient.DataflowApplicationClient`` answers, from canned jobs and messages."""

    def __init__(self, jobs_by_id: dict[str, str], messages: list[tuple[str, str]] = (), listed=()):
        self.jobs_by_id = jobs_by_id
        self.messages = messages
        self.asked: list[tuple] = []
        self._jobs_client = types.SimpleNamespace(list_jobs=self._list_jobs)
        self.listed = list(listed)

    def get_job(self, job_id):
        self.asked.append(("get_job", job_id))
        from google.cloud import dataflow

        return types.SimpleNamespace(id=job_id, current_state=dataflow.JobState[self.jobs_by_id[job_id]])

    def list_messages(self, job_id, minimum_importance=None):
        self.asked.append(("list_messages", job_id, minimum_importance))
        return [types.SimpleNamespace(time=t, message_text=text) for t, text in self.messages], None

    def _list_jobs(self, request):
        self.asked.append(("list_jobs", request.project_id, request.location))
        return self.listed


@pytest.fixture
def dataflow_api(dataflow_extra):
    """The Dataflow client library (the ``dataflow`` extra)."""


def test_dataflow_says_a_job_runs(dataflow_api):
    fake = FakeDataflow({"2026-11-24_01_00_00-123": "JOB_STATE_RUNNING"})
    state = jobs.state_of(dataflow_record(job_id="2026-11-24_01_00_00-123"), dataflow_client=lambda r: fake)
    assert (state.state, state.terminal, state.error) == ("RUNNING", False, None)
    assert fake.asked == [("get_job", "2026-11-24_01_00_00-123")]


def test_a_failed_dataflow_job_gives_the_workers_error_not_dataflows_summary(dataflow_api):
    fake = FakeDataflow({"j1": "JOB_STATE_FAILED"}, messages=[
        ("2026-11-24T01:02:00Z", "Workflow failed. Causes: S05:Read+Parse failed."),
        ("2026-11-24T01:01:00Z", "Error message from worker: Traceback (most recent call last):\n  File \"x.py\"\n"
                                 "FileNotFoundError: gs://b/in/a.csv not found [while running 'ReadExports']"),
    ])
    state = jobs.state_of(dataflow_record(job_id="j1"), dataflow_client=lambda r: fake)
    assert state.state == "FAILED" and state.terminal
    assert state.error == "FileNotFoundError: gs://b/in/a.csv not found [while running 'ReadExports']"
    assert ("list_messages", "j1", "JOB_MESSAGE_ERROR") in fake.asked


def test_a_flex_template_job_is_found_by_its_name(dataflow_api):
    now = dt.datetime.now(dt.timezone.utc)
    listed = [types.SimpleNamespace(id="old", name="lantern-default-r1", create_time=now - dt.timedelta(days=1)),
              types.SimpleNamespace(id="other", name="someone-else", create_time=now),
              types.SimpleNamespace(id="new", name="lantern-default-r1", create_time=now - dt.timedelta(seconds=5))]
    fake = FakeDataflow({"new": "JOB_STATE_DONE"}, listed=listed)
    state = jobs.state_of(dataflow_record(), dataflow_client=lambda r: fake)
    assert state.state == "DONE"
    assert fake.asked == [("list_jobs", "p", "europe-west1"), ("get_job", "new")]

    # gcloud named the job itself: the run_id label the launch put on the job finds it.
    fake.listed.append(types.SimpleNamespace(id="named", name="acme-2026-11-24", labels={"run_id": "r1"},
                                             create_time=now))
    fake.jobs_by_id["named"] = "JOB_STATE_RUNNING"
    assert jobs.state_of(dataflow_record(), dataflow_client=lambda r: fake).state == "RUNNING"


def test_a_flex_template_job_not_listed_yet_is_being_submitted_until_the_grace_ends(dataflow_api):
    fake = FakeDataflow({}, listed=[])
    assert jobs.state_of(dataflow_record(), dataflow_client=lambda r: fake).state == "SUBMITTING"
    old = dataflow_record().model_copy(update={"submitted_at": "2026-01-01T00:00:00+00:00"})
    state = jobs.state_of(old, dataflow_client=lambda r: fake)
    assert state.terminal and "lists no job named lantern-default-r1" in state.error


def test_dataflow_that_cannot_be_asked_is_unreachable_not_a_failed_job():
    def no_credentials(record):
        raise RuntimeError("Could not automatically determine credentials.\nMore text")

    with pytest.raises(jobs.Unreachable, match=r"^Dataflow \(project p, region europe-west1\) cannot be asked: "
                                               r"RuntimeError: Could not automatically determine credentials\.$"):
        jobs.state_of(dataflow_record(job_id="j1"), dataflow_client=no_credentials)


def test_a_job_service_that_is_down_is_unreachable():
    record = JobRecord(run_id="r1", runner="PortableRunner", output="/o", detached=True, job_id="job-1",
                       job_endpoint=f"localhost:{free_port()}", submitted_at="2026-11-24T01:00:00+00:00",
                       launcher=Launcher(host="h", pid=1))
    with pytest.raises(jobs.Unreachable, match=r"does not answer \((UNAVAILABLE|DEADLINE_EXCEEDED)\)"):
        jobs.state_of(record)


def test_the_job_record_says_where_the_job_runs(tmp_path):
    options = PipelineOptions(["--runner=PortableRunner", "--job_endpoint=localhost:8099"])
    sub = jobs.Submission("r1", options, "PortableRunner", str(tmp_path), str(tmp_path / "_staging-r1"), detached=True)
    with sub:
        first = json.loads((tmp_path / "_staging-r1" / "job.json").read_text())
        record = sub.submitted(types.SimpleNamespace(_job_id="job-42"))
    assert "job_id" not in first and first["job_endpoint"] == "localhost:8099" and first["detached"] is True
    on_disk = from_text((tmp_path / "_staging-r1" / "job.json").read_text())
    assert on_disk == record and record.job_id == "job-42"
    assert record.where() == "job job-42 on PortableRunner at localhost:8099"

    dataflow = PipelineOptions(["--runner=DataflowRunner", "--project=p", "--region=r", "--job_name=n"])
    sub = jobs.Submission("r2", dataflow, "DataflowRunner", "gs://b/o", str(tmp_path / "_staging-r2"), detached=True)
    assert (sub.record.project, sub.record.region, sub.record.job_name, sub.record.job_endpoint) == ("p", "r", "n", None)


def test_a_job_that_published_before_its_id_was_recorded_leaves_no_job_record(tmp_path):
    options = PipelineOptions(["--runner=PortableRunner", "--job_endpoint=localhost:8099"])
    staging = tmp_path / "_staging-r1"
    sub = jobs.Submission("r1", options, "PortableRunner", str(tmp_path), str(staging), detached=True)
    with sub:
        (staging / "job.json").unlink()
        staging.rmdir()  # the job published and removed its staging folder ...
        (tmp_path / "run.json").write_text(json.dumps({"run_id": "r1"}))
        sub.submitted(types.SimpleNamespace(_job_id="job-42"))  # ... before the launcher learnt its id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_a_launcher_that_sees_its_job_fail_records_why(tmp_path):
    sub = jobs.Submission("r1", PipelineOptions([]), "DirectRunner", str(tmp_path), str(tmp_path / "s"), False)
    with pytest.raises(RuntimeError), sub:
        raise RuntimeError("Pipeline job-1 failed in state FAILED: Traceback (most recent call last):\n"
                           "ValueError: bad row [while running 'Parse']")
    record = from_text((tmp_path / "s" / "job.json").read_text())
    assert record.error == "ValueError: bad row [while running 'Parse']"
    assert jobs.state_of(record) == jobs.JobState("FAILED", record.error)


@pytest.mark.parametrize(("args", "streaming", "error"), [
    ([], False, "--detach needs a runner that runs the job without its launcher: --runner DataflowRunner, or "
                "--runner PortableRunner --job_endpoint HOST:PORT; DirectRunner runs it in this process"),
    (["--runner=PortableRunner"], False, "PortableRunner without --job_endpoint runs it in this process"),
    (["--runner=PortableRunner", "--job_endpoint=embed"], False, "without --job_endpoint runs it in this process"),
    (["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--environment_type=LOOPBACK"], False,
     "--detach cannot run with --environment_type LOOPBACK: its workers live in the launcher and end with it"),
    (["--runner=DataflowRunner"], True, "--detach is for batch runs; a streaming job runs until it is drained"),
    (["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--environment_type=EXTERNAL"], False, None),
    (["--runner=DataflowRunner", "--project=p", "--region=r"], False, None),
    ([f"--template_location={'gs://b/t'}"], False, None),
])
def test_only_a_runner_that_runs_jobs_on_its_own_can_be_left_alone(args, streaming, error):
    if error is None:
        jobs.check_detachable(PipelineOptions(args), streaming)
        return
    with pytest.raises(ConfigError) as refused:
        jobs.check_detachable(PipelineOptions(args), streaming)
    assert error in str(refused.value) and "\n" not in str(refused.value)


def test_the_cli_refuses_detach_on_the_local_runner_in_one_line(export, tmp_path, capsys):
    assert cli.main(["--input", str(export), "--output", str(tmp_path / "out"), "--features-only", "--detach"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: --detach needs a runner")
    assert not (tmp_path / "out").exists()
