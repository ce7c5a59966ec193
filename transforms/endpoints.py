"""Members' decisions from a partner's endpoints, and the DoFn that asks for them.

Per member, ATS and RESP go out together and the offer as soon as both
answered; no member waits for another. With batch routes, members go in
requests of ``max_batch_size`` instances and each request goes on to its offer
as soon as its own predictions are in. The HTTP side (attempts, retries,
limits, throttling) is ``transforms.partner_client``'s. A member whose calls
still fail becomes a FAILED result with the reason, so one bad member never
fails a bundle.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import time

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.utils.windowed_value import WindowedValue

from lantern.json_columns import json_list_field
from lantern.partner import PartnerConfig
from transforms import progress
from transforms.partner_client import (
    BATCH_REQUEST_FIELD,
    BatchAnswer,
    Budget,
    CallResult,
    PartnerClient,
    offer_body,
    prediction_body,
)
from transforms.process_shared import ProcessShared
from transforms.results import DECISION_FIELDS, FAILED, NO_DECISION, OK
from transforms.timing import TimedDoFn

log = logging.getLogger(__name__)


async def decide_async(client: PartnerClient, features: dict) -> dict:
    """ATS and RESP for one member at once, then the offer as soon as both answered.

    An unexpected error (a bug, not an endpoint failure) fails this member with
    the reason instead of failing the bundle, so no member is ever lost.
    """
    try:
        partner = client.partner
        data = json.dumps(prediction_body(partner, features, client.wire)).encode()  # one body, sent twice
        budget = Budget(client.policy.member_timeout_s)  # the member's time, shared by its three calls
        resp_call = asyncio.ensure_future(client.call_async("resp", data, budget))  # in flight while ATS is
        try:
            ats = await client.call_async("ats", data, budget)
        finally:
            resp = await resp_call
        offer = None
        if ats.error is None and resp.error is None:
            offer = await client.call_async("offer", offer_body(partner, ats.value, resp.value), budget)
        return decision(ats, resp, offer)
    except Exception as exc:
        log.exception("unexpected error while calling the endpoints for one member")
        client.metrics.counter("members_internal_error").inc()
        return internal_error(exc)


def decide(client: PartnerClient, features: dict) -> dict:
    """``decide_async`` from a thread other than the client's loop (tests, benchmarks)."""
    return client.loop.run(decide_async(client, features))


def internal_error(exc: BaseException) -> dict:
    failed = CallResult(None, None, 0, f"internal error: {type(exc).__name__}: {exc}"[:200])
    return decision(failed, failed._replace(error=None), None)


def decision(ats: CallResult, resp: CallResult, offer: CallResult | None) -> dict:
    """One member's decision from its three calls; ``offer`` is None when it was not asked."""
    out = {
        "ATS_PREDICTION": ats.value,
        "RESP_PREDICTION": resp.value,
        "ATS_LATENCY_MS": ats.latency_ms,
        "RESP_LATENCY_MS": resp.latency_ms,
        "OFFER_LATENCY_MS": None,
        "ATS_WAIT_MS": ats.wait_ms,
        "ATS_WIRE_MS": ats.wire_ms,
        "RESP_WAIT_MS": resp.wait_ms,
        "RESP_WIRE_MS": resp.wire_ms,
        "OFFER_WAIT_MS": None,
        "OFFER_WIRE_MS": None,
        "OFFER": None,
        "ATTEMPTS": ats.attempts + resp.attempts,
        "ERROR": None,
    }
    if offer is not None:
        out.update(OFFER=offer.value, OFFER_LATENCY_MS=offer.latency_ms, OFFER_WAIT_MS=offer.wait_ms,
                   OFFER_WIRE_MS=offer.wire_ms, ATTEMPTS=out["ATTEMPTS"] + offer.attempts)
    out["ERROR"] = joined_errors(ats.error, resp.error, offer.error if offer is not None else None)
    out["STATUS"] = FAILED if out["ERROR"] else OK
    return out


def joined_errors(*errors: str | None) -> str | None:
    """A member's ERROR: its calls' errors, in call order, joined; None when every call succeeded."""
    return "; ".join(e for e in errors if e) or None


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


async def decide_batch_async(client: PartnerClient, features: list[dict]) -> list[dict]:
    """The batch-route call sequence for many members: ATS and RESP requests in parallel,
    then one offer request for the members whose predictions both succeeded.

    Each request carries at most the partner's ``max_batch_size`` instances; the
    decisions come back in the order of ``features``. An unexpected error fails
    these members with the reason, as in ``decide_async``.
    """
    try:
        return await _decide_batch(client, features)
    except Exception as exc:
        log.exception("unexpected error while calling the batch endpoints")
        client.metrics.counter("members_internal_error").inc(len(features))
        return [internal_error(exc) for _ in features]


async def _decide_batch(client: PartnerClient, features: list[dict]) -> list[dict]:
    # Members one by one (the line reader's) take the table path: one call sequence for both.
    table = pa.table({name: [f[name] for f in features] for name in client.body_template.names})
    columns = await _decide_table(client, table)
    return [dict(zip(DECISION_TYPES, values, strict=True))
            for values in zip(*(columns[name] for name in DECISION_TYPES), strict=True)]


DECISION_TYPES = dict(DECISION_FIELDS)  # a decision column -> its Arrow type


def _spread(answers: list[BatchAnswer]) -> tuple[list, list, list, list]:
    """Per-request answers -> per-member columns: values, errors, latencies, attempts."""
    values, errors, latency, attempts = [], [], [], []
    for answer in answers:
        n = len(answer.values)
        values += answer.values
        errors += answer.errors or [None] * n
        latency += [answer.latency_ms] * n
        attempts += [answer.attempts] * n
    return values, errors, latency, attempts


def _timing(kind: str, answer: BatchAnswer, n: int) -> dict[str, list]:
    """A request's wait and wire time as its members' columns (shared, as its latency is)."""
    return {f"{kind.upper()}_WAIT_MS": [answer.wait_ms] * n, f"{kind.upper()}_WIRE_MS": [answer.wire_ms] * n}


async def _decide_request(client: PartnerClient, bodies: list[str]) -> dict[str, list]:
    """One request's worth of members (bodies already written): ATS and RESP at once, then the
    offer for the members whose two predictions both succeeded; ``decision``'s values as columns."""
    n = len(bodies)
    data = json_list_field(BATCH_REQUEST_FIELD, bodies)  # the same instances for ATS and RESP
    budget = Budget(client.policy.member_timeout_s)  # the time of the request's members, as for one member
    ats_answer, resp_answer = await asyncio.gather(client.post_batch_async("ats", data, n, budget),
                                                   client.post_batch_async("resp", data, n, budget))
    ats, ats_errors, ats_latency, ats_attempts = _spread([ats_answer])
    resp, resp_errors, resp_latency, resp_attempts = _spread([resp_answer])
    ready = [i for i in range(n) if ats_errors[i] is None and resp_errors[i] is None]
    offer, offer_errors, offer_latency, offer_attempts = [None] * n, [None] * n, [None] * n, [0] * n
    timing = {**_timing("ats", ats_answer, n), **_timing("resp", resp_answer, n),
              "OFFER_WAIT_MS": [None] * n, "OFFER_WIRE_MS": [None] * n}
    if ready:
        texts = client.offer_template.render([pa.array([ats[i] for i in ready], pa.float64()),
                                             pa.array([resp[i] for i in ready], pa.float64())]).to_pylist()
        answer = await client.post_batch_async("offer", json_list_field(BATCH_REQUEST_FIELD, texts), len(texts),
                                               budget)
        for i, value, error, latency, attempts in zip(ready, *_spread([answer]), strict=True):
            offer[i], offer_errors[i], offer_latency[i], offer_attempts[i] = value, error, latency, attempts
            timing["OFFER_WAIT_MS"][i], timing["OFFER_WIRE_MS"][i] = answer.wait_ms, answer.wire_ms
    errors = [joined_errors(*triple) if any(triple) else None
              for triple in zip(ats_errors, resp_errors, offer_errors, strict=True)]
    return {
        "ATS_PREDICTION": ats, "RESP_PREDICTION": resp, "OFFER": offer,
        "STATUS": [FAILED if e else OK for e in errors], "ERROR": errors,
        "ATS_LATENCY_MS": ats_latency, "RESP_LATENCY_MS": resp_latency, "OFFER_LATENCY_MS": offer_latency,
        **timing,
        "ATTEMPTS": [a + r + o for a, r, o in zip(ats_attempts, resp_attempts, offer_attempts, strict=True)],
    }


async def _decide_table(client: PartnerClient, members: pa.Table) -> dict[str, list]:
    """``_decide_batch`` for a table of members with transactions: the request bodies written from
    the columns (``ObjectTemplate``), cut into requests of ``max_batch_size`` that each go on to
    their offer as soon as their own predictions are in; the decisions returned as columns."""
    size = client.partner.endpoints.max_batch_size
    bodies = client.body_template.render([members.column(name) for name in client.body_template.names]).to_pylist()
    parts = await asyncio.gather(*(_decide_request(client, part) for part in chunks(bodies, size)))
    return {name: [value for part in parts for value in part[name]] for name in DECISION_TYPES}


def _split_by_activity(members: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(members with transactions, to be called; members without)."""
    active = pc.greater(members.column("N_TRANSACTIONS"), 0)
    return members.filter(active), members.filter(pc.invert(active))


def _failed_columns(exc: BaseException, n: int) -> dict[str, list]:
    failed = internal_error(exc)
    return {name: [failed[name]] * n for name in DECISION_TYPES}


def _with_decisions(called: pa.Table, columns: dict[str, list], idle: pa.Table) -> pa.Table:
    """The called members with their decision columns, then the idle ones with NO_TRANSACTIONS."""
    for name, kind in DECISION_TYPES.items():
        called = called.append_column(name, pa.array(columns[name], kind))
        idle = idle.append_column(name, pa.repeat(pa.scalar(NO_DECISION[name], kind), idle.num_rows))
    return pa.concat_tables([called, idle])


async def decide_table_async(client: PartnerClient, members: pa.Table) -> pa.Table:
    """A table of members (``lantern.feature_table.members_table``) with their decisions as columns:
    the batch routes for members with transactions, NO_TRANSACTIONS for the others. An unexpected
    error fails the members that were to be called, with the reason, as in ``decide_batch_async``."""
    called, idle = _split_by_activity(members)
    try:
        columns = await _decide_table(client, called) if called.num_rows else {name: [] for name in DECISION_TYPES}
    except Exception as exc:
        log.exception("unexpected error while calling the batch endpoints")
        client.metrics.counter("members_internal_error").inc(called.num_rows)
        columns = _failed_columns(exc, called.num_rows)
    return _with_decisions(called, columns, idle)


def decide_batch(client: PartnerClient, features: list[dict]) -> list[dict]:
    """``decide_batch_async`` from a thread other than the client's loop (tests, benchmarks)."""
    return client.loop.run(decide_batch_async(client, features))


class CallEndpointsFn(TimedDoFn):
    """(member id, summary) -> (member id, summary, decision), as the calls finish.

    Each member (per-member routes) or batch of members (``endpoints.batch``) is
    handed to the client's event loop at once; ``process`` emits the members
    whose calls have finished meanwhile, ``finish_bundle`` waits for the rest.
    Outputs keep their own element's window and timestamp. At most
    ``max_pending`` members or batches are in the loop at a time: past that,
    ``process`` waits for one to finish (the endpoints' own limits decide how
    many calls are actually in flight). The client, its session and loop are one
    per SDK process, shared by every instance of this DoFn on the process's threads
    (``transforms/process_shared.py``): the rate cap, the calls-in-flight limits and
    the throttler hold per process, as documented, and keep-alive connections are
    reused across bundles. The last instance's ``teardown`` closes it.
    """

    FLUSH_S = 0.5  # metrics and the live limits reach Beam and the heartbeat this often

    def __init__(self, partner: PartnerConfig, tables: bool = False):
        self._partner = partner
        # With ``tables`` (batch routes only), each element is a group of tables of members
        # (``lantern.feature_table.members_table``), and one table with their decisions leaves for it.
        self._tables = tables
        self._shared_client = ProcessShared()  # pickled with the DoFn: its copies in a process share one client

    def setup(self):
        self._client = self._shared_client.acquire(lambda: PartnerClient(self._partner))
        calls = self._partner.calls
        self._max_pending = 8 if self._partner.endpoints.batch else max(64, 4 * calls.concurrency)

    def teardown(self):
        # Only an instance that holds the client lets go of it (a failed setup holds none).
        if getattr(self, "_client", None) is not None:
            self._client = None
            self._shared_client.release(PartnerClient.close)

    def start_bundle(self):
        super().start_bundle()
        self._done: queue.SimpleQueue = queue.SimpleQueue()  # per bundle: a failed bundle's stragglers stay out
        self._pending = 0
        self._flushed_at = time.monotonic()

    def process(self, element, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        batch = self._partner.endpoints.batch
        if self._tables:
            if not element:  # BatchElements flushes an empty group before a table larger than a group
                return
            table = pa.concat_tables(element) if len(element) > 1 else element[0]
            self._client.loop.spawn(_decide_table_and_report(self._client, table, window, timestamp, self._done))
        else:
            self._client.loop.spawn(_decide_and_report(self._client, element, batch, window, timestamp, self._done))
        self._pending += 1
        yield from self._collect(final=False)

    def finish_bundle(self):
        yield from self._collect(final=True)
        self._client.flush_metrics()
        super().finish_bundle()

    def _collect(self, final: bool):
        """Emit what has finished; wait while too much is pending (or, when ``final``, for all)."""
        while self._pending:
            wait = final or self._pending >= self._max_pending
            try:
                outputs = self._done.get(timeout=self.FLUSH_S) if wait else self._done.get_nowait()
            except queue.Empty:
                self._maybe_flush()
                if wait:
                    continue
                break
            self._pending -= 1
            for output in outputs:
                if isinstance(output.value, pa.Table):
                    called = output.value.filter(pc.greater(output.value.column("N_TRANSACTIONS"), 0))
                    progress.members_called(called.num_rows, pc.sum(called.column("N_TRANSACTIONS")).as_py() or 0)
                    yield output
                    continue
                member = output.value
                if member[2] is not None:
                    progress.member_called(member[1]["N_TRANSACTIONS"])
                yield output
            self._maybe_flush()
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        now = time.monotonic()
        if now - self._flushed_at >= self.FLUSH_S:
            self._flushed_at = now
            self._client.flush_metrics()


async def _decide_and_report(client: PartnerClient, element, batch: bool, window, timestamp,
                             done: queue.SimpleQueue) -> None:
    """Decide one member (or one batch of members) on the loop and put the outputs on ``done``:
    always, whatever happens, so the DoFn never waits for a member that is gone."""
    members = element if batch else [element]
    try:
        if batch:
            decisions = await decide_batch_async(client, [summary["FEATURES"] for _, summary in members])
        else:
            decisions = [await decide_async(client, element[1]["FEATURES"])]
    except BaseException as exc:  # noqa: BLE001 - reported as the members' failure, never lost
        decisions = [internal_error(exc) for _ in members]
    done.put([WindowedValue((member_id, summary, d), timestamp, (window,))
              for (member_id, summary), d in zip(members, decisions, strict=True)])


async def _decide_table_and_report(client: PartnerClient, members: pa.Table, window, timestamp,
                                   done: queue.SimpleQueue) -> None:
    """``decide_table_async`` on the loop; one table leaves, always (as in ``_decide_and_report``)."""
    try:
        decided = await decide_table_async(client, members)
    except BaseException as exc:  # reported as the members' failure, never lost
        log.exception("unexpected error while deciding a table of members")
        called, idle = _split_by_activity(members)
        decided = _with_decisions(called, _failed_columns(exc, called.num_rows), idle)
    done.put([WindowedValue(decided, timestamp, (window,))])


class CallEndpoints(beam.PTransform):
    """Members with features -> members with predictions and an offer.

    Per-member routes take the members one by one; batch routes take them in
    batches of two full requests per route (ATS and RESP requests overlap, and
    the server sees few, large requests).
    """

    def __init__(self, partner: PartnerConfig, tables: bool = False):
        super().__init__()
        self._partner = partner
        self._tables = tables  # elements are tables of members (batch routes only)

    def expand(self, members):
        if self._tables:
            size = 2 * self._partner.endpoints.max_batch_size
            # Small tables (few members per shard) are grouped so requests stay full.
            members = members | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size,
                                                              element_size_fn=len)
        elif self._partner.endpoints.batch:
            size = 2 * self._partner.endpoints.max_batch_size
            # Fixed-size batches (a bundle's last one is smaller): BatchElements' adaptive
            # sizing would start at one member and ramp up, a round trip per tiny batch.
            members = members | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
        call = beam.ParDo(CallEndpointsFn(self._partner, self._tables))
        return members | "Call" >> (call.with_output_types(pa.Table) if self._tables else call)
