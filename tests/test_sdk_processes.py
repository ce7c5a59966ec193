"""A job-wide rate cap split over the most SDK processes the job can run; one client per process."""
from __future__ import annotations

import threading

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import sdk_processes
from beam_pipeline.sdk_processes import max_sdk_processes, vcpus
from lantern.errors import ConfigError
from lantern.partner import load_named
from transforms.process_shared import ProcessShared


@pytest.mark.parametrize("args, processes", [
    ([], 1),
    (["--direct_running_mode", "multi_threading", "--direct_num_workers", "4"], 1),  # threads share a process
    (["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"], 2),
    (["--runner", "DataflowRunner", "--max_num_workers", "10", "--machine_type", "n2-standard-4"], 40),
    (["--runner", "DataflowRunner", "--max_num_workers", "10"], 10),  # n1-standard-1 by default
    (["--runner", "DataflowRunner", "--num_workers", "3", "--autoscaling_algorithm", "NONE",
      "--machine_type", "e2-medium"], 6),
    (["--runner", "DataflowRunner", "--max_num_workers", "5", "--machine_type", "n2-standard-8",
      "--experiments", "no_use_multiple_sdk_containers"], 5),
    (["--runner", "PortableRunner", "--sdk_worker_parallelism", "3"], 3),
])
def test_the_most_sdk_processes_a_job_can_run(args, processes):
    assert max_sdk_processes(PipelineOptions(args)) == processes


def test_dataflow_without_a_worker_count_cannot_share_a_job_cap():
    with pytest.raises(ConfigError, match="--max_num_workers"):
        max_sdk_processes(PipelineOptions(["--runner", "DataflowRunner", "--num_workers", "3"]))


@pytest.mark.parametrize("machine, n", [("n1-standard-1", 1), ("c2-standard-60", 60), ("custom-6-23040", 6),
                                        ("n2-custom-8-16384", 8), ("e2-small", 2)])
def test_vcpus_of_a_machine_type(machine, n):
    assert vcpus(machine) == n


def test_vcpus_of_an_unknown_machine_type_is_a_clear_error():
    with pytest.raises(ConfigError, match="cannot tell its vCPUs"):
        sdk_processes.vcpus("mystery")


def test_each_process_takes_its_share_of_the_job_cap():
    default = load_named("default")
    assert default.with_process_share(4) == default  # no job cap: nothing changes
    calls = default.calls.model_copy(update={"job_rate_limit_per_s": 100.0})
    partner = default.model_copy(update={"calls": calls})
    assert partner.with_process_share(4).calls.rate_limit_per_s == 25.0
    own = partner.model_copy(update={"calls": calls.model_copy(update={"rate_limit_per_s": 10.0})})
    assert own.with_process_share(4).calls.rate_limit_per_s == 10.0  # the lower cap wins


def test_a_job_cap_must_be_positive(tmp_path):
    from lantern.partner import load

    path = tmp_path / "p.yaml"
    path.write_text("name: p\ncalls: {job_rate_limit_per_s: 0}\n")
    with pytest.raises(ConfigError, match="job_rate_limit_per_s"):
        load(str(path))


def test_one_object_per_process_for_every_user_closed_by_the_last():
    handle, made, closed = ProcessShared(), [], []
    got: list = []

    def use():
        got.append(handle.acquire(lambda: made.append(object()) or made[-1]))

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and all(g is made[0] for g in got) and handle.users() == 4
    for _ in range(3):
        handle.release(closed.append)
    assert closed == []
    handle.release(closed.append)
    assert closed == made and handle.users() == 0
    assert handle.acquire(object) is not made[0]  # a later user gets a new one
