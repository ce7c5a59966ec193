"""A gs:// output is probed at launch: one object written and deleted, with the launcher's identity.

Cloud Storage is a fake filesystem here (no network): Beam's ``FileSystems`` hands gs:// paths to
it, and it fails a create or a delete the way a missing IAM permission does.
"""
from __future__ import annotations

import io

import pytest
from apache_beam.io.filesystem import MatchResult
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import cli, launch, outputs, preflight
from lantern.errors import ConfigError

OUTPUT = "gs://acme-offers/runs/2026-11-24"


class Forbidden(Exception):
    """What the Cloud Storage client raises for a missing permission."""


class FakeBucket:
    """Objects in a dict; ``deny`` is the permission this identity lacks (``create`` or ``delete``)."""

    def __init__(self, deny: str | None = None):
        self.objects: dict[str, bytes] = {}
        self.deny = deny
        self.calls: list[tuple[str, str]] = []

    def join(self, base: str, *parts: str) -> str:
        return "/".join([base.rstrip("/"), *parts])

    def create(self, path: str, mime_type=None, compression_type=None):
        self.calls.append(("create", path))
        bucket = self

        class Upload(io.BytesIO):
            def close(self):  # like an upload: the object exists, or the error shows, when it ends
                if not self.closed:
                    if bucket.deny == "create":
                        raise Forbidden("403 POST https://storage.googleapis.com/upload/storage/v1/b/acme-offers/o: "
                                        "lantern-worker@acme-prod.iam.gserviceaccount.com does not have "
                                        "storage.objects.create access\nmore detail")
                    bucket.objects[path] = self.getvalue()
                super().close()

        return Upload()

    def delete(self, paths: list[str]):
        for path in paths:
            self.calls.append(("delete", path))
            if self.deny == "delete":
                raise Forbidden(f"403 DELETE {path}: does not have storage.objects.delete access")
            del self.objects[path]

    def match(self, patterns, limits=None):
        return [MatchResult(p, []) for p in patterns]


@pytest.fixture
def bucket(monkeypatch):
    fake = FakeBucket()
    real = FileSystems.get_filesystem
    monkeypatch.setattr(FileSystems, "get_filesystem",
                        staticmethod(lambda path: fake if path.startswith("gs://") else real(path)))
    return fake


def test_a_writable_output_is_probed_and_left_as_it_was(bucket):
    outputs.check_writable(OUTPUT)
    (_, written), (_, deleted) = bucket.calls
    assert written == deleted and written.startswith(f"{OUTPUT}/{outputs.PROBE_PREFIX}")
    assert [op for op, _ in bucket.calls] == ["create", "delete"]
    assert bucket.objects == {}


def test_an_output_this_identity_cannot_write_fails_in_one_line(bucket):
    bucket.deny = "create"
    with pytest.raises(ConfigError) as error:
        outputs.check_writable(OUTPUT)
    message = str(error.value)
    assert message.startswith(f"output {OUTPUT} is not writable by this identity: 403 POST")
    assert "storage.objects.create" in message and "roles/storage.objectAdmin" in message
    assert "\n" not in message


def test_an_output_where_objects_cannot_be_deleted_fails_too(bucket):
    """Publishing renames (copy + delete): write-only access would fail at the very end of the run."""
    bucket.deny = "delete"
    with pytest.raises(ConfigError, match=r"cannot delete it: 403 DELETE .*storage.objects.delete"):
        outputs.check_writable(OUTPUT)


def test_a_launch_into_an_unwritable_output_stops_before_any_partner_call(bucket, tmp_path, monkeypatch, capsys):
    bucket.deny = "create"
    export = tmp_path / "export.csv"
    export.write_text("MEMBER_ID,LAST_TRANSACTION_TS,LAST_TRANSACTION_TYPE,LAST_TRANSACTION_POINTS_BOUGHT,"
                      "LAST_TRANSACTION_REVENUE_USD\nm1,2024-01-01 10:00:00,buy,10,1.5\n")
    asked = []
    monkeypatch.setattr(preflight, "check_endpoints", lambda partner, *a, **k: asked.append(partner))
    code = cli.main(["--input", str(export), "--output", OUTPUT, "--as-of", "2026-11-24",
                     "--endpoint-url", "https://ml.acme.example"])
    assert code == launch.EXIT_USAGE
    assert f"error: output {OUTPUT} is not writable by this identity" in capsys.readouterr().err
    assert asked == []  # the endpoint hosts were never contacted
