"""Output folders: a folder that holds a run is refused unless --overwrite, which replaces all of it.

Local folders, and an object store (no folders, only names under a prefix, like gs://)
through a small in-memory Beam filesystem, so the code path for buckets runs offline.
"""
from __future__ import annotations

import posixpath
from typing import ClassVar

import pytest
from apache_beam.io.filesystem import FileMetadata, FileSystem
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import run_folder
from lantern.errors import ConfigError


class MemStore(FileSystem):
    """Objects in a dict, matched by prefix like GCS: enough for listing, existence and deletion."""

    objects: ClassVar[dict[str, bytes]] = {}

    @classmethod
    def scheme(cls):
        return "memstore"

    def join(self, basepath, *paths):
        return posixpath.join(basepath, *paths)

    def split(self, path):
        return posixpath.split(path)

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        for path, data in sorted(self.objects.items()):
            if path.startswith(dir_or_prefix):
                yield FileMetadata(path, len(data))

    def exists(self, path):
        return path in self.objects

    def delete(self, paths):
        for path in paths:
            del self.objects[path]

    mkdirs = create = open = copy = rename = size = last_updated = checksum = metadata = None  # unused here


@pytest.fixture
def store():
    MemStore.objects = {}
    yield MemStore.objects
    MemStore.objects = {}


def _touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_missing_an_empty_or_an_unrelated_folder_holds_no_run(tmp_path):
    assert run_folder.run_marker(str(tmp_path / "nope")) is None
    assert run_folder.run_marker(str(tmp_path)) is None
    _touch(tmp_path / "notes.txt")
    (tmp_path / "results").mkdir()  # an empty folder is not a run's part
    _touch(tmp_path / "_staging-20260101T000000Z-0000abcd" / "results" / "part-0.parquet")
    assert run_folder.run_marker(str(tmp_path)) is None
    run_folder.check(str(tmp_path), overwrite=False)


@pytest.mark.parametrize("name", ["run.json", "results/part-0.parquet", "metrics/m.parquet", "report.html"])
def test_any_part_of_a_run_marks_the_folder_and_is_refused_without_overwrite(name, tmp_path):
    _touch(tmp_path / name)
    with pytest.raises(ConfigError) as err:
        run_folder.check(str(tmp_path), overwrite=False)
    assert str(err.value) == (f"output {tmp_path} already holds a run ({name.split('/')[0]}); give a new folder, "
                              "or --overwrite to replace that run and everything in the folder")
    run_folder.check(str(tmp_path), overwrite=True)


def test_clear_removes_everything_but_the_new_staging_folder(tmp_path):
    for name in ("run.json", "results/a.parquet", "dead_letter/b.parquet", "report.html", "offers.png",
                 "comparison.json", "_staging-old/results/c.parquet", "deep/er/file"):
        _touch(tmp_path / name)
    staging = tmp_path / "_staging-new"
    _touch(staging / "results" / "d.parquet")
    run_folder.clear(str(tmp_path), keep=str(staging))
    assert [p.name for p in tmp_path.iterdir()] == ["_staging-new"]
    assert (staging / "results" / "d.parquet").exists()


def test_an_object_store_folder_is_checked_and_cleared_the_same_way(store):
    out = "memstore://bucket/runs/2026-11-24"
    assert run_folder.run_marker(out) is None
    store[f"{out}/results/part-0.parquet"] = b"p"
    store[f"{out}/report.html"] = b"<html>"
    store[f"{out}/_staging-new/results/part-0.parquet"] = b"n"
    store["memstore://bucket/runs/2026-11-24-other/run.json"] = b"{}"  # a sibling with a common prefix
    assert run_folder.run_marker(out) == "results"
    with pytest.raises(ConfigError, match="already holds a run"):
        run_folder.check(out, overwrite=False)
    store[f"{out}/run.json"] = b"{}"
    assert run_folder.run_marker(out) == "run.json"
    run_folder.clear(out, keep=f"{out}/_staging-new")
    assert set(store) == {f"{out}/_staging-new/results/part-0.parquet",
                          "memstore://bucket/runs/2026-11-24-other/run.json"}
    assert FileSystems.exists(f"{out}/_staging-new/results/part-0.parquet")


def test_an_output_that_cannot_be_listed_is_one_line(monkeypatch):
    def denied(self, patterns, limits=None):
        raise PermissionError("403 storage.objects.list denied\nmore detail")

    monkeypatch.setattr(MemStore, "match", denied)
    with pytest.raises(ConfigError) as err:
        run_folder.check("memstore://bucket/out", overwrite=False)
    assert str(err.value) == ("output memstore://bucket/out: cannot list it: PermissionError: "
                              "403 storage.objects.list denied")
