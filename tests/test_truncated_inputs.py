"""A compressed export cut short is an error naming the file, at launch or in the read: never a partial run."""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_pipeline import cli, generate, inputs
from lantern.partner import load_named
from transforms.input_files import InputFile, InputTruncated, open_checked

AS_OF = "2026-11-24"
COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress, ".deflate": zlib.compress}


@pytest.fixture(scope="module")
def export() -> bytes:
    out = io.StringIO()
    generate.write(out, 3000, seed=7)
    return out.getvalue().encode()


def _read(path: Path) -> bytes:
    with open_checked(str(path)) as handle:
        chunks = []
        while chunk := handle.read(1 << 14):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("suffix", sorted(COMPRESS))
def test_a_stream_cut_anywhere_fails_the_read_and_whole_or_concatenated_streams_read_whole(suffix, export, tmp_path):
    compress = COMPRESS[suffix]
    whole = compress(export)
    cases = {"whole": whole, "members": compress(export[:1000]) + compress(export[1000:])}
    for name, data in cases.items():
        (tmp_path / f"{name}{suffix}").write_bytes(data)
        assert _read(tmp_path / f"{name}{suffix}") == export, name
    cuts = {"tenth": whole[:len(whole) * 9 // 10], "last byte": whole[:-1], "trailer": whole[:-8],
            "second member": cases["members"][:len(compress(export[:1000])) + 20]}
    for name, data in cuts.items():
        path = tmp_path / f"cut-{name.replace(' ', '-')}{suffix}"
        path.write_bytes(data)
        with pytest.raises(InputTruncated, match=f"input {path} is truncated: .* ends before its end marker"):
            _read(path)
        with pytest.raises(inputs.ConfigError, match=f"input {path} is truncated"):
            inputs.check_complete(InputFile(str(path), len(data)))


def test_the_launch_check_of_bzip2_and_xz_reads_only_the_tail(export):
    for compress, ends in ((bz2.compress, inputs.bzip2_ends), (lzma.compress, inputs.xz_ends)):
        data = compress(export) + compress(export[:100])
        assert ends(data[-4096:])
        assert not any(ends(data[:cut][-4096:]) for cut in range(len(data) - 40, len(data)))


def _cli(source: Path, out: Path, reader: str) -> int:
    return cli.main(["--input", str(source), "--output", str(out), "--features-only", "--as-of", AS_OF,
                     "--reader", reader, "--log-level", "WARNING"])


@pytest.mark.parametrize("suffix", [".gz", ".bz2"])
def test_a_truncated_export_stops_the_run_before_it_starts(suffix, export, tmp_path, capsys):
    whole = COMPRESS[suffix](export)
    source = tmp_path / f"export.csv{suffix}"
    source.write_bytes(whole[:len(whole) * 9 // 10])
    assert _cli(source, tmp_path / "out", "blocks") == 2
    assert capsys.readouterr().err.startswith(f"error: input {source} is truncated: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("reader", ["blocks", "lines"])
@pytest.mark.parametrize("suffix", [".gz", ".bz2"])
def test_an_export_cut_after_launch_fails_the_job_and_nothing_is_published(suffix, reader, export, tmp_path, capsys,
                                                                           monkeypatch):
    source = tmp_path / f"export.csv{suffix}"
    source.write_bytes(COMPRESS[suffix](export))
    checked = inputs.inspect_inputs

    def cut_after_the_checks(*args):
        found = checked(*args)
        data = source.read_bytes()
        source.write_bytes(data[:len(data) * 9 // 10])
        return found

    monkeypatch.setattr(inputs, "inspect_inputs", cut_after_the_checks)
    out = tmp_path / "out"
    assert _cli(source, out, reader) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: input {source} is truncated: ") and err[-1].endswith("the run was not published")
    assert not (out / "run.json").exists() and not list(out.glob("results"))


def test_a_gzip_too_large_to_check_at_launch_fails_in_the_read(export, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(inputs, "FULL_CHECK_BYTES", 0)
    whole = gzip.compress(export)
    source = tmp_path / "big.csv.gz"
    source.write_bytes(whole[:-4])  # all the rows, only the trailer's length is missing
    out = tmp_path / "out"
    assert _cli(source, out, "blocks") == 1
    assert f"error: input {source} is truncated: " in capsys.readouterr().err
    assert not (out / "run.json").exists()


def test_the_launch_decompresses_at_most_its_budget(export, tmp_path, monkeypatch):
    data = gzip.compress(export)
    for name in "abc":
        (tmp_path / f"{name}.csv.gz").write_bytes(data)
    (tmp_path / "d.csv.gz").write_bytes(data[:-4])  # past the budget: left to the read
    monkeypatch.setattr(inputs, "FULL_CHECK_BUDGET", 3 * len(data))
    spent = []
    check = inputs.check_complete
    monkeypatch.setattr(inputs, "check_complete", lambda f, most: spent.append(check(f, most)) or spent[-1])
    files, _ = inputs.inspect_inputs([str(tmp_path / "*.csv.gz")], load_named("default"), "default.yaml")
    assert len(files) == 4 and spent == [len(data)] * 3 + [0]


@pytest.mark.parametrize("reader", ["blocks", "lines"])
def test_a_multi_member_gzip_reads_every_row(reader, export, tmp_path):
    lines = export.splitlines(keepends=True)
    members = b"".join(gzip.compress(b"".join(lines[i:i + 700])) for i in range(0, len(lines), 700))
    plain, packed = tmp_path / "export.csv", tmp_path / "members.csv.gz"
    plain.write_bytes(export)
    packed.write_bytes(members)
    runs = []
    for source in (plain, packed):
        out = tmp_path / f"out-{source.name}"
        assert _cli(source, out, reader) == 0
        summary = json.loads((out / "run.json").read_text())
        results = sorted(pq.read_table(out / "results").to_pylist(), key=lambda r: r["MEMBER_ID"])
        runs.append((summary["accounting"], results))
    assert runs[0] == runs[1]
    assert runs[1][0]["rows_read"] == len(lines) - 1  # every row but the header
