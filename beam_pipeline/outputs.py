"""Where a run writes, and how it publishes: stage everything, then move it into place.

A crashed run leaves only a ``_staging-*`` folder, never a ``results/`` that
looks complete; ``run.json`` is published last, so its presence means the
outputs beside it are whole.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from apache_beam.io.filesystems import FileSystems

from lantern.errors import ConfigError

log = logging.getLogger(__name__)

PARTS = ("results", "dead_letter", "metrics")
RUN_JSON = "run.json"


def is_remote(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def check_writable(output: str) -> None:
    """Fail before the run if the output folder cannot be created or written; write nothing."""
    if is_remote(output):
        return  # a bucket's permissions cannot be probed offline; the runner reports them
    path = os.path.abspath(output)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"output {output} exists and is not a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {output} is not writable ({existing} does not allow writing)")


def check_fresh(output: str) -> None:
    """A run that cannot publish (a Flex Template launch) writes in place, so the folder must hold no earlier run."""
    for part in (*PARTS, RUN_JSON):
        path = join(output, part)
        pattern = join(path, "*") if part != RUN_JSON else path
        if FileSystems.match([pattern])[0].metadata_list:
            raise ConfigError(
                f"output {output} already holds a run ({part}); a Flex Template run writes its outputs in place "
                "and cannot replace them, so give it a new folder (e.g. one per date)"
            )


def staging_dir(output: str, run_id: str) -> str:
    return join(output, f"_staging-{run_id}")


def write_json(path: str, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    with FileSystems.create(path) as handle:
        handle.write(text.encode("utf-8"))


def publish(staging: str, output: str) -> None:
    """Replace the previous run's outputs with this run's, run.json last."""
    if is_remote(output):
        _publish_remote(staging, output)
        return
    old_summary = os.path.join(output, RUN_JSON)
    if os.path.exists(old_summary):
        os.remove(old_summary)  # from here on the folder is visibly incomplete
    for part in PARTS:
        target = os.path.join(output, part)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, part), target)
    os.replace(os.path.join(staging, RUN_JSON), old_summary)
    shutil.rmtree(staging, ignore_errors=True)
    log.info("published outputs to %s", output)


def _publish_remote(staging: str, output: str) -> None:
    summary = join(output, RUN_JSON)
    if FileSystems.exists(summary):
        FileSystems.delete([summary])
    for part in PARTS:
        old = [m.path for m in FileSystems.match([join(output, part, "*")])[0].metadata_list]
        if old:
            FileSystems.delete(old)
        new = [m.path for m in FileSystems.match([join(staging, part, "*")])[0].metadata_list]
        FileSystems.rename(new, [join(output, part, Path(p).name) for p in new])
    FileSystems.rename([join(staging, RUN_JSON)], [summary])
