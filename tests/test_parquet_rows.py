"""WriteParquetRows writes what Beam's WriteToParquet wrote: same files, schema, values and nulls."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam import Create
from apache_beam.io.parquetio import WriteToParquet
from apache_beam.testing.test_pipeline import TestPipeline

from transforms.parquet_rows import WriteParquetRows

SCHEMA = pa.schema([("ID", pa.string()), ("N", pa.int64()), ("X", pa.float64()), ("DAY", pa.date32())])


def sample_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"ID": f"m{i}", "N": i if i % 3 else None, "X": i / 7 if i % 5 else None,
               "DAY": dt.date(2026, 1, 1) + dt.timedelta(days=i % 40)}
        if i % 11 == 0:
            del row["X"]  # a missing column is a null, as WriteToParquet makes it
        rows.append(row)
    return rows


def write(runner, folder, rows, transform) -> tuple[list[str], pa.Table]:
    """Rows through ``transform(prefix)``: the file names written, and their rows as one table."""
    with TestPipeline(runner=runner) as p:
        p | Create(rows, reshuffle=False) | transform(str(folder / "part"))
    files = sorted(folder.glob("*"))
    return [f.name for f in files], pa.concat_tables([pq.read_table(f) for f in files])


def beam_writer(prefix):
    return WriteToParquet(prefix, SCHEMA, file_name_suffix=".parquet")


def test_same_files_and_rows_as_write_to_parquet(local_runner, tmp_path):
    rows = sample_rows(300)
    # record batches of 7 rows, a table every 2 KB: tables leave both mid-bundle and at its end
    ours = write(local_runner, tmp_path / "ours", rows, lambda prefix: WriteParquetRows(prefix, SCHEMA, 7, 2048))
    beams = write(local_runner, tmp_path / "beam", rows, beam_writer)
    assert ours[0] == beams[0] == ["part-00000-of-00001.parquet"]
    assert pq.ParquetFile(tmp_path / "ours" / ours[0][0]).metadata.num_row_groups > 1
    assert ours[1].schema == beams[1].schema == SCHEMA
    expected = [{name: row.get(name) for name in SCHEMA.names} for row in rows]
    assert sorted(ours[1].to_pylist(), key=lambda r: r["ID"]) == sorted(expected, key=lambda r: r["ID"])
    assert sorted(beams[1].to_pylist(), key=lambda r: r["ID"]) == sorted(expected, key=lambda r: r["ID"])
    assert ours[1].column("X").null_count == len([r for r in rows if r.get("X") is None]) > 0


def test_no_rows_still_give_one_valid_empty_file(local_runner, tmp_path):
    ours = write(local_runner, tmp_path / "ours", [], lambda prefix: WriteParquetRows(prefix, SCHEMA))
    beams = write(local_runner, tmp_path / "beam", [], beam_writer)
    assert ours[0] == beams[0] == ["part-00000-of-00001.parquet"]
    assert ours[1].num_rows == 0 and ours[1].schema == SCHEMA


def test_tables_travel_with_their_own_coder_and_are_sized_without_pickling():
    from apache_beam import coders

    from transforms.table_coder import ArrowTableCoder

    table = pa.table({"MEMBER_ID": ["A", "B"], "N_TRANSACTIONS": [1, 0]})
    coder = coders.registry.get_coder(pa.Table)
    assert isinstance(coder, ArrowTableCoder)
    assert coder.decode(coder.encode(table)).equals(table)
    assert coder.get_impl().estimate_size(table) == table.nbytes
