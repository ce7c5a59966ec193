"""The heartbeat's numbers (pure) and its timing (a fake clock, no sleeps)."""
from __future__ import annotations

import logging

import pytest

from beam_pipeline.heartbeat import MEMBERS, READ, Heartbeat, describe
from transforms import progress


def test_reading_phase_gives_percent_of_input_and_eta():
    snap = {"rows_read": 3000, "bytes_read": 250_000}
    beat = describe(snap, {"rows_read": 1000}, elapsed_s=20, interval_s=10, phase_s=20, total_bytes=1_000_000)
    assert beat.fields["phase"] == READ
    assert beat.fields["percent"] == 25.0
    assert beat.fields["eta_s"] == 60.0  # a quarter in 20 s: three quarters in 60 s
    assert beat.fields["rows_per_s"] == 200.0
    assert "25.0% of the input" in beat.message and "ETA read 60s" in beat.message


def test_members_phase_counts_transactions_of_members_done():
    snap = {"rows_read": 5000, "transactions": 4000, progress.MEMBERS_CALLED: 300,
            progress.TRANSACTIONS_DONE: 1000, "requests_ats_ok": 300, "requests_resp_ok": 300,
            "requests_offer_ok": 290, "requests_offer_http_error": 10}
    previous = {"requests_ats_ok": 100, "requests_resp_ok": 100, "requests_offer_ok": 100}
    beat = describe(snap, previous, elapsed_s=40, interval_s=10, phase_s=30, total_bytes=1_000_000)
    assert beat.fields["phase"] == MEMBERS
    assert beat.fields["members_done"] == 300 and beat.fields["requests"] == 900
    assert beat.fields["requests_per_s"] == 60.0
    assert beat.fields["percent"] == 25.0 and beat.fields["eta_s"] == 90.0
    assert "300 members done" in beat.message and "60 requests/s" in beat.message
    assert "concurrency_limit" not in beat.fields and "limit" not in beat.message


def test_members_phase_shows_each_endpoints_limit_on_calls_in_flight():
    snap = {"transactions": 10, progress.MEMBERS_CALLED: 3, "requests_ats_ok": 3,
            "concurrency_limit_ats": 48, "concurrency_limit_resp": 52, "concurrency_limit_offer": 7}
    beat = describe(snap, {}, elapsed_s=10, interval_s=10, phase_s=5, total_bytes=None)
    assert beat.fields["concurrency_limit"] == {"ats": 48, "offer": 7, "resp": 52}
    assert ", calls in flight limit ats 48, offer 7, resp 52," in beat.message


def test_unknown_size_gives_no_percent():
    beat = describe({"rows_read": 10, "bytes_read": 500}, {}, 5, 5, 5, total_bytes=None)
    assert beat.fields["percent"] is None and beat.fields["eta_s"] is None
    assert "%" not in beat.message and "ETA" not in beat.message


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clean_progress():
    progress.reset()
    yield
    progress.reset()


def test_beats_every_interval_and_announces_the_end_of_reading(caplog, clean_progress):
    caplog.set_level(logging.INFO, logger="beam_pipeline.heartbeat")
    clock = FakeClock()
    heartbeat = Heartbeat(10, total_bytes=1000, clock=clock)
    progress.add("rows_read", 50)
    progress.add("bytes_read", 500)
    clock.now += 4
    assert heartbeat.tick() is None  # not yet time
    clock.now += 6
    beat = heartbeat.tick()
    assert beat.fields["percent"] == 50.0 and beat.fields["elapsed_s"] == 10.0
    assert not any("stage read+parse finished" in r.message for r in caplog.records)

    progress.add("transactions", 40)
    progress.member_called(10)
    clock.now += 1
    assert heartbeat.tick() is None
    finished = [r.message for r in caplog.records if "stage read+parse finished" in r.message]
    assert finished == ["stage read+parse finished by 11.0s: 50 rows read, 40 transactions, "
                        "0 member-only, 0 dead letters"]
    clock.now += 9
    beat = heartbeat.tick()
    assert beat.fields["phase"] == MEMBERS and beat.fields["percent"] == 25.0
    assert beat.fields["eta_s"] == 27.0  # 25% took 9 s of the members phase
    assert [r.progress["elapsed_s"] for r in caplog.records if hasattr(r, "progress")] == [10.0, 20.0]


def test_workers_in_other_processes_only_report_time(clean_progress):
    clock = FakeClock()
    heartbeat = Heartbeat(5, total_bytes=1000, live=False, clock=clock)
    progress.add("rows_read", 999)  # not this process's counts to show
    clock.now += 5
    beat = heartbeat.tick()
    assert beat.fields == {"elapsed_s": 5.0} and "no live counts" in beat.message


def test_thread_starts_and_stops_and_zero_disables(clean_progress):
    with Heartbeat(0.05, total_bytes=None, poll_s=0.01) as heartbeat:
        assert heartbeat._thread is not None and heartbeat._thread.is_alive()
    assert not heartbeat._thread.is_alive()
    with Heartbeat(0, total_bytes=None) as off:
        assert off._thread is None
