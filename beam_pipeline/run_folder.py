"""An output folder holds one run: never write into one that holds a run, unless told to replace it.

Re-running into a folder used to replace the earlier run's parts and leave the
rest (its ``report.html``, figures, a comparison) describing a run that no longer
exists. Now a folder that holds a run is refused before the pipeline runs (exit
2), like Spark's default save mode ``errorifexists``; ``--overwrite`` replaces the
whole folder, as Spark's ``overwrite`` does, once the new run is complete: the
earlier run stays whole until then, and nothing of it survives after.

A folder can also hold a run that has not ended: a job was submitted and
nobody waits on it (or its launcher is still waiting). Its staging folder holds
``job.json`` and no ``run.json`` yet (:func:`runs`). A second launch into that
folder is refused while the job's runner says the job still runs, ``--overwrite``
or not: the two runs would publish over each other.

Works on any Beam filesystem (local paths, ``gs://``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable

from apache_beam.io.filesystems import FileSystems

from beam_pipeline import jobs
from beam_pipeline.outputs import PARTS, RUN_JSON, is_remote, join, read_json
from beam_pipeline.report import REPORT_HTML
from lantern.errors import ConfigError
from lantern.job_record import JOB_JSON, JobRecord

log = logging.getLogger(__name__)

# What marks a folder as holding a run, checked in this order (the first found is named in the error).
MARKERS = (RUN_JSON, *PARTS, REPORT_HTML)
STAGING_PREFIX = "_staging-"


@dataclasses.dataclass(frozen=True)
class Run:
    """One run an output folder holds: ended (its ``run.json``) or pending (its ``job.json`` only)."""

    run_id: str
    path: str  # the published run.json, or the run's staging folder
    summary: dict | None  # run.json once the run has ended: published, or held back (``published: false``)
    job: JobRecord | None
    published: bool = False

    @property
    def ended(self) -> bool:
        return self.published or (self.summary is not None and self.summary.get("published") is False)

    @property
    def exit_code(self) -> int | None:
        return self.summary.get("exit_code") if self.ended else None


def _present(output: str, name: str) -> bool:
    path = join(output, name)
    if not is_remote(output):
        return os.path.isfile(path) or (os.path.isdir(path) and any(os.scandir(path)))
    if name in PARTS:  # an object store has no folders: a part exists when something is under it
        return bool(FileSystems.match([join(path, "*")])[0].metadata_list)
    return FileSystems.exists(path)


def run_marker(output: str) -> str | None:
    """The first file or folder of a run found in ``output``; None when it holds no run."""
    if not is_remote(output) and not os.path.isdir(output):
        return None
    return next((name for name in MARKERS if _present(output, name)), None)


def runs(output: str) -> list[Run]:
    """Every run ``output`` holds, oldest first (run ids sort by start time).

    A staging folder with neither ``job.json`` nor ``run.json`` is what a crashed
    launcher left, not a run; one beside the published run of the same id is
    what publishing left behind (an object store has no folder to remove).
    """
    found: dict[str, Run] = {}
    published = _read_json(join(output, RUN_JSON))
    if published and published.get("run_id"):
        found[published["run_id"]] = Run(published["run_id"], join(output, RUN_JSON), published, None, True)
    for staging in _staging_folders(output):
        run_id = staging.rstrip("/").rsplit("/", 1)[-1][len(STAGING_PREFIX):]
        if run_id in found:
            continue
        summary = _read_json(join(staging, RUN_JSON))
        job = jobs.read(staging)
        if summary is not None or job is not None:
            found[run_id] = Run(run_id, staging, summary, job)
    return [found[k] for k in sorted(found)]


def find(output: str, run_id: str) -> Run | None:
    return next((run for run in runs(output) if run.run_id == run_id), None)


def _staging_folders(output: str) -> list[str]:
    if not is_remote(output):
        if not os.path.isdir(output):
            return []
        return sorted(e.path for e in os.scandir(output) if e.name.startswith(STAGING_PREFIX) and e.is_dir())
    matched = FileSystems.match([join(output, f"{STAGING_PREFIX}*", name) for name in (JOB_JSON, RUN_JSON)])
    return sorted({m.path.rsplit("/", 1)[0] for result in matched for m in result.metadata_list})


def _read_json(path: str) -> dict | None:
    try:
        data = read_json(path)
    except ValueError:  # being written this moment: not a run yet
        return None
    return data if isinstance(data, dict) else None


def check_pending(output: str, ask: Callable[[JobRecord], jobs.JobState] = jobs.state_of) -> None:
    """Refuse a launch into ``output`` while a run there is pending and its runner says the job still runs."""
    for run in runs(output):
        if run.ended or run.job is None:
            continue
        where = run.job.where()
        try:
            state = ask(run.job)
        except jobs.Unreachable as exc:
            raise ConfigError(
                f"output {output} has run {run.run_id} pending ({where}) and its runner cannot be asked ({exc}); "
                f"if that job is gone, delete {run.path} and launch again"
            ) from None
        if not state.terminal:
            raise ConfigError(
                f"output {output} has run {run.run_id} pending ({where}: {state.state}); wait for it "
                f"(python -m beam_pipeline wait {output}) or stop that job, then launch again"
            )
        log.info("output %s: run %s never finished (%s: %s); launching a new run", output, run.run_id, where,
                 state.state)


def check(output: str, overwrite: bool) -> None:
    """Refuse, before anything runs, an output folder whose run is pending, or that holds a run
    (unless ``--overwrite``)."""
    try:
        marker = run_marker(output)
        check_pending(output)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any filesystem's listing error (auth, bucket) is the user's to fix
        raise ConfigError(f"output {output}: cannot list it: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if marker is None:
        return
    if overwrite:
        log.info("output %s holds a run (%s): --overwrite replaces all of it once this run is complete",
                 output, marker)
        return
    raise ConfigError(
        f"output {output} already holds a run ({marker}); give a new folder, or --overwrite to replace "
        "that run and everything in the folder"
    )


def clear(output: str, keep: str) -> None:
    """Delete everything in ``output`` but ``keep`` (the new run's staging folder), ``run.json`` first.

    Removing ``run.json`` first leaves the folder visibly incomplete (no summary) if
    this is interrupted, never an old summary beside new parts.
    """
    removed = _clear_remote(output, keep) if is_remote(output) else _clear_local(output, keep)
    if removed:
        log.info("removed %d earlier entries from %s (--overwrite)", removed, output)


def _clear_local(output: str, keep: str) -> int:
    """How many entries of ``output`` were removed (``run.json`` among them)."""
    removed = 0
    summary = os.path.join(output, RUN_JSON)
    if os.path.isfile(summary):
        os.remove(summary)
        removed += 1
    keep = os.path.abspath(keep)
    for entry in os.scandir(output):
        if os.path.abspath(entry.path) == keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.remove(entry.path)
        removed += 1
    return removed


def _clear_remote(output: str, keep: str) -> int:
    """How many objects under ``output`` were removed (``run.json`` among them)."""
    removed = 0
    summary = join(output, RUN_JSON)
    if FileSystems.exists(summary):
        FileSystems.delete([summary])
        removed += 1
    keep_prefix = keep.rstrip("/") + "/"
    # ``**`` crosses "/" in Beam's patterns: every object under the folder, at any depth.
    matched = FileSystems.match([join(output, "**")])[0].metadata_list
    old = [m.path for m in matched if not m.path.startswith(keep_prefix)]
    if old:
        FileSystems.delete(old)
    return removed + len(old)
