"""Member state files: a run's ``state/`` written beside its results, and a base state read back.

``WriteState`` writes the (MEMBER_ID, ACC) tables the feature step hands over as
Parquet files under ``state/``; ``ReadBaseState`` reads the files a base run's
manifest lists and hands them to the shuffle as base-marked shard batches
(``lantern.state_fold``). Around the pipeline, ``load_base`` checks a base before
anything runs (``lantern.state_manifest`` says what is refused) and
``write_manifest`` records a written state. Every path goes through Beam's
FileSystems, so ``gs://`` works as local folders do.
"""
from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterable

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquetBatched, WriteToParquetBatched
from apache_beam.metrics import Metrics

from lantern import state_manifest
from lantern.state_fold import base_batches
from lantern.state_manifest import MANIFEST, STATE_DIR, STATE_SCHEMA, FoldedFile, Manifest, StateFile, sha256_of
from transforms import NAMESPACE
from transforms.parquet_rows import RowsToTablesFn

log = logging.getLogger(__name__)

STATE_CODEC = "zstd"  # smaller files than none or snappy; reading 200k members' state stays a few tens of ms
BASE_MEMBERS_READ = "base_members_read"


def _join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts) if "://" in base else posixpath.join(base, *parts)


def state_dir(output: str) -> str:
    return _join(output, STATE_DIR)


def checksum(path: str) -> str:
    """The file's content as one string, equal for equal contents wherever they are stored.

    Local files: ``sha256:`` of their bytes. Object stores: the store's own content checksum
    (``FileSystems.checksum``: the MD5 or CRC32C GCS keeps), so nothing is downloaded to be
    fingerprinted; a scheme prefix keeps the two kinds apart.
    """
    if "://" in path:
        return f"{path.split('://', 1)[0]}:{FileSystems.checksum(path)}"
    with open(path, "rb") as handle:
        return sha256_of(handle)


def fingerprints(files: Iterable[tuple[str, int]], run_id: str) -> tuple[FoldedFile, ...]:
    """Today's input files as they will be recorded in the state's manifest."""
    return tuple(FoldedFile(path, size, checksum(path), run_id) for path, size in files)


def state_files(folder: str) -> tuple[StateFile, ...]:
    """The Parquet files of a written state folder, each with its size and checksum."""
    matched = FileSystems.match([_join(folder, "*.parquet")])[0].metadata_list
    return tuple(StateFile(posixpath.basename(m.path), m.size_in_bytes, checksum(m.path))
                 for m in sorted(matched, key=lambda m: m.path))


def write_manifest(folder: str, manifest: Manifest) -> None:
    text = json.dumps(manifest.as_json(), indent=1) + "\n"
    with FileSystems.create(_join(folder, MANIFEST)) as handle:
        handle.write(text.encode("utf-8"))


class BaseState:
    """A published run's state, checked whole before a run folds into it."""

    def __init__(self, output: str, manifest: Manifest):
        self.output = output
        self.manifest = manifest

    @property
    def folder(self) -> str:
        return state_dir(self.output)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(_join(self.folder, f.name) for f in self.manifest.files)


def load_base(output: str, run_json: str = "run.json") -> BaseState:
    """The state a run published in ``output``, or a one-line ConfigError saying why it cannot be a base.

    Refused: no published run (no run.json), no state or manifest (a run still going, a crashed one,
    an output that holds none), a manifest that does not parse, a layout version this version does
    not read, and any state file missing, of another size (truncated) or checksum (corrupt) than the
    manifest records. Nothing in ``output`` is written.
    """
    refuse = state_manifest.refusal
    if not FileSystems.exists(_join(output, run_json)):
        raise refuse(output, f"no {run_json}: not a published run (a run still going, held back or crashed, "
                             "or not a run's output folder)")
    path = _join(state_dir(output), MANIFEST)
    if not FileSystems.exists(path):
        raise refuse(output, f"no {STATE_DIR}/{MANIFEST}: the run wrote no member state "
                             "(a --retry-failed output, or an earlier version's); start from a full run")
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            manifest = Manifest.from_json(json.loads(handle.read().decode("utf-8")))
    except (OSError, ValueError) as exc:
        raise refuse(output, f"{STATE_DIR}/{MANIFEST} cannot be read: {exc}".splitlines()[0]) from None
    state_manifest.check_layout(output, manifest)
    base = BaseState(output, manifest)
    found = {posixpath.basename(m.path): m.size_in_bytes
             for m in FileSystems.match([_join(base.folder, "*.parquet")])[0].metadata_list}
    state_manifest.check_files(output, manifest, found, lambda name: checksum(_join(base.folder, name)))
    return base


class BaseBatchesFn(beam.DoFn):
    """A table read from a base state -> base-marked (shard, batch) pairs for the shuffle, cut into the
    run's ``shards`` (the count today's rows are cut into: a state holds no shard of its own)."""

    def __init__(self, shards: int):
        self._shards = shards
        self.members = Metrics.counter(NAMESPACE, BASE_MEMBERS_READ)

    def process(self, table: pa.Table):
        names = table.column_names
        if names[:2] != ["MEMBER_ID", "ACC"]:
            raise ValueError(f"a base state file holds columns {names}, not MEMBER_ID, ACC")
        self.members.inc(table.num_rows)
        yield from base_batches(table, self._shards)


class ReadBaseState(beam.PTransform):
    """The files of a base state (``BaseState.paths``) -> base-marked shard batches."""

    def __init__(self, paths: tuple[str, ...], shards: int):
        super().__init__()
        self._paths = paths
        self._shards = shards

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self._paths)
            | "Read" >> ReadAllFromParquetBatched()
            | "ToShards" >> beam.ParDo(BaseBatchesFn(self._shards))
        )


def _members(table: pa.Table):
    return zip(table.column("MEMBER_ID").to_pylist(), table.column("ACC").to_pylist(), strict=True)


class ReadBaseMembers(beam.PTransform):
    """The files of a base state -> (member, packed accumulator): what seeds a stream's member state."""

    def __init__(self, paths: tuple[str, ...]):
        super().__init__()
        self._paths = paths

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self._paths)
            | "Read" >> ReadAllFromParquetBatched(columns=["MEMBER_ID", "ACC"])
            | "Members" >> beam.FlatMap(_members)
        )


class WriteState(beam.PTransform):
    """(MEMBER_ID, ACC) tables -> ``<prefix>-SSSSS-of-NNNNN.parquet``, a bundle's tables in one row group."""

    def __init__(self, file_path_prefix: str):
        super().__init__()
        self._prefix = file_path_prefix

    def expand(self, tables):
        return (
            tables
            | "ToArrow" >> beam.ParDo(RowsToTablesFn(STATE_SCHEMA)).with_output_types(pa.Table)
            | "Write" >> WriteToParquetBatched(self._prefix, STATE_SCHEMA, codec=STATE_CODEC,
                                              file_name_suffix=".parquet")
        )
