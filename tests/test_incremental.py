"""Incremental runs: a day folded into a base state gives a full run's results digit for digit, and a base
that must not be folded into is refused (exit 2, one line, nothing published, the base untouched)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beam_pipeline import cli
from lantern import features as F
from lantern.feature_table import members_table
from lantern.member_table import MemberTable, shard_batches
from lantern.state_fold import base_batches, fold_shard
from lantern.state_manifest import STATE_SCHEMA

ROOT = Path(__file__).resolve().parent.parent
AS_OF = dt.date(2026, 11, 24)
T0 = 1_700_000_000_000_000


def _fold(rows: list[tuple[str, F.Transaction | None]]) -> dict[str, bytes]:
    """Rows through the block reader's column fold: member -> packed accumulator."""
    table = MemberTable()
    txns = [(m, t) for m, t in rows if t is not None]
    table.add_members([m for m, t in rows if t is None])
    if txns:
        ids = sorted({m for m, _ in txns})
        code = {m: i for i, m in enumerate(ids)}
        table.add(ids, np.array([code[m] for m, _ in txns]), np.array([t.ts_us for _, t in txns]),
                  np.array([t.type_code for _, t in txns]), np.array([t.points for _, t in txns]),
                  np.array([t.revenue for _, t in txns]))
    return dict(table.drain())


def _merge(parts: list[bytes]) -> bytes:
    return F.pack(F.merge(F.unpack(p) for p in parts))


def _incremental(history: dict[str, bytes], day: dict[str, bytes], shards: int = 4) -> dict[str, bytes]:
    """A base state and a day, through the shuffle's batches and ``fold_shard``, shard by shard."""
    state = pa.table({"MEMBER_ID": list(history), "ACC": list(history.values())}, schema=STATE_SCHEMA)
    by_shard: dict[int, list[bytes]] = {}
    for shard, batch in [*base_batches(state, shards), *shard_batches(day.items(), shards)]:
        by_shard.setdefault(shard, []).append(batch)
    out = {}
    for batches in by_shard.values():
        folded = fold_shard(batches, _merge)
        out.update(zip(folded.ids.to_pylist(), folded.accs.to_pylist(), strict=True))
    return out


# Few distinct timestamps, points and revenues: ties across the split (equal times, equal whole rows) are common.
_txn = st.builds(F.Transaction, st.sampled_from([T0, T0 + 1_000_000, T0 + 86_400_000_000]),
                 st.integers(0, 2), st.sampled_from([0.0, 1.5, 100.0, 0.1, 1e300, -2.5]),
                 st.sampled_from([0.0, 0.25, 3.3, 1e-300, 7.0]))
_row = st.tuples(st.sampled_from([f"M{i}" for i in range(6)]), st.none() | _txn)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(_row, st.booleans()), min_size=1, max_size=40))
def test_any_split_into_history_and_day_folds_to_the_full_state_byte_for_byte(rows):
    everything = _fold([row for row, _ in rows])
    history = _fold([row for row, in_day in rows if not in_day])
    day = _fold([row for row, in_day in rows if in_day])
    merged = _incremental(history, day)
    assert merged == everything
    ids = sorted(merged)
    full = members_table(pa.array(ids), pa.array([everything[m] for m in ids], pa.binary()), AS_OF)
    incr = members_table(pa.array(ids), pa.array([merged[m] for m in ids], pa.binary()), AS_OF)
    assert full.equals(incr)


def test_fold_shard_counts_carried_updated_and_new_members():
    history = _fold([("A", F.Transaction(T0, 0, 1.0, 1.0)), ("B", F.Transaction(T0, 1, 2.0, 2.0)), ("C", None)])
    day = _fold([("B", F.Transaction(T0 + 1, 2, 3.0, 3.0)), ("D", F.Transaction(T0, 0, 4.0, 4.0))])
    state = pa.table({"MEMBER_ID": list(history), "ACC": list(history.values())}, schema=STATE_SCHEMA)
    batches = [b for _, b in base_batches(state, 1)] + [b for _, b in shard_batches(day.items(), 1)]
    folded = fold_shard(batches, _merge)
    assert (folded.carried, folded.updated, folded.new) == (2, 1, 1)
    changed = dict(zip(folded.ids.to_pylist(), folded.changed.tolist(), strict=True))
    assert changed == {"A": False, "B": True, "C": False, "D": True}


# --- end to end ---------------------------------------------------------------------------------

def _run(*argv: str) -> int:
    return cli.main([*argv, "--features-only", "--as-of", AS_OF.isoformat(), "--heartbeat-seconds", "0",
                     "--log-level", "WARNING"])


def _results(folder: Path) -> pa.Table:
    return pq.read_table(folder / "results").sort_by("MEMBER_ID")


def _split(source: Path, folder: Path, day_every: int) -> tuple[Path, Path]:
    """The export's data lines into a history and a day (every ``day_every``-th line), each with the header."""
    header, *lines = source.read_text().splitlines(keepends=True)
    history, day = folder / "history.csv", folder / "day.csv"
    history.write_text(header + "".join(line for i, line in enumerate(lines) if i % day_every))
    day.write_text(header + "".join(line for i, line in enumerate(lines) if not i % day_every))
    return history, day


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """The bundled export: a full run over all of it, and a history run with the state the day folds into."""
    folder = tmp_path_factory.mktemp("incremental")
    history, day = _split(ROOT / "member_data.csv", folder, 7)
    assert _run("--input", str(ROOT / "member_data.csv"), "--output", str(folder / "full")) in (0, 3)
    assert _run("--input", str(history), "--output", str(folder / "base"), "--as-of", "2026-11-01") in (0, 3)
    return folder, day


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_day_folded_into_the_bundled_exports_history_equals_a_full_run(bundled):
    folder, day = bundled
    base_before = _tree(folder / "base")
    assert _run("--input", str(day), "--output", str(folder / "inc"), "--incremental-from", str(folder / "base")) == 0
    assert _results(folder / "inc").equals(_results(folder / "full"))
    assert _tree(folder / "base") == base_before
    summary = json.loads((folder / "inc" / "run.json").read_text())
    base = json.loads((folder / "base" / "run.json").read_text())
    full = json.loads((folder / "full" / "run.json").read_text())
    state = summary["state"]
    assert summary["incremental_from"] == base["run_id"]
    assert state["members"] == summary["accounting"]["members"] == full["accounting"]["members"]
    assert state["members_carried_over"] + state["members_updated"] == base["state"]["members"]
    assert state["members_new"] == state["members"] - base["state"]["members"] > 0
    assert state["transactions"] == full["accounting"]["transactions"]
    assert summary["accounting"]["rows_read"] == len(day.read_text().splitlines()) - 1  # today's rows only
    manifest = json.loads((folder / "inc" / "state" / "_manifest.json").read_text())
    assert [f["run_id"] for f in manifest["inputs"]] == [base["run_id"], summary["run_id"]]
    assert manifest["base_run_id"] == base["run_id"] and manifest["members"] == state["members"]
    # the new state is the full run's state, member for member
    assert pq.read_table(folder / "inc" / "state").sort_by("MEMBER_ID").equals(
        pq.read_table(folder / "full" / "state").sort_by("MEMBER_ID"))
    # a second line of history from the same base into another folder is allowed
    assert _run("--input", str(day), "--output", str(folder / "inc2"), "--incremental-from", str(folder / "base")) == 0
    assert _results(folder / "inc2").equals(_results(folder / "full"))


def _refused(capsys, *argv: str) -> str:
    assert _run(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _broken_base(bundled, name: str) -> Path:
    folder, _ = bundled
    broken = folder / name
    if broken.exists():
        shutil.rmtree(broken)
    shutil.copytree(folder / "base", broken)
    return broken


def _state_file(base: Path) -> Path:
    return next((base / "state").glob("*.parquet"))


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated"),
    ("corrupt", "corrupt"),
    ("layout", "layout version 0"),
    ("no_manifest", "no state/_manifest.json"),
    ("missing_file", "is missing"),
    ("unpublished", "no run.json"),
])
def test_a_base_that_cannot_be_folded_into_is_refused(bundled, capsys, tmp_path, damage, message):
    folder, day = bundled
    base = _broken_base(bundled, f"base-{damage}")
    state = _state_file(base)
    manifest_path = base / "state" / "_manifest.json"
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[:-100])
    elif damage == "corrupt":
        data = bytearray(state.read_bytes())
        data[len(data) // 2] ^= 0xFF
        state.write_bytes(bytes(data))
    elif damage == "layout":
        manifest = json.loads(manifest_path.read_text())
        manifest_path.write_text(json.dumps({**manifest, "layout_version": 0}))
    elif damage == "no_manifest":
        manifest_path.unlink()
    elif damage == "missing_file":
        state.unlink()
    elif damage == "unpublished":
        (base / "run.json").unlink()
    before = _tree(base)
    line = _refused(capsys, "--input", str(day), "--output", str(tmp_path / "out"), "--incremental-from", str(base))
    assert message in line and "--incremental-from" in line
    assert not (tmp_path / "out").exists()
    assert _tree(base) == before


def test_a_file_already_folded_is_refused_whatever_its_path(bundled, capsys, tmp_path):
    folder, day = bundled
    line = _refused(capsys, "--input", str(folder / "history.csv"), "--output", str(tmp_path / "a"),
                    "--incremental-from", str(folder / "base"))
    assert "history.csv was already folded" in line
    renamed = tmp_path / "renamed.csv"
    shutil.copy(folder / "history.csv", renamed)
    line = _refused(capsys, "--input", str(day), "--input", str(renamed), "--output", str(tmp_path / "b"),
                    "--incremental-from", str(folder / "base"))
    assert "renamed.csv was already folded" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_base_of_another_partner_or_the_output_itself_is_refused(bundled, capsys, tmp_path):
    folder, day = bundled
    base = _broken_base(bundled, "base-partner")
    manifest_path = base / "state" / "_manifest.json"
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "partner": "acme_rewards"}))
    line = _refused(capsys, "--input", str(day), "--output", str(tmp_path / "out"), "--incremental-from", str(base))
    assert "partner 'acme_rewards'" in line
    line = _refused(capsys, "--input", str(day), "--output", str(folder / "base"), "--overwrite",
                    "--incremental-from", str(folder / "base"))
    assert "new folder" in line


# --- --changed-only ------------------------------------------------------------------------------

def test_changed_only_calls_only_members_with_rows_today_and_carries_the_others(bundled, server_url, tmp_path):
    folder, day = bundled
    called = ["--endpoint-url", server_url, "--heartbeat-seconds", "0", "--log-level", "WARNING"]
    base, changed, every = tmp_path / "base", tmp_path / "changed", tmp_path / "every"
    assert cli.main(["--input", str(folder / "history.csv"), "--output", str(base), "--as-of", "2026-11-01",
                     *called]) == 0
    assert cli.main(["--input", str(day), "--output", str(changed), "--incremental-from", str(base),
                     "--changed-only", "--as-of", AS_OF.isoformat(), *called]) == 0
    assert cli.main(["--input", str(day), "--output", str(every), "--incremental-from", str(base),
                     "--as-of", AS_OF.isoformat(), *called]) == 0
    now, full, before = _results(changed), _results(every), _results(base)
    summary = json.loads((changed / "run.json").read_text())
    assert now.column("MEMBER_ID").equals(full.column("MEMBER_ID"))
    features = ["MEMBER_ID", *F.SPEC_FEATURES, "N_TRANSACTIONS", "PARTNER", "AS_OF"]
    assert now.select(features).equals(full.select(features))  # features as of today for everyone
    carried = now.filter(now.column("DECISION_CARRIED_OVER"))
    fresh = now.filter(pa.compute.invert(now.column("DECISION_CARRIED_OVER")))
    state = summary["state"]
    assert carried.num_rows == state["members_decision_carried_over"] > 0
    # carried: members with transactions and no rows today, with the base run's offer and predictions
    previous = {r["MEMBER_ID"]: r for r in before.to_pylist()}
    for row in carried.to_pylist():
        assert row["ATTEMPTS"] == 0 and row["ATS_LATENCY_MS"] is None
        assert (row["OFFER"], row["ATS_PREDICTION"], row["STATUS"]) == (
            previous[row["MEMBER_ID"]]["OFFER"], previous[row["MEMBER_ID"]]["ATS_PREDICTION"], "OK")
    # called: every other member, as the run without --changed-only decided them
    assert fresh.select(["MEMBER_ID", "OFFER", "STATUS"]).equals(
        full.filter(pa.compute.is_in(full.column("MEMBER_ID"), value_set=fresh.column("MEMBER_ID")))
        .select(["MEMBER_ID", "OFFER", "STATUS"]))
    assert summary["requests"]["offer"]["ok"] == summary["accounting"]["members_ok"] - carried.num_rows
    assert summary["accounting"]["members"] == state["members"]


# --- a stream started from a batch state ----------------------------------------------------------

def test_a_stream_started_from_a_batch_state_picks_up_where_the_batch_left_off(bundled, server_url, tmp_path):
    folder, day = bundled
    out = tmp_path / "stream"
    code, run = cli.run(["--streaming", "--input", str(day), "--incremental-from", str(folder / "base"),
                         "--output", str(out), "--endpoint-url", server_url, "--as-of", AS_OF.isoformat(),
                         "--rate", "1000", "--debounce-seconds", "2", "--log-level", "WARNING"])
    assert code == 0
    base = json.loads((folder / "base" / "run.json").read_text())
    assert run["incremental_from"] == base["run_id"]
    rows = pq.read_table(out / "results").to_pylist()
    last = {r["MEMBER_ID"]: r for r in sorted(rows, key=lambda r: r["UPDATE_SEQ"])}
    full = {r["MEMBER_ID"]: r for r in _results(folder / "full").to_pylist()}
    features = [*F.SPEC_FEATURES, "N_TRANSACTIONS"]
    compared = 0
    for member, row in last.items():
        if row["N_TRANSACTIONS"]:  # the stream's last update counts the batch's rows and the day's
            assert {f: row[f] for f in features} == {f: full[member][f] for f in features}, member
            compared += 1
    assert compared > 100
    day_rows = run["accounting"]["rows_replayed"]
    assert day_rows == len(day.read_text().splitlines()) - 1
    assert run["accounting"]["transactions"] + run["accounting"]["dead_letter_rows"] <= day_rows


def test_a_stream_refuses_a_base_that_cannot_be_folded_into(bundled, capsys, tmp_path):
    folder, _ = bundled
    line = _refused(capsys, "--streaming", "--input", str(folder / "history.csv"), "--output", str(tmp_path / "s"),
                    "--incremental-from", str(folder / "base"), "--skip-preflight")
    assert "already folded" in line


def test_a_manifest_reads_back_what_it_wrote_and_names_a_missing_field():
    from lantern.state_manifest import FoldedFile, Manifest, StateFile

    manifest = Manifest("R2", "2026-11-24", "default", 1, 10, 40, (StateFile("part-0.parquet", 700, "sha256:ab"),),
                        (FoldedFile("gs://b/day1.csv", 100, "gs:xyz", "R1", 1733000000000000),
                         FoldedFile("/data/day2.csv", 50, "sha256:cd", "R2")), base_run_id="R1")
    data = json.loads(json.dumps(manifest.as_json()))
    assert "generation" not in data["inputs"][1]
    assert Manifest.from_json(data) == manifest
    del data["partner"]
    with pytest.raises(ValueError, match="partner"):
        Manifest.from_json(data)
