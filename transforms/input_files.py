"""The files a job reads, fixed when it is launched: sources over that list, never over a glob.

The launcher matches the input globs once (``beam_pipeline/inputs.py``), reads each file's
header, and hands the pipeline the files it found: path, size and, on Cloud Storage, the
object's generation. Workers read exactly those files, each up to the size seen at launch;
a file that lands in the folder after launch is not part of the job (and has no header
layout to be parsed with), and a Cloud Storage object is read at the generation seen at
launch, so an export replaced meanwhile fails the read instead of mixing two exports.

Beam's ``FileBasedSource`` matches its pattern again wherever it is split or read;
``FixedFiles`` replaces that one step (``_get_concat_source``) with the list.

A compressed file is read through ``CheckedCompressedFile``: Beam's ``CompressedFile`` takes
the end of the file for the end of the data even when the compressed stream stopped before its
end marker (a gzip without its trailer, a cut bz2), so a truncated export would be read in part
without an error; here that read fails, naming the file.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

from apache_beam.internal import pickler
from apache_beam.io import concat_source
from apache_beam.io.filebasedsource import _determine_splittability_from_compression_type, _SingleFileSource
from apache_beam.io.filesystem import CompressedFile, CompressionTypes
from apache_beam.io.filesystems import FileSystems

log = logging.getLogger(__name__)


class InputFile(NamedTuple):
    """One input file as matched at launch."""

    path: str
    size_bytes: int
    generation: int | None = None  # a Cloud Storage object's generation; None elsewhere

    def as_json(self) -> dict:
        out = {"path": self.path, "size_bytes": self.size_bytes}
        if self.generation is not None:
            out["generation"] = self.generation
        return out


class InputChanged(IOError):
    """An input file is no longer what was matched at launch."""


class InputTruncated(IOError):
    """A compressed input ends before its compressed stream does: part of the export is missing."""


# The compressions whose decompressors say where their stream ends (``eof``, ``unused_data``): the
# standard library's. Others (zstd) are read as Beam reads them.
CHECKED = {CompressionTypes.GZIP: "gzip", CompressionTypes.BZIP2: "bzip2", CompressionTypes.DEFLATE: "deflate",
           CompressionTypes.LZMA: "xz/lzma"}


def truncated(path: str, compression_type: str, compressed_bytes: int) -> str:
    """The one line that says an input is truncated."""
    return (f"input {path} is truncated: its {CHECKED.get(compression_type, compression_type)} stream ends "
            f"before its end marker after {compressed_bytes:,} compressed bytes (an incomplete copy or upload?)")


class CheckedCompressedFile(CompressedFile):
    """Beam's ``CompressedFile`` for reading, failing when the file ends inside a compressed stream.

    Beam's reads until the underlying file returns nothing and calls that the end, whether or not the
    decompressor reached its stream's end marker. This one reads the same bytes the same way
    (concatenated streams, as multi-member gzip, one after the other) but at the end of the file the
    last stream must have ended: else ``InputTruncated``, naming the file.
    """

    def __init__(self, fileobj, compression_type: str, path: str, **kwargs):
        if compression_type not in CHECKED:
            raise ValueError(f"{compression_type} streams cannot be checked for their end")
        self._path = path
        self._compressed_bytes = 0
        super().__init__(fileobj, compression_type=compression_type, **kwargs)

    def _fetch_to_internal_buffer(self, num_bytes: int) -> None:
        if not self._read_eof and self._read_position > 0 and \
                self._read_buffer.tell() - self._read_position < num_bytes:
            # As Beam's: keep the unread bytes, drop the read ones, before a larger read.
            self._read_buffer.seek(self._read_position)
            data = self._read_buffer.read()
            self._clear_read_buffer()
            self._read_buffer.write(data)
        while not self._read_eof and self._read_buffer.tell() - self._read_position < num_bytes:
            if self._decompressor.eof:  # a stream ended: what follows is the next concatenated one, or nothing
                buf = self._decompressor.unused_data or self._read_raw()
                if not buf:
                    self._read_eof = True
                    break
                self._initialize_decompressor()
            else:
                buf = self._read_raw()
                if not buf:
                    raise InputTruncated(truncated(self._path, self._compression_type, self._compressed_bytes))
            self._read_buffer.write(self._decompressor.decompress(buf))

    def _read_raw(self) -> bytes:
        buf = self._file.read(self._read_size)
        self._compressed_bytes += len(buf)
        return buf

    def _rewind_file(self) -> None:
        super()._rewind_file()
        self._compressed_bytes = 0


def open_checked(path: str, compression_type: str = CompressionTypes.AUTO, raw=None):
    """``path`` opened for reading as ``FileSystems.open`` would, compressed streams checked for their end.

    ``raw`` is the file's bytes as stored, when the caller opened them (a Cloud Storage generation).
    """
    if compression_type == CompressionTypes.AUTO:
        compression_type = CompressionTypes.detect_compression_type(path)
    if raw is None:
        raw = FileSystems.open(path, "application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED)
    if compression_type == CompressionTypes.UNCOMPRESSED:
        return raw
    if compression_type not in CHECKED:
        return CompressedFile(raw, compression_type=compression_type)
    return CheckedCompressedFile(raw, compression_type, path)


class FixedFiles:
    """Mixin for a ``FileBasedSource``: its files are ``files``, as matched at launch.

    Put it before the ``FileBasedSource`` subclass in the bases, and call ``fix_files`` in ``__init__``.
    """

    def fix_files(self, files: tuple[InputFile, ...]) -> None:
        self._files = tuple(InputFile(*f) for f in files)
        self._generations = {f.path: f.generation for f in self._files if f.generation is not None}

    def _get_concat_source(self) -> concat_source.ConcatSource:
        if self._concat_source is None:
            # As FileBasedSource does: each file's source refers to a copy of this one without the
            # concat source, so splitting does not nest sources in sources.
            ref = pickler.roundtrip(self)
            sources = []
            for f in self._files:
                if not f.size_bytes:
                    continue  # an empty file has no rows (FileBasedSource skips them too)
                splittable = self.splittable and _determine_splittability_from_compression_type(
                    f.path, self._compression_type)
                sources.append(_SingleFileSource(ref, f.path, 0, f.size_bytes, min_bundle_size=self._min_bundle_size,
                                                 splittable=splittable))
            self._concat_source = concat_source.ConcatSource(sources)
        return self._concat_source

    def open_file(self, file_name: str):
        generation = self._generations.get(file_name)
        if generation is None:
            return open_checked(file_name, self._compression_type)
        return open_generation(file_name, generation, self._compression_type)


def open_generation(path: str, generation: int, compression_type: str = CompressionTypes.AUTO):
    """A Cloud Storage object opened at one generation, decompressed as ``FileSystems.open`` would."""
    from apache_beam.io.gcp import gcsio  # only with apache-beam[gcp], as every gs:// path
    from google.api_core.exceptions import NotFound

    bucket, name = gcsio.parse_gcs_path(path)
    client = gcsio.GcsIO().client
    blob = client.bucket(bucket).blob(name, generation=generation)
    try:
        blob.reload()
    except NotFound:
        raise InputChanged(f"input {path} was replaced or deleted after the job was launched "
                           f"(generation {generation} matched at launch is gone)") from None
    return open_checked(path, compression_type, raw=gcsio.BeamBlobReader(blob))


def gcs_generations(paths: list[str]) -> dict[str, int]:
    """The generation of each ``gs://`` path, one listing per folder; empty without the GCS client.

    Recorded so workers read what was matched; a path whose generation cannot be had is read
    as it is when the worker opens it (logged).
    """
    wanted = [p for p in paths if p.startswith("gs://")]
    if not wanted:
        return {}
    try:
        from apache_beam.io.gcp import gcsio
        client = gcsio.GcsIO().client
    except Exception as exc:  # noqa: BLE001 - no GCS client here: nothing to pin, say so once
        log.warning("inputs: Cloud Storage generations not recorded (%s); files are read as they are then", exc)
        return {}
    found: dict[str, int] = {}
    folders: dict[tuple[str, str], None] = {}
    for path in wanted:
        bucket, name = gcsio.parse_gcs_path(path)
        folders[(bucket, name.rpartition("/")[0] + "/" if "/" in name else "")] = None
    try:
        for bucket, prefix in folders:
            for blob in client.list_blobs(client.bucket(bucket), prefix=prefix or None):
                found[f"gs://{bucket}/{blob.name}"] = int(blob.generation)
    except Exception as exc:  # noqa: BLE001 - the files were matched: a listing error only loses the pin
        log.warning("inputs: Cloud Storage generations not recorded (%s); files are read as they are then", exc)
        return {}
    missing = [p for p in wanted if p not in found]
    if missing:
        log.warning("inputs: no generation found for %s; read as it is then", ", ".join(missing[:3]))
    return {p: found[p] for p in wanted if p in found}
