"""What a run's member state holds: its layout version, its table, and the manifest that checks it whole.

Every batch run writes ``state/`` beside its results: Parquet files of
(``MEMBER_ID``, ``ACC``), ``ACC`` being the member's accumulator in the packed
layout of ``lantern.features.pack`` (the bytes the batch shuffle carries and the
streaming state keeps), and ``state/manifest.json``: which run wrote it, as of
which date, for which partner, in which layout, each state file with its size
and checksum, and every input file folded into it so far with its checksum.
A later run folds a day's rows into it (``--incremental-from``) with the same
merge the shuffle uses, so the state after day N is exactly the accumulators of
every row up to day N, however the days were split.

This module is the plain part: the layout's version (``lantern.state_version``'s,
the one number every coded state carries), the manifest as a record, and the checks that refuse a base a run must not fold
into, one line each (exit 2). Files are read and written by
``transforms.member_state_io``.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from typing import Any, BinaryIO

import pyarrow as pa

from lantern.errors import ConfigError
from lantern.state_version import STATE_VERSION

# The state's layout is the packed accumulator of lantern.features.pack, as every state coder carries it:
# one version for all of them (lantern.state_version). A base of another version is refused.
LAYOUT_VERSION = STATE_VERSION
STATE_DIR = "state"
MANIFEST = "_manifest.json"  # "_": readers of state/ as a Parquet dataset skip it
LAYOUT_KEY = b"lantern.state.layout"
STATE_SCHEMA = pa.schema([("MEMBER_ID", pa.string()), ("ACC", pa.binary())],
                         metadata={LAYOUT_KEY: str(LAYOUT_VERSION).encode()})
_CHUNK = 1 << 20


def sha256_of(handle: BinaryIO) -> str:
    """``sha256:`` and the hex digest of everything left in ``handle``."""
    digest = hashlib.sha256()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


@dataclasses.dataclass(frozen=True)
class FoldedFile:
    """An input file folded into a state: where it was, how big, its checksum, which run folded it."""

    path: str
    size_bytes: int
    checksum: str
    run_id: str
    generation: int | None = None  # a Cloud Storage object's generation, as the run read it (inputs fixed at launch)


@dataclasses.dataclass(frozen=True)
class StateFile:
    """One Parquet file of a state, named relative to ``state/``."""

    name: str
    size_bytes: int
    checksum: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """``state/manifest.json``: what a state holds and how to check it is whole."""

    run_id: str
    as_of: str
    partner: str
    layout_version: int
    members: int
    transactions: int
    files: tuple[StateFile, ...]
    inputs: tuple[FoldedFile, ...]  # every input folded so far, oldest run first
    base_run_id: str | None = None  # the run whose state this one folded its inputs into

    def as_json(self) -> dict[str, Any]:
        return {
            "layout_version": self.layout_version,
            "run_id": self.run_id,
            "base_run_id": self.base_run_id,
            "as_of": self.as_of,
            "partner": self.partner,
            "members": self.members,
            "transactions": self.transactions,
            "files": [dataclasses.asdict(f) for f in self.files],
            "inputs": [{k: v for k, v in dataclasses.asdict(f).items() if k != "generation" or v is not None}
                       for f in self.inputs],
        }

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """The manifest, or ValueError naming what is missing or of the wrong type."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            files = tuple(StateFile(str(f["name"]), int(f["size_bytes"]), str(f["checksum"])) for f in data["files"])
            inputs = tuple(FoldedFile(str(f["path"]), int(f["size_bytes"]), str(f["checksum"]), str(f["run_id"]),
                                      None if f.get("generation") is None else int(f["generation"]))
                           for f in data["inputs"])
            return cls(run_id=str(data["run_id"]), as_of=str(data["as_of"]), partner=str(data["partner"]),
                       layout_version=int(data["layout_version"]), members=int(data["members"]),
                       transactions=int(data["transactions"]), files=files, inputs=inputs,
                       base_run_id=data.get("base_run_id"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"missing or malformed field {exc}") from None


def refusal(base: str, why: str) -> ConfigError:
    return ConfigError(f"--incremental-from {base}: {why}")


def check_layout(base: str, manifest: Manifest) -> None:
    if manifest.layout_version != LAYOUT_VERSION:
        raise refusal(base, f"its state has layout version {manifest.layout_version}; this version reads "
                            f"layout {LAYOUT_VERSION}: rebuild the state with a full run (docs/incremental.md)")
    if not manifest.files:
        raise refusal(base, f"{STATE_DIR}/{MANIFEST} lists no state files: the state is incomplete")


def check_files(base: str, manifest: Manifest, found: dict[str, int], checksum_of) -> None:
    """Every file the manifest lists is there (``found``: name -> size), of its size and checksum
    (``checksum_of(name)``): a missing file is an incomplete state, a shorter one truncated, another
    checksum a corrupt one."""
    for entry in manifest.files:
        if entry.name not in found:
            raise refusal(base, f"state file {entry.name} is missing: the state is incomplete")
        if found[entry.name] != entry.size_bytes:
            raise refusal(base, f"state file {entry.name} is {found[entry.name]} bytes, its manifest says "
                                f"{entry.size_bytes}: truncated or rewritten")
        if checksum_of(entry.name) != entry.checksum:
            raise refusal(base, f"state file {entry.name} does not match its checksum: corrupt")


def check_partner(base: str, manifest: Manifest, partner: str) -> None:
    if manifest.partner != partner:
        raise refusal(base, f"its state is partner {manifest.partner!r}; this run is partner {partner!r}")


def check_not_folded(base: str, manifest: Manifest, files: Iterable[tuple[str, str]]) -> None:
    """Refuse any of today's (path, checksum) whose content the base has already folded, whatever its path,
    and a file given twice today."""
    folded = {f.checksum: (f.path, f"run {f.run_id}") for f in manifest.inputs}
    for path, digest in files:
        if digest in folded:
            was, by = folded[digest]
            raise refusal(base, f"input {path} was already folded into this state (same content as {was}, "
                                f"folded by {by}): a file is folded once")
        folded[digest] = (path, "this run")
