"""What a Dataflow job needs that a local run does not, filled in before the pipeline is built.

Workers must import ``beam_pipeline`` and ``transforms``: either the job runs in
the image built from ``Dockerfile`` (the package is installed there, found via
``LANTERN_IMAGE``, which the image sets to its own name), or the package is
staged from ``setup.py``. A Flex Template launch differs from a run started by
hand: the launcher only wants the job submitted, so nothing may wait for it.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

log = logging.getLogger(__name__)

IMAGE_ENV = "LANTERN_IMAGE"
DATAFLOW_NAMES = ("DataflowRunner", "dataflow")
SETUP_PY = Path(__file__).resolve().parent.parent / "setup.py"


def is_dataflow(options: PipelineOptions) -> bool:
    return options.view_as(StandardOptions).runner in DATAFLOW_NAMES


def runs_on_dataflow(options: PipelineOptions) -> bool:
    """A job for Dataflow: started with its runner, or by the Flex Template launcher."""
    return is_dataflow(options) or is_template_launch(options)


def is_template_launch(options: PipelineOptions) -> bool:
    """The Flex Template launcher passes ``--template_location``: the job is submitted, never awaited."""
    return bool(options.view_as(GoogleCloudOptions).template_location)


def job_name(partner: str, run_id: str) -> str:
    """A Dataflow job name (lowercase letters, digits, dashes) that says whose run it is."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"lantern-{partner}-{run_id}".lower())
    return name.strip("-")[:63].rstrip("-")


def labels(partner: str, run_id: str, as_of: str | None) -> dict[str, str]:
    """The job's labels: whose run it is, which run, for which day (billing export and the console filter
    on them). Label values are lowercase letters, digits, ``_`` and ``-``, at most 63 characters."""
    values = {"partner": partner, "run_id": run_id, "as_of": as_of}
    return {k: re.sub(r"[^a-z0-9_-]", "-", v.lower())[:63] for k, v in values.items() if v}


def prepare(options: PipelineOptions, partner: str, run_id: str, as_of: str | None = None) -> None:
    """Fill in the worker image (or the package to stage), the job name the user did not give, and the labels."""
    if is_template_launch(options) and options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "DataflowRunner"
    if not is_dataflow(options):
        return
    worker = options.view_as(WorkerOptions)
    setup = options.view_as(SetupOptions)
    if not worker.sdk_container_image and os.environ.get(IMAGE_ENV):
        worker.sdk_container_image = os.environ[IMAGE_ENV]
    if not worker.sdk_container_image and not setup.setup_file and SETUP_PY.is_file():
        setup.setup_file = str(SETUP_PY)  # default Beam image: workers install the package from an sdist
    cloud = options.view_as(GoogleCloudOptions)
    if not cloud.job_name:
        cloud.job_name = job_name(partner, run_id)
    given = {label.split("=", 1)[0] for label in cloud.labels or []}
    cloud.labels = [*(cloud.labels or []),
                    *(f"{k}={v}" for k, v in labels(partner, run_id, as_of).items() if k not in given)]
    log.info("dataflow job %s: worker image %s, package %s, labels %s", cloud.job_name,
             worker.sdk_container_image or "Beam default", setup.setup_file or "in the image", ",".join(cloud.labels))
