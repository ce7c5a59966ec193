"""The files matched at launch are the job's input: nothing that lands later is read."""
from __future__ import annotations

import datetime as dt
import types
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter

from beam_pipeline import inputs
from beam_pipeline.pipeline import BLOCKS, LINES, JobConfig, build_pipeline
from lantern.member_table import shards_for
from lantern.partner import load_named
from transforms import input_files
from transforms.features import SHARD_MEMBERS
from transforms.input_files import InputFile

AS_OF = dt.date(2026, 11, 24)
HEADER = "MEMBER_ID,LAST_TRANSACTION_TS,LAST_TRANSACTION_TYPE,LAST_TRANSACTION_POINTS_BOUGHT,LAST_TRANSACTION_REVENUE_USD\n"


def rows(prefix: str, n: int) -> str:
    return "".join(f"{prefix}{i},2026-01-0{1 + i % 9} 10:00:00,buy,{i},1.5\n" for i in range(n))


@pytest.mark.parametrize("reader", [BLOCKS, LINES])
def test_a_file_added_or_grown_after_launch_is_not_read(reader, tmp_path, local_runner):
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "a.csv").write_text(HEADER + rows("A", 20))
    partner = load_named("default")
    files, layouts = inputs.inspect_inputs([str(folder / "*.csv")], partner, "partner_options/default.yaml")
    staging = tmp_path / "staging"
    job = JobConfig(tuple(files), layouts, partner, AS_OF, str(staging), features_only=True, reader=reader)
    pipeline = beam.Pipeline(runner=local_runner)
    build_pipeline(pipeline, job)
    # After launch: a new file in the glob's folder (a header the job never read), and rows appended.
    (folder / "b.csv").write_text(HEADER.replace("MEMBER_ID,", "ID,") + rows("B", 20))
    with open(folder / "a.csv", "a") as grown:
        grown.write(rows("LATE", 5))
    pipeline.run().wait_until_finish()
    results = pq.read_table(staging / "results").column("MEMBER_ID").to_pylist()
    assert sorted(results) == sorted(f"A{i}" for i in range(20))
    assert not list((staging / "dead_letter").glob("*.parquet")) or \
        pq.read_table(staging / "dead_letter").num_rows == 0


def test_the_launch_record_names_each_file_with_its_size(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text(HEADER + rows("A", 3))
    [found] = inputs.match_inputs([str(tmp_path / "*.csv")])
    assert found == InputFile(str(path), path.stat().st_size, None)
    assert found.as_json() == {"path": str(path), "size_bytes": path.stat().st_size}
    assert InputFile("gs://b/x.csv", 10, 7).as_json() == {"path": "gs://b/x.csv", "size_bytes": 10, "generation": 7}


def test_cloud_storage_objects_are_recorded_with_their_generation(monkeypatch, dataflow_extra):
    from apache_beam.io.gcp import gcsio

    listed = []

    class Client:
        def bucket(self, name):
            return types.SimpleNamespace(name=name)

        def list_blobs(self, bucket, prefix=None):
            listed.append((bucket.name, prefix))
            return [types.SimpleNamespace(name=f"{prefix}{n}.csv", generation=g) for n, g in (("a", 11), ("b", 12))]

    monkeypatch.setattr(gcsio, "GcsIO", lambda: types.SimpleNamespace(client=Client()))
    got = input_files.gcs_generations(["gs://bk/day/a.csv", "gs://bk/day/b.csv", "/local/c.csv"])
    assert got == {"gs://bk/day/a.csv": 11, "gs://bk/day/b.csv": 12}
    assert listed == [("bk", "day/")]  # one listing per folder, not one request per file


def test_a_compressed_input_counts_as_its_likely_size_for_the_shuffle(tmp_path):
    plain, packed = InputFile(str(tmp_path / "a.csv"), 100), InputFile(str(tmp_path / "a.csv.gz"), 100)
    assert inputs.estimated_bytes([plain, packed]) == 100 + 100 * inputs.COMPRESSION_RATIO


def test_an_input_replaced_after_launch_fails_the_read_with_one_clear_line(monkeypatch, dataflow_extra):
    from apache_beam.io.gcp import gcsio
    from google.api_core.exceptions import NotFound

    class Blob:
        def __init__(self, name, generation):
            self.generation = generation

        def reload(self):
            raise NotFound("gone")

    client = types.SimpleNamespace(bucket=lambda name: types.SimpleNamespace(blob=Blob))
    monkeypatch.setattr(gcsio, "GcsIO", lambda: types.SimpleNamespace(client=client))
    with pytest.raises(input_files.InputChanged, match=r"gs://bk/day/a.csv was replaced .*generation 11"):
        input_files.open_generation("gs://bk/day/a.csv", 11)


def test_every_reader_reads_the_list_not_the_glob():
    """Beam's FileBasedSource matches its pattern wherever it is split; ours is only the list."""
    from beam_pipeline.pipeline import ExportBlockSource, ExportLineSource

    here = Path(__file__)
    files = (InputFile(str(here), here.stat().st_size),)
    for source in (ExportBlockSource(files), ExportLineSource(files)):
        assert isinstance(source, input_files.FixedFiles)
        [split] = list(source.split(desired_bundle_size=1 << 30))
        assert split.source._file_name == str(here) and split.stop_position == here.stat().st_size


def _features_run(export: Path, tmp_path: Path, runner, shards: int) -> tuple[dict, int]:
    """A features-only run of the block reader with ``shards`` shuffle shards: (results by member, most
    members one shard key held)."""
    partner = load_named("default")
    files, layouts = inputs.inspect_inputs([str(export)], partner, "partner_options/default.yaml")
    staging = tmp_path / f"staging-{export.stem}-{shards}"
    job = JobConfig(tuple(files), layouts, partner, AS_OF, str(staging), features_only=True, shards=shards)
    pipeline = beam.Pipeline(runner=runner)
    build_pipeline(pipeline, job)
    result = pipeline.run()
    result.wait_until_finish()
    [dist] = result.metrics().query(MetricsFilter().with_name(SHARD_MEMBERS))["distributions"]
    return {r["MEMBER_ID"]: r for r in pq.read_table(staging / "results").to_pylist()}, dist.committed.max


def test_with_a_tiny_shard_budget_no_key_holds_more_members_as_the_job_grows(tmp_path, local_runner):
    from beam_pipeline import generate

    sizes, held, shard_counts = (400, 4000), [], []
    for n in sizes:
        export = tmp_path / f"export{n}.csv"
        with open(export, "w", encoding="utf-8", newline="") as out:
            generate.write(out, n, seed=3)
        shards = shards_for(export.stat().st_size, shard_bytes=4 << 10, minimum=1)
        results, most = _features_run(export, tmp_path, local_runner, shards)
        held.append(most)
        shard_counts.append(shards)
    assert shard_counts[1] >= 8 * shard_counts[0]  # ten times the input: about ten times the shards
    assert held[1] <= 2 * held[0]  # ...and about the same members per key
    # The same job in one shard holds every member in one key: what the budget prevents.
    one_shard, most_in_one = _features_run(export, tmp_path, local_runner, 1)
    assert most_in_one == len(one_shard) > 5 * held[1]
    # Digit for digit the same results whatever the shard count.
    assert results == one_shard
