"""Whole runs against a service whose ATS route misbehaves for some members (``tests/hostile_server.py``).

Per-member routes, batch routes and the streaming mode: the run ends (exit 3),
each misbehaving member is FAILED with the reason that names what happened,
every other member is OK with the reference answer, and the auth secret is in
no output file or log and reached no other origin.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from beam_pipeline import cli
from tests.hostile_server import HostileServer, instance_key
from tests.test_hostile_endpoints import BATCH, KEY_ENV, SECRET, hostile_partner, reference

AS_OF = "2026-11-24"
FEATURES = ("AVG_POINTS_BOUGHT", "AVG_REVENUE_USD", "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT",
            "LAST_3_TRANSACTIONS_AVG_REVENUE_USD", "PCT_BUY_TRANSACTIONS", "PCT_GIFT_TRANSACTIONS",
            "PCT_REDEEM_TRANSACTIONS", "DAYS_SINCE_LAST_TRANSACTION")


@pytest.fixture
def servers(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with HostileServer(rate=0, secret=SECRET) as other, \
            HostileServer(rate=0.3, secret=SECRET, other=other.url, bomb_bytes=128 << 20) as hostile:
        yield hostile, other


def check_rows(server: HostileServer, rows: list[dict]) -> set[str]:
    """Each called member's row against its behaviour; returns the behaviours met."""
    met = set()
    for row in rows:
        if row["STATUS"] == "NO_TRANSACTIONS":
            continue
        features = {name: row[name] for name in FEATURES}
        behaviour = server.affected.get(instance_key(features))
        if behaviour is None:
            assert row["STATUS"] == "OK", row["ERROR"]
            assert (row["ATS_PREDICTION"], row["RESP_PREDICTION"], row["OFFER"]) == reference(features)
        else:
            assert row["STATUS"] == "FAILED", (behaviour, row)
            assert row["ERROR"].startswith("ats: ") and server.reason_fits(behaviour, row["ERROR"]), \
                (behaviour, row["ERROR"])
        met.add(behaviour or "healthy")
    return met


def assert_secret_kept(output: Path, other: HostileServer, logs: str) -> None:
    assert other.requests == 0 and other.secret_seen == 0
    for path in output.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in logs


@pytest.mark.parametrize("endpoints", [None, BATCH], ids=["per-member", "batch"])
def test_a_run_against_a_hostile_endpoint_ends_with_each_member_s_outcome(
        export, servers, tmp_path, endpoints, caplog, capsys):
    hostile, other = servers
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        code = cli.main(["--input", str(export), "--output", str(out), "--as-of", AS_OF, "--log-level", "INFO",
                         "--partner-config", str(hostile_partner(tmp_path, hostile.url, endpoints))])
    assert code == 3
    rows = pq.read_table(out / "results").to_pylist()
    met = check_rows(hostile, rows)
    assert "healthy" in met and len(met) >= 4, met
    run = json.loads((out / "run.json").read_text())
    assert run["accounting"]["members_failed"] == sum(r["STATUS"] == "FAILED" for r in rows) > 0
    captured = capsys.readouterr()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]  # no per-member traceback
    assert_secret_kept(out, other, caplog.text + captured.out + captured.err)


def test_the_streaming_mode_gives_each_behaviour_the_same_treatment(export, servers, tmp_path, caplog, capsys):
    hostile, other = servers
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        code, _ = cli.run(["--streaming", "--input", str(export), "--output", str(out), "--as-of", AS_OF,
                           "--rate", "200", "--debounce-seconds", "2", "--log-level", "INFO",
                           "--partner-config", str(hostile_partner(tmp_path, hostile.url))])
    assert code == 3
    rows = pq.read_table(out / "results").to_pylist()
    met = check_rows(hostile, rows)
    assert "healthy" in met and len(met) >= 4, met
    captured = capsys.readouterr()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]  # no per-member traceback
    assert_secret_kept(out, other, caplog.text + captured.out + captured.err)
