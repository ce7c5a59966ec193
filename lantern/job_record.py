"""``job.json``: how to find a run's job, written into its staging folder when the job is submitted.

A run that nobody waits on (``--detach``, a Flex Template launch) is a job on
some runner and a ``_staging-RUNID`` folder. Until the job publishes (or holds
back) the run, only the runner knows whether it is still going; this record
says which runner to ask and how: the portable job service's endpoint, or the
Dataflow project, region and job. ``python -m beam_pipeline wait`` reads it, and
so does a second launch into the same output, which is refused while the run is
pending.

The launcher writes it twice: before submitting (no ``job_id`` yet; the
launching process's host and pid say whether a submission or an in-process run
is still alive) and once the runner has accepted the job.
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from lantern.run_record import Absent, Name, Record, Timestamp

JOB_JSON = "job.json"


class Launcher(Record):
    """The process that submitted the job: alive or not tells whether an in-process run still runs."""

    host: str
    pid: int = Field(ge=1)


class JobRecord(Record):
    """One run's job, as its runner knows it."""

    run_id: Name
    runner: Name = Field(description="PortableRunner, DataflowRunner or DirectRunner")
    output: str
    submitted_at: Timestamp = Field(description="when the launcher submitted the job (or started it, in process)")
    detached: bool = Field(description="true: the launcher does not wait; the job finalizes the run by itself")
    launcher: Launcher
    job_id: str | Absent = Field(None, description="the runner's id of the job; absent until the runner accepted it")
    job_endpoint: str | Absent = Field(None, description="PortableRunner: the job service (HOST:PORT)")
    project: str | Absent = Field(None, description="DataflowRunner: the Google Cloud project")
    region: str | Absent = Field(None, description="DataflowRunner: the job's region")
    job_name: str | Absent = Field(None, description="DataflowRunner: the job's name as launched; with the run's "
                                                     "run_id label, how a Flex Template's job is found (its launcher "
                                                     "cannot learn the job id)")
    error: str | Absent = Field(None, description="set by a launcher that saw its job fail, or was stopped, before "
                                                  "the run ended: the one-line reason")

    def where(self) -> str:
        """The job in a few words, for messages: ``job J on PortableRunner at HOST:PORT``."""
        job = f"job {self.job_id}" if self.job_id else (f"job {self.job_name}" if self.job_name else "the job")
        if self.job_endpoint:
            return f"{job} on {self.runner} at {self.job_endpoint}"
        if self.project:
            return f"{job} on {self.runner} (project {self.project}, region {self.region})"
        return f"{job} on {self.runner} (pid {self.launcher.pid} on {self.launcher.host})"


def to_text(record: JobRecord) -> str:
    return json.dumps(record.model_dump(mode="json"), indent=2) + "\n"


def from_text(text: str) -> JobRecord:
    """The record ``text`` holds; ValueError (pydantic's ValidationError is one) when it is not one."""
    data: Any = json.loads(text)
    return JobRecord.model_validate(data)
