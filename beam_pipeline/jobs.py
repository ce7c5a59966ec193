"""A run's job: recorded when it is submitted (``job.json``), and asked how it is doing.

The output folder says how a run ended once it has ended (``run.json``); while
it has not, only the runner knows whether the job still runs, and, when it
failed before it could write anything, why. ``job.json`` in the staging folder
says which runner to ask (``lantern/job_record.py``); :func:`state_of` asks it:

- the portable job service (``--runner PortableRunner --job_endpoint``): the
  Beam Job API's ``GetState``, and ``GetMessageStream`` for a failed job's error;
- Dataflow: its jobs API, through Beam's own client (``apiclient``), and the
  job's error messages;
- a job that runs inside its launcher (the local runner): whether that process
  is still alive, when asked from the same host.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import re
import socket
from collections.abc import Callable
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, PortableOptions

from beam_pipeline import dataflow, outputs
from beam_pipeline.runners import LOCAL_NAMES
from lantern.errors import ConfigError
from lantern.job_record import JOB_JSON, JobRecord, Launcher, from_text, to_text

log = logging.getLogger(__name__)

# Beam's terminal job states (the Job API's and Dataflow's, without Dataflow's JOB_STATE_ prefix).
TERMINAL = frozenset({"DONE", "FAILED", "CANCELLED", "UPDATED", "DRAINED"})
LOST = "UNKNOWN_JOB"  # the runner answers but does not know the job (a restarted job service): it is gone
ASK_TIMEOUT_S = 10.0
# A Flex Template launch cannot learn its job id; its job is found by name. Until Dataflow lists it,
# the job counts as being submitted for this long.
SUBMIT_GRACE_S = 600.0


class Unreachable(Exception):
    """The runner cannot be asked now (its service is down or unreachable, no credentials, another host)."""


@dataclasses.dataclass(frozen=True)
class JobState:
    """What the runner says: the state's name (``RUNNING``, ``DONE``, ``FAILED``, ...) and, when failed, why."""

    state: str
    error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL or self.state == LOST


# ---- recording the job -------------------------------------------------------------------------------------


def job_json(staging: str) -> str:
    return outputs.join(staging, JOB_JSON)


def read(staging: str) -> JobRecord | None:
    """The staging folder's job record; None when it has none (or an unreadable one)."""
    path = job_json(staging)
    try:
        with FileSystems.open(path) as handle:
            text = handle.read().decode("utf-8")
    except Exception:  # noqa: BLE001 - absent (any filesystem's way of saying so)
        return None
    try:
        return from_text(text)
    except ValueError as exc:
        log.warning("%s is not a job record (%s); ignored", path, str(exc).splitlines()[0])
        return None


def write(staging: str, record: JobRecord) -> None:
    with FileSystems.create(job_json(staging)) as handle:
        handle.write(to_text(record).encode("utf-8"))


class Submission:
    """Keeps a run's ``job.json`` current: before the job is submitted, once it is, and if the launcher sees it fail.

    A job that finalizes itself may publish (and remove its staging folder) before
    the launcher gets to record its id; then nothing is written back.
    """

    def __init__(self, run_id: str, options: PipelineOptions, runner: str, output: str, staging: str,
                 detached: bool):
        self.staging = staging
        self.record = JobRecord(
            run_id=run_id, runner=runner, output=output, detached=detached,
            submitted_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            launcher=Launcher(host=socket.gethostname(), pid=os.getpid()), **_where(options, runner),
        )

    def __enter__(self) -> Submission:
        """Before the job is submitted (or, on the local runner, run)."""
        write(self.staging, self.record)
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is not None:
            self.failed(exc)

    def submitted(self, result: Any) -> JobRecord:
        """Once the runner accepted the job: its id, when the runner has one."""
        job_id = _job_id(result)
        if job_id:
            self.record = self.record.model_copy(update={"job_id": job_id})
            write(self.staging, self.record)
            if _published(self.record.output, self.record.run_id):  # the job was quicker: leave no trace
                _remove(job_json(self.staging), self.staging)
        return self.record

    def failed(self, exc: BaseException) -> None:
        """The launcher saw the job fail (or was interrupted): say so where ``wait`` looks, unless the run
        ended (a run held back fails its job on purpose, and its run.json says why)."""
        error = one_line(f"{type(exc).__name__}: {exc}")
        try:
            ended = _published(self.record.output, self.record.run_id) or FileSystems.exists(
                outputs.join(self.staging, outputs.RUN_JSON))
            if not ended and read(self.staging) is not None:
                self.record = self.record.model_copy(update={"error": error})
                write(self.staging, self.record)
        except Exception:  # the failure being reported matters more than this note
            log.warning("could not record the failure in %s", job_json(self.staging), exc_info=True)


def _where(options: PipelineOptions, runner: str) -> dict[str, str]:
    if runner in dataflow.DATAFLOW_NAMES:
        cloud = options.view_as(GoogleCloudOptions)
        return {k: v for k, v in {"project": cloud.project, "region": cloud.region,
                                  "job_name": cloud.job_name}.items() if v}
    endpoint = options.view_as(PortableOptions).job_endpoint
    return {"job_endpoint": endpoint} if endpoint and endpoint != "embed" else {}


def _job_id(result: Any) -> str | None:
    job_id = getattr(result, "job_id", None)
    if callable(job_id):
        job_id = job_id()  # DataflowPipelineResult
    return job_id or getattr(result, "_job_id", None)  # the portable runner's PipelineResult


def _published(output: str, run_id: str) -> bool:
    try:
        published = outputs.read_json(outputs.join(output, outputs.RUN_JSON))
    except ValueError:  # being replaced this moment
        return False
    return published is not None and published.get("run_id") == run_id


def _remove(path: str, staging: str) -> None:
    try:
        FileSystems.delete([path])
        if not outputs.is_remote(staging):
            os.rmdir(staging)  # only when empty: a held-back run's outputs stay
    except OSError:
        pass
    except Exception:  # Beam wraps filesystem errors in its own type
        log.debug("could not remove %s", path, exc_info=True)


def check_detachable(options: PipelineOptions, streaming: bool = False) -> None:
    """``--detach`` needs a runner that runs the job without its launcher; one line (ConfigError) if not."""
    from apache_beam.options.pipeline_options import StandardOptions

    if streaming:
        raise ConfigError("--detach is for batch runs; a streaming job runs until it is drained")
    runner = options.view_as(StandardOptions).runner
    if dataflow.is_template_launch(options) or runner in dataflow.DATAFLOW_NAMES:
        return
    portable = options.view_as(PortableOptions)
    if runner not in LOCAL_NAMES and portable.job_endpoint and portable.job_endpoint != "embed":
        if (portable.environment_type or "").upper() == "LOOPBACK":
            raise ConfigError("--detach cannot run with --environment_type LOOPBACK: its workers live in the "
                              "launcher and end with it; use EXTERNAL (a worker pool) or DOCKER")
        return
    raise ConfigError(
        f"--detach needs a runner that runs the job without its launcher: --runner DataflowRunner, or "
        f"--runner PortableRunner --job_endpoint HOST:PORT; {runner or 'DirectRunner'}"
        f"{' without --job_endpoint' if runner not in LOCAL_NAMES else ''} runs it in this process"
    )


# ---- asking the runner -------------------------------------------------------------------------------------


def state_of(record: JobRecord, dataflow_client: Callable[[JobRecord], Any] | None = None) -> JobState:
    """What the job's runner says about it now; raises :class:`Unreachable` when it cannot be asked.

    ``dataflow_client`` makes the Dataflow client (tests pass a fake).
    """
    if record.error:
        return JobState("FAILED", record.error)
    if record.job_endpoint:
        if not record.job_id:
            return _launcher_state(record, "submitting")
        return _portable_state(record)
    if record.project:
        return _dataflow_state(record, dataflow_client or _dataflow_client)
    if record.runner in LOCAL_NAMES or not record.job_id:
        return _launcher_state(record, "running")
    raise Unreachable(f"{record.runner} jobs cannot be asked for their state; wait for the run's run.json")


def _launcher_state(record: JobRecord, alive_state: str) -> JobState:
    """A job that lives in its launcher's process: alive or not, from the same host only."""
    launcher = record.launcher
    if launcher.host != socket.gethostname():
        raise Unreachable(f"the run's launcher is pid {launcher.pid} on host {launcher.host}; "
                          "it can only be checked from that host")
    try:
        os.kill(launcher.pid, 0)
    except ProcessLookupError:
        return JobState("FAILED", f"its launcher (pid {launcher.pid} on {launcher.host}) ended before the run did")
    except PermissionError:
        pass  # alive, another user's
    return JobState(alive_state.upper())


def _portable_state(record: JobRecord) -> JobState:
    import grpc
    from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

    channel = grpc.insecure_channel(record.job_endpoint)
    try:
        stub = beam_job_api_pb2_grpc.JobServiceStub(channel)
        try:
            event = stub.GetState(beam_job_api_pb2.GetJobStateRequest(job_id=record.job_id), timeout=ASK_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unreachable(f"the job service at {record.job_endpoint} does not answer "
                                  f"({exc.code().name})") from None
            # It answers but cannot say: the job is not one it runs (a restarted job service forgets its jobs).
            return JobState(LOST, f"the job service at {record.job_endpoint} does not know job "
                                           f"{record.job_id}: {one_line(exc.details() or exc.code().name)}")
        state = beam_job_api_pb2.JobState.Enum.Name(event.state)
        error = _portable_error(stub, record.job_id) if state in TERMINAL and state != "DONE" else None
        return JobState(state, error)
    finally:
        channel.close()


def _portable_error(stub, job_id: str) -> str | None:
    """The last error message the job service kept for the job (its message stream replays them)."""
    import grpc
    from apache_beam.portability.api import beam_job_api_pb2

    errors = []
    try:
        stream = stub.GetMessageStream(beam_job_api_pb2.JobMessagesRequest(job_id=job_id), timeout=ASK_TIMEOUT_S)
        for response in stream:
            if response.HasField("message_response"):
                message = response.message_response
                if message.importance == beam_job_api_pb2.JobMessage.JOB_MESSAGE_ERROR:
                    errors.append(message.message_text)
            elif response.state_response.state in _terminal_enums():
                break
    except grpc.RpcError as exc:
        log.debug("message stream of %s: %s", job_id, exc)
    return one_line(errors[-1]) if errors else None


def _terminal_enums() -> set[int]:
    from apache_beam.portability.api import beam_job_api_pb2

    return {beam_job_api_pb2.JobState.Enum.Value(name) for name in TERMINAL}


def _dataflow_client(record: JobRecord) -> Any:
    from apache_beam.runners.dataflow.internal import apiclient

    options = PipelineOptions(project=record.project, region=record.region)
    return apiclient.DataflowApplicationClient(options)


def _dataflow_state(record: JobRecord, make_client: Callable[[JobRecord], Any]) -> JobState:
    try:
        client = make_client(record)
        job_id = record.job_id or _dataflow_job_by_name(client, record)
        if job_id is None:
            age = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(record.submitted_at)).total_seconds()
            if age < SUBMIT_GRACE_S:
                return JobState("SUBMITTING")
            return JobState(LOST, f"Dataflow lists no job named {record.job_name} in project "
                                           f"{record.project}, region {record.region}")
        job = client.get_job(job_id)
        state = _state_name(job.current_state)
        error = _dataflow_error(client, job_id) if state in TERMINAL and state != "DONE" else None
        return JobState(state, error)
    except Unreachable:
        raise
    except Exception as exc:  # noqa: BLE001 - credentials, network, API errors: all mean "cannot ask now"
        raise Unreachable(f"Dataflow (project {record.project}, region {record.region}) cannot be asked: "
                          f"{one_line(f'{type(exc).__name__}: {exc}')}") from None


def _state_name(state: Any) -> str:
    name = getattr(state, "name", None) or str(state)
    return name.rsplit(".", 1)[-1].removeprefix("JOB_STATE_")


def _dataflow_job_by_name(client: Any, record: JobRecord) -> str | None:
    """The newest job created since the launch that carries the run's ``run_id`` label, or else the record's
    job name (a Flex Template launch: ``gcloud dataflow flex-template run NAME`` may name the job itself)."""
    from google.cloud import dataflow as dataflow_api

    since = dt.datetime.fromisoformat(record.submitted_at) - dt.timedelta(minutes=5)
    run_label = dataflow.labels("", record.run_id, None)["run_id"]
    request = dataflow_api.ListJobsRequest(project_id=record.project, location=record.region,
                                           filter=dataflow_api.ListJobsRequest.Filter.ALL)
    found = [job for job in client._jobs_client.list_jobs(request)  # apiclient has no public listing
             if _created(job) >= since
             and (dict(getattr(job, "labels", None) or {}).get("run_id") == run_label or job.name == record.job_name)]
    return max(found, key=_created).id if found else None


def _created(job: Any) -> dt.datetime:
    created = job.create_time
    if isinstance(created, str):
        created = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    return created if created.tzinfo else created.replace(tzinfo=dt.timezone.utc)


def _dataflow_error(client: Any, job_id: str) -> str | None:
    messages, _ = client.list_messages(job_id, minimum_importance="JOB_MESSAGE_ERROR")
    texts = [m.message_text for m in sorted(messages, key=lambda m: str(m.time)) if m.message_text]
    # Dataflow's last error is its summary ("Workflow failed."); the worker's own error names the cause.
    causes = [t for t in texts if _EXCEPTION_LINE.search(t)]
    return one_line((causes or texts)[-1]) if texts else None


_EXCEPTION_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b.*$", re.M)


def one_line(text: str, limit: int = 400) -> str:
    """A runner's error (often a whole traceback) as one line: the last exception it names, else its last line."""
    found = _EXCEPTION_LINE.findall(text)
    lines = [line.strip() for line in (found or text.splitlines()) if line.strip()]
    line = lines[-1] if lines else text.strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."
