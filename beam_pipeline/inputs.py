"""Input checks made before the pipeline runs: files exist, compressed ones are whole, headers carry
the partner's columns.

Every problem here is a user error reported in one line (exit 2), so a run
never starts on a typo in a path or the wrong partner's export.
"""
from __future__ import annotations

import csv
import logging
import lzma
import os
import zlib

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from lantern.errors import ConfigError
from lantern.partner import PartnerConfig
from transforms.input_files import CHECKED, CheckedCompressedFile, InputFile, InputTruncated, gcs_generations, truncated
from transforms.parse import BOM, FileLayout

log = logging.getLogger(__name__)

_HEAD_BYTES = 1 << 20
FIELDS = ("member_id", "timestamp", "type", "points", "revenue")
# Tried, in this order, to tell a user whose header does not split that another delimiter would split it.
DELIMITERS = (",", ";", "|", "\t")


def match_inputs(patterns: list[str]) -> list[InputFile]:
    """The files the globs match now, once: the job's input (``transforms/input_files.py``)."""
    files: dict[str, InputFile] = {}
    for pattern in patterns:
        local = "://" not in pattern
        if local and os.path.isdir(pattern):
            raise ConfigError(
                f"input {pattern} is a directory; give a file or a glob such as "
                f"{pattern.rstrip('/')}/*.csv"
            )
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except (BeamIOError, ValueError) as exc:  # BeamIOError wraps the filesystem's own error
            raise ConfigError(f"input {pattern}: cannot list: {exc}") from None
        if local:
            matched = [m for m in matched if os.path.isfile(m.path)]
        if not matched:
            raise ConfigError(f"input {pattern}: no such file (or the glob matches nothing)")
        for meta in sorted(matched, key=lambda m: m.path):
            if meta.path in files:
                raise ConfigError(f"input {meta.path} is matched by more than one --input")
            files[meta.path] = InputFile(meta.path, meta.size_in_bytes)
    generations = gcs_generations(list(files))
    return [f._replace(generation=generations.get(f.path)) for f in files.values()]


# What a compressed export is assumed to grow to when read (CSV of this kind gzips about 5-8x).
COMPRESSION_RATIO = 8


def estimated_bytes(files: list[InputFile]) -> int:
    """The input's size as the job will read it: compressed files (by name) counted ``COMPRESSION_RATIO`` times."""
    return sum(f.size_bytes * (1 if CompressionTypes.detect_compression_type(f.path) == CompressionTypes.UNCOMPRESSED
                               else COMPRESSION_RATIO) for f in files)


# Compressed gzip/deflate/lzma inputs up to this size are decompressed whole at launch (about a second per
# 64 MiB of gzip) to prove their stream ends where the file does, up to FULL_CHECK_BUDGET bytes for all the
# inputs (a launch over many large files must not download them all first); others are checked as they are read.
FULL_CHECK_BYTES = 64 << 20
FULL_CHECK_BUDGET = 256 << 20
# The end-of-stream marker of a bzip2 stream (48 bits, then a 32-bit CRC and up to 7 bits of padding).
BZIP2_END = 0x177245385090


def check_complete(f: InputFile, full_check_bytes: int = FULL_CHECK_BYTES) -> int:
    """Fail when a compressed input ends before its compressed stream does (a truncated export).

    Cheap checks only: a bzip2 or xz file's last bytes must be its end marker (the bzip2 end-of-stream
    magic, the xz footer's ``YZ``); a gzip, deflate or lzma file is decompressed whole up to
    ``full_check_bytes``; returns the bytes it decompressed. Whatever is not checked here is checked as
    it is read: the job then fails before its last step, and nothing is published
    (``transforms/input_files.CheckedCompressedFile``).
    """
    kind = CompressionTypes.detect_compression_type(f.path)
    if kind not in CHECKED or not f.size_bytes:
        return 0
    spent = 0
    try:
        with FileSystems.open(f.path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            if kind == CompressionTypes.BZIP2:
                whole = bzip2_ends(_tail(raw, f.size_bytes, 11))
            elif f.path.lower().endswith(".xz"):
                whole = xz_ends(_tail(raw, f.size_bytes, 4096))
            elif f.size_bytes <= full_check_bytes:
                with CheckedCompressedFile(raw, kind, f.path, read_size=1 << 20) as stream:
                    while stream.read(8 << 20):
                        pass
                whole, spent = True, f.size_bytes
            else:
                log.info("inputs: %s (%s bytes) is checked for truncation as it is read", f.path, f"{f.size_bytes:,}")
                whole = True
    except InputTruncated as exc:
        raise ConfigError(str(exc)) from None
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise ConfigError(f"input {f.path}: cannot decompress: {exc}") from None
    if whole is False:
        raise ConfigError(truncated(f.path, kind, f.size_bytes))
    return spent


def _tail(raw, size: int, n: int) -> bytes:
    """The last ``n`` bytes of the ``size`` bytes matched at launch."""
    raw.seek(max(0, size - n))
    return raw.read(min(n, size))


def bzip2_ends(tail: bytes) -> bool:
    """Whether the last bytes of a bzip2 file are a stream's end: its 48-bit marker, CRC and zero padding."""
    bits = int.from_bytes(tail, "big")
    for pad in range(8):
        if len(tail) * 8 >= 80 + pad and bits & ((1 << pad) - 1) == 0 \
                and (bits >> (32 + pad)) & ((1 << 48) - 1) == BZIP2_END:
            return True
    return False


def xz_ends(tail: bytes) -> bool | None:
    """Whether an xz file ends with a stream footer (magic ``YZ``, after any zero stream padding); None when
    the tail is all padding (undecided here: the read checks it)."""
    body = tail.rstrip(b"\0")
    return body.endswith(b"YZ") if body else None


def read_header(path: str) -> tuple[bytes, bytes | None]:
    """The first line (BOM and line ending removed) and whether a second line exists.

    Compressed exports (``.gz``, ``.bz2``: whatever ``CompressionTypes.AUTO`` detects from the
    name) are read decompressed, as both readers of the pipeline read them.
    """
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as handle:
            head = handle.read(_HEAD_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(f"input {path}: cannot decompress: {exc}") from None
    if not head.strip():
        raise ConfigError(f"input {path} is empty")
    if head.startswith(BOM):
        head = head[len(BOM):]
    first, _, rest = head.partition(b"\n")
    return first.rstrip(b"\r"), rest


def layout_for(path: str, partner: PartnerConfig, partner_source: str) -> FileLayout:
    first, rest = read_header(path)
    if partner.input.header:
        if not rest.strip():
            raise ConfigError(f"input {path} has a header but no data rows")
        try:
            names = next(csv.reader([first.decode("utf-8")], delimiter=partner.input.delimiter))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"input {path}: cannot read the header line: {exc}") from None
        names = [n.strip() for n in names]
        header: bytes | None = first
    else:
        names, header = list(partner.input.header_columns or ()), None
    cols = partner.input.columns
    index = {}
    for field in FIELDS:
        column = getattr(cols, field)
        if column not in names:
            where = "header" if partner.input.header else "input.header_columns"
            raise ConfigError(
                f"input {path}: {where} has no column {column!r} "
                f"(input.columns.{field} in {partner_source}); columns are: {','.join(names)[:200]}; "
                + header_hint(first if partner.input.header else None, names, partner, field, partner_source)
            )
        index[field] = names.index(column)
    return FileLayout(header=header, n_fields=len(names), **index)


def header_hint(first: bytes | None, names: list[str], partner: PartnerConfig, field: str, source: str) -> str:
    """How to fix a missing column: another delimiter when the header splits on one, else the column names."""
    wanted = [getattr(partner.input.columns, f) for f in FIELDS]
    if first is not None:
        text = first.decode("utf-8", errors="replace")
        for delimiter in DELIMITERS:
            if delimiter == partner.input.delimiter:
                continue
            split = [n.strip() for n in text.split(delimiter)]
            if len(split) > len(names) and len(split) > 1:
                also = "" if set(wanted) <= set(split) else " and input.columns to those names"
                return (f"the header splits on {delimiter!r} into {len(split)} columns: "
                        f"set input.delimiter: {delimiter!r}{also} in {source}")
    return f"set input.columns.{field} in {source} to the name this export uses (one of the columns above)"


def inspect_inputs(
    patterns: list[str], partner: PartnerConfig, partner_source: str
) -> tuple[list[InputFile], dict[str, FileLayout]]:
    files = match_inputs(patterns)
    budget = FULL_CHECK_BUDGET
    for f in files:
        budget -= check_complete(f, min(FULL_CHECK_BYTES, budget))
    layouts = {f.path: layout_for(f.path, partner, partner_source) for f in files}
    log.info("inputs: %d file(s), %d bytes", len(files), sum(f.size_bytes for f in files))
    return files, layouts
