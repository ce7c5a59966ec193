"""Which Beam runner executes the job.

``DirectRunner`` in Beam 2.77 first tries the Prism runner, which downloads a
binary from the internet; on a laptop without network (and in CI) that is a
slow failure. Local runs therefore go straight to the FnApiRunner, the engine
the DirectRunner falls back to, which honours ``--direct_num_workers`` and
``--direct_running_mode``.
"""
from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineRunner

LOCAL_NAMES = (None, "DirectRunner", "direct", "FnApiRunner")


def runner_name(options: PipelineOptions) -> str:
    return options.view_as(StandardOptions).runner or "DirectRunner"


def local_runner(options: PipelineOptions | None = None) -> PipelineRunner:
    """The FnApiRunner, given the pipeline options so multi-process workers see them too."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    options = options or PipelineOptions([])
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def make_runner(options: PipelineOptions) -> PipelineRunner | None:
    """The local engine for DirectRunner runs; None lets Beam resolve any other runner."""
    if options.view_as(StandardOptions).runner in LOCAL_NAMES and not options.view_as(StandardOptions).streaming:
        return local_runner(options)
    return None


def streaming_local_runner() -> PipelineRunner:
    """The bundle-based DirectRunner: the local engine that runs TestStream and Pub/Sub reads."""
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

    return BundleBasedDirectRunner()
