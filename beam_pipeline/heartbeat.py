"""A progress line every N seconds while a local run is going, from ``transforms.progress``.

Why a thread and a process-local registry: on the FnApiRunner ``pipeline.run()``
blocks until the job is done and only then hands back the ``PipelineResult``
whose metrics could be queried, so nothing Beam offers can be polled mid-run.
The DoFns bump ``transforms.progress`` as they bump their Beam counters, and
this thread reads it. It is started only for the local runner; on Dataflow the
job's page shows progress and the counts live in the workers, not here.

The batch job has two phases on the local runner, split by the GroupByKey of
the member features: reading+parsing every row, then the members (features,
endpoint calls, result rows). Progress is given for the running phase: the share
of input bytes read, then the share of transactions whose member is done.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from transforms import progress

log = logging.getLogger(__name__)

READ, MEMBERS = "read", "members"
LIMIT_PREFIX = "concurrency_limit_"  # the endpoints' live limits on calls in flight (transforms.endpoints)


class Beat(NamedTuple):
    message: str
    fields: dict


def _sum(snap: dict[str, int], prefix: str) -> int:
    return sum(v for k, v in snap.items() if k.startswith(prefix))


def members_done(snap: dict[str, int]) -> int:
    return snap.get(progress.MEMBERS_CALLED, 0)


def requests_made(snap: dict[str, int]) -> int:
    return _sum(snap, "requests_")


def _rate(now: int, before: int, seconds: float) -> float | None:
    return (now - before) / seconds if seconds > 0 else None


def _eta(fraction: float | None, seconds_in_phase: float) -> float | None:
    if not fraction or fraction >= 1 or seconds_in_phase <= 0:
        return None
    return seconds_in_phase * (1 - fraction) / fraction


def describe(
    snap: dict[str, int],
    previous: dict[str, int],
    elapsed_s: float,
    interval_s: float,
    phase_s: float,
    total_bytes: int | None,
) -> Beat:
    """The heartbeat for counts ``snap`` (``previous`` is the last beat's, ``interval_s`` ago).

    ``phase_s`` is how long the current phase has run; the ETA assumes the rest
    of the phase goes at the phase's average pace so far.
    """
    rows, members = snap.get("rows_read", 0), members_done(snap)
    requests = requests_made(snap)
    phase = MEMBERS if members or requests else READ
    fields = {
        "elapsed_s": round(elapsed_s, 1),
        "phase": phase,
        "rows_read": rows,
        "members_done": members,
        "requests": requests,
        "rows_per_s": _rate(rows, previous.get("rows_read", 0), interval_s),
        "requests_per_s": _rate(requests, requests_made(previous), interval_s),
        "percent": None,
        "eta_s": None,
    }
    if phase == READ:
        fraction = min(snap.get("bytes_read", 0) / total_bytes, 1.0) if total_bytes else None
    else:
        transactions = snap.get("transactions", 0)
        fraction = min(snap.get(progress.TRANSACTIONS_DONE, 0) / transactions, 1.0) if transactions else None
    if fraction is not None:
        fields["percent"] = round(100 * fraction, 1)
        eta = _eta(fraction, phase_s)
        fields["eta_s"] = round(eta, 1) if eta is not None else None
    limits = {k[len(LIMIT_PREFIX):]: v for k, v in sorted(snap.items()) if k.startswith(LIMIT_PREFIX)}
    if limits:
        fields["concurrency_limit"] = limits
    for key in ("rows_per_s", "requests_per_s"):
        if fields[key] is not None:
            fields[key] = round(fields[key], 1)

    parts = [f"heartbeat {elapsed_s:.0f}s", f"{rows:,} rows read"]
    if phase == READ:
        if fields["rows_per_s"] is not None:
            parts[-1] += f" ({fields['rows_per_s']:,.0f}/s)"
        if fields["percent"] is not None:
            parts.append(f"reading {fields['percent']:.1f}% of the input")
    else:
        parts.append(f"{members:,} members done")
        if fields["requests_per_s"] is not None:
            parts.append(f"{fields['requests_per_s']:,.0f} requests/s")
        if limits:
            parts.append("calls in flight limit " + ", ".join(f"{k} {v:,}" for k, v in limits.items()))
        if fields["percent"] is not None:
            parts.append(f"members {fields['percent']:.1f}% (by transactions)")
    if fields["eta_s"] is not None:
        parts.append(f"ETA {phase} {fields['eta_s']:.0f}s")
    return Beat(", ".join(parts), fields)


def read_finished_line(snap: dict[str, int], elapsed_s: float) -> str:
    return (
        f"stage read+parse finished by {elapsed_s:.1f}s: {snap.get('rows_read', 0):,} rows read, "
        f"{snap.get('transactions', 0):,} transactions, {snap.get('member_only_rows', 0):,} member-only, "
        f"{snap.get('dead_letter_rows', 0):,} dead letters"
    )


class Heartbeat:
    """Logs a heartbeat every ``interval_s`` and the end of the read phase, from a daemon thread.

    ``tick`` does one poll and is what tests drive, with their own clock.
    ``live=False`` (workers in other processes) logs only the elapsed time.
    """

    def __init__(
        self,
        interval_s: float,
        total_bytes: int | None,
        live: bool = True,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 0.5,
    ):
        self.interval_s = interval_s
        self.total_bytes = total_bytes
        self.live = live
        self._clock = clock
        self._poll_s = min(poll_s, interval_s) if interval_s > 0 else poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._last_beat = self._phase_t0 = clock()
        self._previous: dict[str, int] = {}
        self._read_done = False

    def tick(self) -> Beat | None:
        now = self._clock()
        snap = progress.snapshot() if self.live else {}
        if self.live and not self._read_done and (members_done(snap) or requests_made(snap)):
            self._read_done = True
            self._phase_t0 = now
            log.info("%s", read_finished_line(snap, now - self._t0))
        if now - self._last_beat < self.interval_s:
            return None
        elapsed, interval = now - self._t0, now - self._last_beat
        self._last_beat = now
        if not self.live:
            beat = Beat(f"heartbeat {elapsed:.0f}s: running (workers run in other processes: no live counts)",
                        {"elapsed_s": round(elapsed, 1)})
        else:
            beat = describe(snap, self._previous, elapsed, interval, now - self._phase_t0, self.total_bytes)
            self._previous = snap
        log.info("%s", beat.message, extra={"progress": beat.fields})
        return beat

    def _run(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.tick()
            except Exception:
                log.debug("heartbeat failed", exc_info=True)

    def __enter__(self) -> Heartbeat:
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
