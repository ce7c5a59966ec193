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
import uuid
from collections.abc import Callable

from apache_beam.io.filesystems import FileSystems

from lantern.errors import ConfigError

log = logging.getLogger(__name__)

PARTS = ("results", "dead_letter", "metrics", "state")  # state/: members' accumulators (docs/incremental.md)
RUN_JSON = "run.json"
PUBLISHING = "_publishing.json"  # in a staging folder: its publication has begun (room made in the output)


def is_remote(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


PROBE_PREFIX = "_write-probe-"


def check_writable(output: str) -> None:
    """Fail before the run if the output folder cannot be created or written; leave nothing behind."""
    if is_remote(output):
        probe_remote(output)
        return
    path = os.path.abspath(output)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"output {output} exists and is not a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {output} is not writable ({existing} does not allow writing)")


def probe_remote(output: str) -> None:
    """Write one small object in a remote output folder, then delete it.

    Publishing writes, renames (copy + delete) and deletes objects there, so both must be allowed.
    Run at launch with the launcher's identity (on a Flex Template: the template's service account,
    the workers' too), before any partner call, so a missing permission is one line at launch and
    not a failed write after every member was paid for.
    """
    probe = join(output, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
    try:
        with FileSystems.create(probe) as handle:
            handle.write(b"write probe: deleted at once\n")
    except Exception as exc:  # noqa: BLE001 - the filesystem's own error (403, no bucket): say what, where
        raise ConfigError(f"output {output} is not writable by this identity: {_first_line(exc)}; "
                          "it needs roles/storage.objectAdmin on the bucket (docs/dataflow.md)") from None
    try:
        FileSystems.delete([probe])
    except Exception as exc:  # noqa: BLE001 - BeamIOError wrapping the store's own error
        raise ConfigError(f"output {output}: wrote {probe} but cannot delete it: {_first_line(exc)}; publishing "
                          "deletes and renames objects there, so the identity needs roles/storage.objectAdmin "
                          "on the bucket (docs/dataflow.md)") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def staging_dir(output: str, run_id: str) -> str:
    return join(output, f"_staging-{run_id}")


def write_json(path: str, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    with FileSystems.create(path) as handle:
        handle.write(text.encode("utf-8"))


def read_json(path: str) -> dict | None:
    """A JSON file's object; None when the file is absent."""
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return json.loads(handle.read().decode("utf-8"))


def replace_json(path: str, data: dict) -> None:
    """Write ``path`` so a reader sees the old file or the new one, never part of one."""
    if is_remote(path):
        write_json(path, data)  # an object store replaces an object whole when its upload ends
        return
    temporary = f"{path}.tmp"
    write_json(temporary, data)
    os.replace(temporary, path)


def staged_parts(staging: str) -> list[str]:
    """The folders a staging folder holds (results/, dead_letter/, ...): what publishing moves."""
    if not is_remote(staging):
        if not os.path.isdir(staging):
            return []
        return sorted(entry.name for entry in os.scandir(staging) if entry.is_dir())
    prefix = staging.rstrip("/") + "/"
    names = {m.path[len(prefix):].split("/", 1)[0] for m in FileSystems.match([join(staging, "**")])[0].metadata_list
             if "/" in m.path[len(prefix):]}
    return sorted(names)


def _remove(path: str) -> None:
    if not is_remote(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        return
    if FileSystems.exists(path):
        FileSystems.delete([path])
    under = [m.path for m in FileSystems.match([join(path, "**")])[0].metadata_list]
    if under:
        FileSystems.delete(under)


def _move(source: str, target: str) -> None:
    """A part of the staging folder into place: one rename locally, file by file on an object store."""
    if not is_remote(source):
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(source, target)
        return
    prefix = source.rstrip("/") + "/"
    files = [m.path for m in FileSystems.match([join(source, "**")])[0].metadata_list]
    if files:
        FileSystems.rename(files, [join(target, *p[len(prefix):].split("/")) for p in files])


def publish(staging: str, output: str, clear: Callable[[], None] | None = None) -> None:
    """Move the run's parts from ``staging`` into ``output``, run.json last; safe to call again after a crash.

    The first call makes room (the old run.json first, so the folder is visibly
    incomplete from then on, then the parts this run replaces, or everything with
    ``clear``) and marks the staging folder; a call that finds the mark only moves
    what is still staged. Once run.json is in place, the staging folder is removed.
    """
    summary = join(output, RUN_JSON)
    marker = join(staging, PUBLISHING)
    if not FileSystems.exists(marker):
        _remove(summary)
        if clear is not None:
            clear()
        for part in staged_parts(staging):
            _remove(join(output, part))
        write_json(marker, {"publishing_to": output})
    for part in staged_parts(staging):
        _move(join(staging, part), join(output, part))
    staged_summary = join(staging, RUN_JSON)
    if FileSystems.exists(staged_summary):
        FileSystems.rename([staged_summary], [summary])
    _remove(staging)
    log.info("published outputs to %s", output)
