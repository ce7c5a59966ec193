"""Calls to a partner's ATS, RESP and offer endpoints, and the DoFn that makes them.

The calls run on one asyncio event loop per DoFn instance (aiohttp; why in
docs/decisions.md): the DoFn hands each member to the loop and emits members
as their calls finish, so hundreds of calls are in flight at a fraction of a
millisecond of CPU each. Per member, ATS and RESP go out together and the offer
as soon as both answered; no member waits for another. How many calls to each
endpoint may be in flight is learnt from latency and errors
(``transforms.concurrency_limit``). Each attempt has its own timeouts; retries
follow urllib3's ``Retry`` rules (exponential backoff with jitter,
``Retry-After`` honoured and capped, a separate budget for connections that
cannot be made). A member whose calls still fail is not an exception: it
becomes a FAILED result with the reason, so one bad member never fails a bundle.
"""
from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import logging
import math
import queue
import random
import threading
import time
import urllib.request
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.components.adaptive_throttler import ReactiveThrottler
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from lantern.json_columns import ObjectTemplate, json_list_field
from lantern.partner import PartnerConfig
from transforms import NAMESPACE, progress
from transforms.concurrency_limit import AdaptiveLimit, Slots
from transforms.event_loop import LoopThread
from transforms.rate_limit import RateLimiter
from transforms.results import DECISION_FIELDS, FAILED, NO_DECISION, OK
from transforms.thread_metrics import PooledMetrics
from transforms.timing import TimedDoFn

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_AFTER_STATUSES = frozenset({413, 429, 503})  # urllib3's: where a Retry-After header is honoured
INITIAL_LIMIT = 16  # calls in flight per endpoint before the first answers; slow start takes it from there
KINDS = ("ats", "resp", "offer")
# The batch routes' convention (Vertex AI, TF Serving): {"instances": [...]} -> {"predictions": [...]}.
BATCH_REQUEST_FIELD = "instances"
BATCH_RESPONSE_FIELD = "predictions"


class CallResult(NamedTuple):
    value: Any  # float for ats/resp, str for offer; None when the call failed
    latency_ms: float | None  # None when the call was not sent (held back by the throttler)
    attempts: int
    error: str | None


class BatchAnswer(NamedTuple):
    """One batch request's answer for its members: a value each (None where it failed), the
    members' errors (None when none failed), and the request's latency and attempts."""

    values: list
    errors: list[str | None] | None
    latency_ms: float | None
    attempts: int


class BadResponse(ValueError):
    """The endpoint answered 2xx but the body is not what the partner file promises."""


def prediction_body(partner: PartnerConfig, features: dict, wire: dict[str, str] | None = None) -> dict:
    """The ATS/RESP request body in the partner's shape (wire names, nesting, extras).

    ``wire`` is ``partner.wire_names()`` computed once by the caller: this runs per member.
    """
    wire = wire if wire is not None else partner.wire_names()
    payload = {field: features[name] for name, field in wire.items()}
    shape = partner.endpoints.request
    body = {shape.nest_under: payload} if shape.nest_under else payload
    if shape.extra_fields:
        body = {**shape.extra_fields, **body}
    return body


def offer_body(partner: PartnerConfig, ats: float, resp: float) -> dict:
    offer = partner.endpoints.offer
    return {offer.ats_field: ats, offer.resp_field: resp}


def _field(body: Any, field: str) -> Any:
    if not isinstance(body, dict) or field not in body:
        raise BadResponse(f"response has no {field!r} field")
    return body[field]


def check_prediction(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadResponse(f"{field!r} is not a number: {value!r:.60}")
    if not math.isfinite(value):
        raise BadResponse(f"{field!r} is not finite: {value!r}")
    return float(value)


def check_offer(value: Any, offers: list[str]) -> str:
    if value not in offers:
        raise BadResponse(f"unknown offer {value!r:.60}")
    return value


def read_batch(body: Any, n: int) -> list:
    """The ``predictions`` list of a batch answer; anything but n items in order fails the batch."""
    items = _field(body, BATCH_RESPONSE_FIELD)
    if not isinstance(items, list):
        raise BadResponse(f"{BATCH_RESPONSE_FIELD!r} is not a list")
    if len(items) != n:
        raise BadResponse(f"{len(items)} {BATCH_RESPONSE_FIELD} for {n} instances")
    return items


def describe_error(exc: BaseException) -> tuple[str, bool]:
    """A transport failure as a short reason, e.g. ``ConnectionError: connection refused``, and
    whether no connection could be made (those draw on the separate connect-retry budget)."""
    if isinstance(exc, aiohttp.ClientConnectorError):  # before ClientOSError: it is one
        if isinstance(exc.os_error, ConnectionRefusedError) or "refused" in str(exc).lower():
            return "ConnectionError: connection refused", True
        return f"ConnectionError: cannot connect: {exc.os_error or exc}", True
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "ConnectionError: connect timeout", True
    if isinstance(exc, TimeoutError):  # aiohttp's SocketTimeoutError is one
        return "ConnectionError: read timeout", False
    if isinstance(exc, aiohttp.ClientResponseError):  # the answer is not HTTP
        return f"ConnectionError: bad HTTP answer: {_one_line(exc.message)}", False
    return f"ConnectionError: connection lost: {type(exc).__name__}: {_one_line(str(exc))}", False


def _one_line(text: str) -> str:
    """aiohttp's parser errors span lines (the bad line and a caret under it); a reason is one line."""
    return " ".join(str(text).split())


def retry_after_s(value: str | None, cap: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date), capped; None
    when absent or unreadable (the exponential backoff applies then), as in urllib3."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        seconds = max(email.utils.mktime_tz(parsed) - time.time(), 0.0)
    return min(seconds, cap)


def backoff_s(failed: int, factor: float, jitter: float, cap: float) -> float:
    """urllib3's backoff before the next attempt after ``failed`` consecutive failed attempts:
    none after the first, then ``factor * 2**(failed - 1)`` plus jitter, at most ``cap``."""
    if failed <= 1:
        return 0.0
    value = factor * 2 ** (failed - 1)
    if jitter:
        value += random.random() * jitter
    return max(0.0, min(cap, value))


async def pause(seconds: float) -> None:
    """Every wait of the client (backoff, Retry-After, rate limit): one place for tests to watch."""
    await asyncio.sleep(seconds)


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTP_PROXY``, ``NO_PROXY``...), read once."""
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


class _Answer(NamedTuple):
    status: int
    body: bytes


class PartnerClient:
    """One partner's three endpoints behind one aiohttp session on the client's own event loop.

    Coroutines (``call_async``, ``decide_async``...) run on ``self.loop``; the plain
    methods (``call``, ``decide``...) wait for them from any other thread.
    """

    def __init__(self, partner: PartnerConfig):
        self.partner = partner
        policy = partner.calls
        self.policy = policy
        self.urls = {kind: partner.url(kind) for kind in KINDS}
        self.wire = partner.wire_names()
        self._offers = frozenset(partner.endpoints.offer.offers)
        self.batch_urls = {kind: partner.url(kind, batch=True) for kind in KINDS} if partner.endpoints.batch else {}
        # The environment is read here, once per URL, not on every call.
        self._proxies = {url: env_proxy(url) for url in (*self.urls.values(), *self.batch_urls.values())}
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.connect_timeout_s,
                                              sock_read=policy.read_timeout_s)
        headers = {"Content-Type": "application/json", **partner.auth_headers()}
        self._throttlers = {
            kind: ReactiveThrottler(
                window_ms=60_000, bucket_ms=1_000, overload_ratio=2,
                namespace=f"{NAMESPACE}.{kind}",
            )
            for kind in KINDS
        } if policy.adaptive_throttling else {}
        self._lock = threading.Lock()
        self._last_error: dict[str, str] = {}  # per endpoint, quoted when a call is held back
        rate = policy.rate_limit_per_s
        self._rate_limiter = RateLimiter(rate) if rate else None
        self.limits = {
            kind: AdaptiveLimit(
                initial=policy.concurrency if not policy.adaptive_concurrency else min(INITIAL_LIMIT, policy.concurrency),
                max_limit=policy.concurrency, fixed=not policy.adaptive_concurrency)
            for kind in KINDS
        }
        self.slots = {kind: Slots(limit) for kind, limit in self.limits.items()}
        self.metrics = PooledMetrics(NAMESPACE)  # updated from the loop's thread: see thread_metrics
        self.outcomes = {
            (kind, outcome): self.metrics.counter(f"requests_{kind}_{outcome}")
            for kind in KINDS for outcome in ("ok", "http_error", "bad_response", "exception", "throttled")
        }
        self.retries = {kind: self.metrics.counter(f"retries_{kind}") for kind in KINDS}
        self.bad_items = {kind: self.metrics.counter(f"batch_bad_items_{kind}") for kind in KINDS}
        self.latency = {kind: self.metrics.distribution(f"latency_ms_{kind}") for kind in KINDS}
        self.loop = LoopThread(name=f"endpoints-{partner.name}")
        try:
            self.session = self.loop.run(self._open(headers))
        except BaseException:
            self.loop.close()
            raise

    @functools.cached_property
    def body_template(self) -> ObjectTemplate:
        """The prediction request body for a table of members, written column by column (json_columns)."""
        return ObjectTemplate(lambda values: prediction_body(self.partner, values, self.wire), list(self.wire))

    @functools.cached_property
    def offer_template(self) -> ObjectTemplate:
        return ObjectTemplate(lambda values: offer_body(self.partner, values["ats"], values["resp"]), ["ats", "resp"])

    async def _open(self, headers: dict) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)  # the slots bound the connections
        # unsafe: keep cookies set by hosts named by IP address too (load balancers' stickiness), as requests does
        return aiohttp.ClientSession(connector=connector, headers=headers,
                                     cookie_jar=aiohttp.CookieJar(unsafe=True))

    def close(self) -> None:
        if not self.loop.loop.is_closed():
            self.loop.run(self.session.close())
            self.loop.close()

    def flush_metrics(self) -> None:
        """Hand the tallies to Beam, with each endpoint's current limit on calls in flight;
        call from the thread that runs the DoFn."""
        self.metrics.flush()
        for kind in self.active_kinds():
            limit = self.limits[kind].limit
            Metrics.distribution(NAMESPACE, f"concurrency_limit_{kind}").update(limit)
            progress.set_value(f"concurrency_limit_{kind}", limit)

    def active_kinds(self) -> list[str]:
        """Endpoints that have been called at least once (an unused limit would only blur the metric)."""
        return [kind for kind in KINDS if self.limits[kind].floor_s is not None or self.limits[kind].decreases]

    def _held_back(self, kind: str) -> CallResult | None:
        """Client-side throttling (Beam's ReactiveThrottler, the SRE book's algorithm).

        Once more than half of the recent calls to an endpoint failed even after
        retries, each call is refused locally with the throttler's probability,
        so a dead or drowning endpoint gets fewer requests and the run ends
        instead of waiting out every member's retries. A healthy or merely
        flaky endpoint (retries succeed) is never held back.
        """
        throttler = self._throttlers.get(kind)
        if throttler is None:
            return None
        with self._lock:
            refused = throttler.throttle_request(time.time() * 1000)
        # Before any call has failed, requests still in flight look like failures to the
        # throttler (concurrent first calls would refuse each other): never hold back then.
        if not refused or kind not in self._last_error:
            return None
        self.outcomes[kind, "throttled"].inc()
        last = self._last_error.get(kind, "")
        return CallResult(None, None, 0, f"{kind}: not sent: most calls are failing (last: {last:.140})")

    def _failed(self, kind: str, latency: float, attempts: int, detail: str) -> CallResult:
        self._last_error[kind] = detail
        return CallResult(None, latency, attempts, f"{kind}: {detail}")

    def _succeeded(self, kind: str, start: float) -> None:
        throttler = self._throttlers.get(kind)
        if throttler is not None:
            with self._lock:
                throttler.successful_request(start * 1000)

    async def _attempt(self, kind: str, url: str, data: bytes, first: bool) -> tuple:
        """One attempt inside one of the endpoint's slots: (answer or None, transport failure,
        whether it was a connect failure, the Retry-After seconds asked for), or a held-back
        CallResult when the throttler refuses the call (decided once a slot is free, so calls
        queued behind failing ones are held back too)."""
        slots = self.slots[kind]
        in_flight = await slots.acquire(first)
        if first:
            held_back = self._held_back(kind)
            if held_back is not None:
                slots.give_back()
                return held_back, None, False, None
        t0 = time.perf_counter()
        try:
            async with self.session.post(url, data=data, timeout=self._timeout, proxy=self._proxies[url]) as response:
                body = await response.read()
                status = response.status
                wait = (retry_after_s(response.headers.get("Retry-After"), self.policy.retry_after_max_s)
                        if status in RETRY_AFTER_STATUSES else None)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            slots.release(time.perf_counter() - t0, in_flight, dropped=True)
            reason, connect = describe_error(exc)
            return None, reason, connect, None
        except BaseException:  # cancelled: give the slot back all the same
            slots.release(time.perf_counter() - t0, in_flight, dropped=False)
            raise
        slots.release(time.perf_counter() - t0, in_flight, dropped=status in RETRY_STATUSES)
        return _Answer(status, body), None, False, wait

    async def _post(self, kind: str, url: str, data: bytes) -> CallResult:
        """POST with retries: the parsed JSON body as the value, or the reason it failed as the
        error, never an exception. Budgets as urllib3's ``Retry``: ``retries`` in all, of which
        at most ``connect_retries`` for connections that cannot be made."""
        policy = self.policy
        if self._rate_limiter is not None:
            wait = self._rate_limiter.reserve()
            if wait:
                await pause(wait)
        start = time.time()
        t0 = time.perf_counter()
        attempts = 0
        connect_left = min(policy.connect_retries, policy.retries)
        retries_left = policy.retries
        while True:
            attempts += 1
            answer, failure, connect, retry_after = await self._attempt(kind, url, data, first=attempts == 1)
            if isinstance(answer, CallResult):
                return answer
            retry = answer is None or answer.status in RETRY_STATUSES
            if retry and retries_left > 0 and not (connect and connect_left <= 0):
                retries_left -= 1
                connect_left -= connect
                wait = retry_after or backoff_s(attempts, policy.backoff_s, policy.backoff_jitter_s,
                                                policy.backoff_max_s)
                if wait:
                    await pause(wait)
                continue
            break
        latency = (time.perf_counter() - t0) * 1000
        if attempts > 1:
            self.retries[kind].inc(attempts - 1)
        if answer is None:
            self.outcomes[kind, "exception"].inc()
            return self._failed(kind, latency, attempts, f"{failure:.200}")
        self.latency[kind].update(int(latency))
        if answer.status not in RETRY_STATUSES:
            # The backend handled the request: not a sign of overload, whatever the answer.
            # (A 401 or 422 for every member must not make the throttler slow the run down.)
            self._succeeded(kind, start)
        if answer.status != 200:
            self.outcomes[kind, "http_error"].inc()
            text = answer.body.decode("utf-8", "replace").replace("\n", " ")
            return self._failed(kind, latency, attempts, f"HTTP {answer.status}: {text:.160}")
        try:
            payload = json.loads(answer.body)
        except ValueError:
            self.outcomes[kind, "bad_response"].inc()
            text = answer.body.decode("utf-8", "replace")
            return self._failed(kind, latency, attempts, f"bad response: body is not JSON: {text!r:.60}")
        return CallResult(payload, latency, attempts, None)

    def _value(self, kind: str, item: Any) -> Any:
        """One member's answer: a prediction number, or an offer among the partner's offers."""
        if kind == "offer":
            return check_offer(item, self.partner.endpoints.offer.offers)
        return check_prediction(item, getattr(self.partner.endpoints, kind).response_field)

    async def call_async(self, kind: str, body: dict | bytes) -> CallResult:
        """One member's call to a per-member route (``body`` as a dict or already as JSON)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        posted = await self._post(kind, self.urls[kind], data)
        if posted.error:
            return posted
        field = getattr(self.partner.endpoints, kind).response_field
        try:
            value = self._value(kind, _field(posted.value, field))
        except BadResponse as exc:
            self.outcomes[kind, "bad_response"].inc()
            return self._failed(kind, posted.latency_ms, posted.attempts, f"bad response: {exc}")
        self.outcomes[kind, "ok"].inc()
        return CallResult(value, posted.latency_ms, posted.attempts, None)

    async def post_batch_async(self, kind: str, data: bytes, count: int) -> BatchAnswer:
        """One request of ``count`` instances (``data``, already encoded) to a batch route.

        A failed request fails each of its members with the same reason; an item
        that is not a valid answer fails only its own member. Latency and attempts
        are the request's, shared by its members.
        """
        posted = await self._post(kind, self.batch_urls[kind], data)
        failed = posted.error
        if not failed:
            try:
                items = read_batch(posted.value, count)
            except BadResponse as exc:
                self.outcomes[kind, "bad_response"].inc()
                failed = self._failed(kind, posted.latency_ms, posted.attempts, f"bad response: {exc}").error
        if failed:
            return BatchAnswer([None] * count, [failed] * count, posted.latency_ms, posted.attempts)
        self.outcomes[kind, "ok"].inc()
        if kind == "offer":
            offers = self._offers
            usual = all(type(v) is str and v in offers for v in items)
        else:
            usual = all(type(v) is float for v in items) and all(map(math.isfinite, items))
        if usual:  # every item a valid answer: checked at once, not item by item
            return BatchAnswer(items, None, posted.latency_ms, posted.attempts)
        values: list = []
        errors: list[str | None] = []
        for item in items:
            try:
                values.append(self._value(kind, item))
                errors.append(None)
            except BadResponse as exc:
                self.bad_items[kind].inc()
                values.append(None)
                errors.append(f"{kind}: bad response item: {exc}")
        return BatchAnswer(values, errors if any(errors) else None, posted.latency_ms, posted.attempts)

    def call(self, kind: str, body: dict) -> CallResult:
        """``call_async`` from a thread other than the loop's (tests, benchmarks)."""
        return self.loop.run(self.call_async(kind, body))


async def decide_async(client: PartnerClient, features: dict) -> dict:
    """ATS and RESP for one member at once, then the offer as soon as both answered.

    An unexpected error (a bug, not an endpoint failure) fails this member with
    the reason instead of failing the bundle, so no member is ever lost.
    """
    try:
        partner = client.partner
        data = json.dumps(prediction_body(partner, features, client.wire)).encode()  # one body, sent twice
        resp_call = asyncio.ensure_future(client.call_async("resp", data))  # in flight while ATS is
        try:
            ats = await client.call_async("ats", data)
        finally:
            resp = await resp_call
        offer = None
        if ats.error is None and resp.error is None:
            offer = await client.call_async("offer", offer_body(partner, ats.value, resp.value))
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
        "OFFER": None,
        "ATTEMPTS": ats.attempts + resp.attempts,
        "ERROR": None,
    }
    if offer is not None:
        out.update(OFFER=offer.value, OFFER_LATENCY_MS=offer.latency_ms, ATTEMPTS=out["ATTEMPTS"] + offer.attempts)
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


async def _decide_request(client: PartnerClient, bodies: list[str]) -> dict[str, list]:
    """One request's worth of members (bodies already written): ATS and RESP at once, then the
    offer for the members whose two predictions both succeeded; ``decision``'s values as columns."""
    n = len(bodies)
    data = json_list_field(BATCH_REQUEST_FIELD, bodies)  # the same instances for ATS and RESP
    ats_answer, resp_answer = await asyncio.gather(client.post_batch_async("ats", data, n),
                                                   client.post_batch_async("resp", data, n))
    ats, ats_errors, ats_latency, ats_attempts = _spread([ats_answer])
    resp, resp_errors, resp_latency, resp_attempts = _spread([resp_answer])
    ready = [i for i in range(n) if ats_errors[i] is None and resp_errors[i] is None]
    offer, offer_errors, offer_latency, offer_attempts = [None] * n, [None] * n, [None] * n, [0] * n
    if ready:
        texts = client.offer_template.render([pa.array([ats[i] for i in ready], pa.float64()),
                                             pa.array([resp[i] for i in ready], pa.float64())]).to_pylist()
        answer = await client.post_batch_async("offer", json_list_field(BATCH_REQUEST_FIELD, texts), len(texts))
        for i, value, error, latency, attempts in zip(ready, *_spread([answer]), strict=True):
            offer[i], offer_errors[i], offer_latency[i], offer_attempts[i] = value, error, latency, attempts
    errors = [joined_errors(*triple) if any(triple) else None
              for triple in zip(ats_errors, resp_errors, offer_errors, strict=True)]
    return {
        "ATS_PREDICTION": ats, "RESP_PREDICTION": resp, "OFFER": offer,
        "STATUS": [FAILED if e else OK for e in errors], "ERROR": errors,
        "ATS_LATENCY_MS": ats_latency, "RESP_LATENCY_MS": resp_latency, "OFFER_LATENCY_MS": offer_latency,
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
    many calls are actually in flight). The client, its session and loop live
    for the DoFn instance (``setup``/``teardown``), so keep-alive connections are
    reused across bundles.
    """

    FLUSH_S = 0.5  # metrics and the live limits reach Beam and the heartbeat this often

    def __init__(self, partner: PartnerConfig, tables: bool = False):
        self._partner = partner
        # With ``tables`` (batch routes only), each element is a group of tables of members
        # (``lantern.feature_table.members_table``), and one table with their decisions leaves for it.
        self._tables = tables

    def setup(self):
        self._client = PartnerClient(self._partner)
        calls = self._partner.calls
        self._max_pending = 8 if self._partner.endpoints.batch else max(64, 4 * calls.concurrency)

    def teardown(self):
        self._client.close()

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
