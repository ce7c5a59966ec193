"""An output folder holds one run: never write into one that holds a run, unless told to replace it.

Re-running into a folder used to replace the earlier run's parts and leave the
rest (its ``report.html``, figures, a comparison) describing a run that no longer
exists. Now a folder that holds a run is refused before the pipeline runs (exit
2), like Spark's default save mode ``errorifexists``; ``--overwrite`` replaces the
whole folder, as Spark's ``overwrite`` does, once the new run is complete: the
earlier run stays whole until then, and nothing of it survives after.

Works on any Beam filesystem (local paths, ``gs://``).
"""
from __future__ import annotations

import logging
import os
import shutil

from apache_beam.io.filesystems import FileSystems

from beam_pipeline.outputs import PARTS, RUN_JSON, is_remote, join
from beam_pipeline.report import REPORT_HTML
from lantern.errors import ConfigError

log = logging.getLogger(__name__)

# What marks a folder as holding a run, checked in this order (the first found is named in the error).
MARKERS = (RUN_JSON, *PARTS, REPORT_HTML)


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


def check(output: str, overwrite: bool) -> None:
    """Refuse, before anything runs, an output folder that holds a run, unless ``--overwrite``."""
    try:
        marker = run_marker(output)
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
