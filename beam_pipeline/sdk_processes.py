"""The most SDK worker processes a job can run at once: each takes its share of a job-wide rate cap.

The endpoint client, and with it ``calls.rate_limit_per_s``, is one per SDK process
(``transforms/process_shared.py``). A cap for the whole job (``calls.job_rate_limit_per_s``)
is therefore split at launch into equal per-process caps, over the most processes the job
can ever have, so the sum holds even when all of them run at once:

- local runner: ``--direct_num_workers`` in ``multi_processing`` mode, else 1 (threads share a process);
- Dataflow: ``--max_num_workers`` (``--num_workers`` without autoscaling) times the SDK
  processes per worker, one per vCPU of the machine type unless the experiment
  ``no_use_multiple_sdk_containers`` asks for one;
- other runners (the portable job server): ``--sdk_worker_parallelism`` (default 1).
"""
from __future__ import annotations

import re

from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    WorkerOptions,
)

from beam_pipeline.runners import LOCAL_NAMES, runner_name
from lantern.errors import ConfigError

DATAFLOW_NAMES = ("DataflowRunner", "dataflow")
DEFAULT_MACHINE = "n1-standard-1"  # Dataflow's default for batch jobs
_SHARED_CORE = {"e2-micro": 2, "e2-small": 2, "e2-medium": 2, "f1-micro": 1, "g1-small": 1}


def vcpus(machine_type: str) -> int:
    """vCPUs of a Compute Engine machine type: ``n2-standard-8`` -> 8, ``custom-6-23040`` -> 6."""
    name = machine_type.rsplit("/", 1)[-1]
    if name in _SHARED_CORE:
        return _SHARED_CORE[name]
    custom = re.search(r"custom-(\d+)-\d+", name)
    if custom:
        return int(custom.group(1))
    last = re.search(r"-(\d+)$", name)
    if not last:
        raise ConfigError(f"--machine_type {machine_type}: cannot tell its vCPUs, so not how many SDK processes "
                          "share calls.job_rate_limit_per_s")
    return int(last.group(1))


def max_sdk_processes(options: PipelineOptions) -> int:
    """The most SDK processes the job can run at once (see the module docstring)."""
    runner = runner_name(options)
    if runner in LOCAL_NAMES:
        direct = options.view_as(DirectOptions)
        return max(1, direct.direct_num_workers or 1) if direct.direct_running_mode == "multi_processing" else 1
    if runner in DATAFLOW_NAMES:
        worker = options.view_as(WorkerOptions)
        workers = worker.max_num_workers
        if not workers and worker.autoscaling_algorithm == "NONE":
            workers = worker.num_workers
        if not workers:
            raise ConfigError("calls.job_rate_limit_per_s on Dataflow needs --max_num_workers (or --num_workers with "
                              "--autoscaling_algorithm NONE): the cap is split over the most workers the job can have")
        experiments = options.view_as(DebugOptions).experiments or []
        per_worker = 1 if "no_use_multiple_sdk_containers" in experiments else vcpus(
            worker.machine_type or DEFAULT_MACHINE)
        return workers * per_worker
    return max(1, int(options.view_as(PortableOptions).sdk_worker_parallelism or 1))
