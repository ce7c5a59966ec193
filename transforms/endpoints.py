"""Calls to a partner's ATS, RESP and offer endpoints, and the batched DoFns that make them.

Retries are urllib3's ``Retry`` mounted on a ``requests`` session (exponential
backoff with jitter, ``Retry-After`` honoured), so there is no hand-written retry
loop. A member whose calls still fail is not an exception: it becomes a FAILED
result with the reason, so one bad member never fails a bundle.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import apache_beam as beam
import requests
import urllib3
from apache_beam.io.components.adaptive_throttler import ReactiveThrottler
from apache_beam.metrics import Metrics
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from lantern.partner import PartnerConfig
from transforms import NAMESPACE, progress
from transforms.rate_limit import RateLimiter
from transforms.thread_metrics import PooledMetrics
from transforms.timing import TimedDoFn

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
KINDS = ("ats", "resp", "offer")
# The batch routes' convention (Vertex AI, TF Serving): {"instances": [...]} -> {"predictions": [...]}.
BATCH_REQUEST_FIELD = "instances"
BATCH_RESPONSE_FIELD = "predictions"


class CallResult(NamedTuple):
    value: Any  # float for ats/resp, str for offer; None when the call failed
    latency_ms: float | None  # None when the call was not sent (held back by the throttler)
    attempts: int
    error: str | None


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


_retry_count = threading.local()


class CountingRetry(Retry):
    """urllib3's Retry, counting the retries of the calling thread's current request.

    The count survives both real urllib3 and test doubles that drive ``increment``,
    which a response object's retry history does not.
    """

    def increment(self, *args, **kwargs):
        _retry_count.value = getattr(_retry_count, "value", 0) + 1
        return super().increment(*args, **kwargs)


def describe_exception(exc: requests.RequestException) -> str:
    """The exception's type and a short cause, e.g. ``ConnectionError: connection refused``."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None  # MaxRetryError's last error
    cause = reason or exc
    text = str(cause)
    if "refused" in text.lower():  # before timeouts: NewConnectionError is a ConnectTimeoutError
        short = "connection refused"
    elif isinstance(cause, urllib3.exceptions.ReadTimeoutError) or isinstance(exc, requests.ReadTimeout):
        short = "read timeout"
    elif isinstance(cause, urllib3.exceptions.ConnectTimeoutError) or isinstance(exc, requests.ConnectTimeout):
        short = "connect timeout"
    elif isinstance(cause, urllib3.exceptions.ProtocolError) or "aborted" in text or "reset" in text:
        short = f"connection lost: {text}"
    else:
        short = text
    return f"{type(exc).__name__}: {short}"


def make_session(partner: PartnerConfig, pool_size: int) -> requests.Session:
    """A keep-alive session with the partner's retry policy and a pool sized to the concurrency."""
    policy = partner.calls
    retry = CountingRetry(
        total=policy.retries,
        connect=min(policy.connect_retries, policy.retries),  # nothing listening: fail fast
        read=policy.retries,
        status=policy.retries,
        other=0,
        allowed_methods=None,  # predictions are idempotent: retry POST too
        status_forcelist=RETRY_STATUSES,
        backoff_factor=policy.backoff_s,
        backoff_max=policy.backoff_max_s,
        backoff_jitter=policy.backoff_jitter_s,
        respect_retry_after_header=True,
        retry_after_max=policy.retry_after_max_s,  # a server asking for an hour does not stall the run
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"Content-Type": "application/json", **partner.auth_headers()})
    return session


def prepare_post(session: requests.Session, url: str) -> tuple[requests.PreparedRequest, dict]:
    """A POST to ``url`` prepared as ``Session.request`` prepares it (session headers and
    auth, ``.netrc``), without a body, and the send settings the environment gives that URL
    (proxy variables and ``no_proxy``, CA bundle): done once per URL instead of once per call."""
    template = session.prepare_request(requests.Request("POST", url))
    return template, session.merge_environment_settings(url, {}, None, None, None)


class PartnerClient:
    """One partner's three endpoints behind a shared session, thread-safe for a pool."""

    def __init__(self, partner: PartnerConfig):
        self.partner = partner
        self.session = make_session(partner, partner.calls.concurrency)
        self.timeout = (partner.calls.connect_timeout_s, partner.calls.read_timeout_s)
        self.urls = {kind: partner.url(kind) for kind in KINDS}
        self.wire = partner.wire_names()
        self.batch_urls = {kind: partner.url(kind, batch=True) for kind in KINDS} if partner.endpoints.batch else {}
        self._posts = {url: prepare_post(self.session, url) for url in (*self.urls.values(), *self.batch_urls.values())}
        # The environment was read just above, once per URL; reading it again for every call
        # (proxy variables, no_proxy, .netrc) cost a third of the client's CPU per call.
        self.session.trust_env = False
        self._throttlers = {
            kind: ReactiveThrottler(
                window_ms=60_000, bucket_ms=1_000, overload_ratio=2,
                namespace=f"{NAMESPACE}.{kind}",
            )
            for kind in KINDS
        } if partner.calls.adaptive_throttling else {}
        self._lock = threading.Lock()
        self._last_error: dict[str, str] = {}  # per endpoint, quoted when a call is held back
        rate = partner.calls.rate_limit_per_s
        self._rate_limiter = RateLimiter(rate) if rate else None
        self.metrics = PooledMetrics(NAMESPACE)  # updated from pool threads: see thread_metrics
        self.outcomes = {
            (kind, outcome): self.metrics.counter(f"requests_{kind}_{outcome}")
            for kind in KINDS for outcome in ("ok", "http_error", "bad_response", "exception", "throttled")
        }
        self.retries = {kind: self.metrics.counter(f"retries_{kind}") for kind in KINDS}
        self.bad_items = {kind: self.metrics.counter(f"batch_bad_items_{kind}") for kind in KINDS}
        self.latency = {kind: self.metrics.distribution(f"latency_ms_{kind}") for kind in KINDS}

    def close(self) -> None:
        self.session.close()

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

    def _attempts(self, raised: bool = False) -> int:
        # Retry.increment runs once per failed attempt; when a budget runs out the last
        # increment raises, so a raised error means every counted attempt failed. An answer
        # that exhausted the budget was counted too; cap it at 1 + retries.
        if raised:
            return max(_retry_count.value, 1)
        return min(_retry_count.value + 1, self.partner.calls.retries + 1)

    def _post(self, kind: str, url: str, body: dict) -> CallResult:
        """POST with the session's retries: the parsed JSON body as the value, or the reason
        it failed as the error, never an exception."""
        if self._rate_limiter is not None:
            self._rate_limiter.acquire()
        held_back = self._held_back(kind)
        if held_back is not None:
            return held_back
        start = time.time()
        t0 = time.perf_counter()
        _retry_count.value = 0
        try:
            response = self._send(url, json.dumps(body).encode())
        except requests.RequestException as exc:
            latency = (time.perf_counter() - t0) * 1000
            self.outcomes[kind, "exception"].inc()
            attempts = self._attempts(raised=True)
            if attempts > 1:
                self.retries[kind].inc(attempts - 1)
            return self._failed(kind, latency, attempts, f"{describe_exception(exc):.200}")
        latency = (time.perf_counter() - t0) * 1000
        self.latency[kind].update(int(latency))
        attempts = self._attempts()
        if attempts > 1:
            self.retries[kind].inc(attempts - 1)
        if response.status_code not in RETRY_STATUSES:
            # The backend handled the request: not a sign of overload, whatever the answer.
            # (A 401 or 422 for every member must not make the throttler slow the run down.)
            self._succeeded(kind, start)
        if response.status_code != 200:
            self.outcomes[kind, "http_error"].inc()
            text = response.text.replace("\n", " ")
            return self._failed(kind, latency, attempts, f"HTTP {response.status_code}: {text:.160}")
        try:
            payload = response.json()
        except ValueError:
            self.outcomes[kind, "bad_response"].inc()
            return self._failed(kind, latency, attempts, f"bad response: body is not JSON: {response.text!r:.60}")
        return CallResult(payload, latency, attempts, None)

    def _send(self, url: str, body: bytes) -> requests.Response:
        """``session.post(url, data=body)``, from a request prepared once per URL: what
        ``Session.request`` would send (headers, auth, proxies, cookies a server set)."""
        template, settings = self._posts[url]
        request = template.copy()
        request.body = body
        request.headers["Content-Length"] = str(len(body))
        if self.session.cookies:
            request.prepare_cookies(self.session.cookies)
        return self.session.send(request, timeout=self.timeout, allow_redirects=True, **settings)

    def _value(self, kind: str, item: Any) -> Any:
        """One member's answer: a prediction number, or an offer among the partner's offers."""
        if kind == "offer":
            return check_offer(item, self.partner.endpoints.offer.offers)
        return check_prediction(item, getattr(self.partner.endpoints, kind).response_field)

    def call(self, kind: str, body: dict) -> CallResult:
        """One member's call to a per-member route."""
        posted = self._post(kind, self.urls[kind], body)
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

    def call_batch(self, kind: str, bodies: list[dict]) -> list[CallResult]:
        """Many members' calls in one request to a batch route, one result per body, in order.

        A failed request fails each of its members with the same reason; an item
        that is not a valid answer fails only its own member. Latency and attempts
        are the request's, shared by its members.
        """
        posted = self._post(kind, self.batch_urls[kind], {BATCH_REQUEST_FIELD: bodies})
        failed = posted.error
        if not failed:
            try:
                items = read_batch(posted.value, len(bodies))
            except BadResponse as exc:
                self.outcomes[kind, "bad_response"].inc()
                failed = self._failed(kind, posted.latency_ms, posted.attempts, f"bad response: {exc}").error
        if failed:
            return [CallResult(None, posted.latency_ms, posted.attempts, failed)] * len(bodies)
        self.outcomes[kind, "ok"].inc()
        results = []
        for item in items:
            try:
                value, error = self._value(kind, item), None
            except BadResponse as exc:
                self.bad_items[kind].inc()
                value, error = None, f"{kind}: bad response item: {exc}"
            results.append(CallResult(value, posted.latency_ms, posted.attempts, error))
        return results


def decide(client: PartnerClient, features: dict) -> dict:
    """ATS and RESP for one member, then the offer: the per-member call sequence.

    An unexpected error (a bug, not an endpoint failure) fails this member with
    the reason instead of failing the bundle, so no member is ever lost.
    """
    try:
        partner = client.partner
        body = prediction_body(partner, features, client.wire)
        ats = client.call("ats", body)
        resp = client.call("resp", body)
        offer = None
        if ats.error is None and resp.error is None:
            offer = client.call("offer", offer_body(partner, ats.value, resp.value))
        return decision(ats, resp, offer)
    except Exception as exc:
        log.exception("unexpected error while calling the endpoints for one member")
        client.metrics.counter("members_internal_error").inc()
        return internal_error(exc)


def internal_error(exc: Exception) -> dict:
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
    errors = [r.error for r in (ats, resp) if r.error]
    if offer is not None:
        out.update(OFFER=offer.value, OFFER_LATENCY_MS=offer.latency_ms, ATTEMPTS=out["ATTEMPTS"] + offer.attempts)
        if offer.error:
            errors.append(offer.error)
    out["ERROR"] = "; ".join(errors) or None
    out["STATUS"] = "FAILED" if errors else "OK"
    return out


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def decide_batch(client: PartnerClient, pool: ThreadPoolExecutor, features: list[dict]) -> list[dict]:
    """The batch-route call sequence for many members: ATS and RESP requests in parallel,
    then one offer request for the members whose predictions both succeeded.

    Each request carries at most the partner's ``max_batch_size`` instances; the
    decisions come back in the order of ``features``. An unexpected error fails
    these members with the reason, as in ``decide``.
    """
    try:
        return _decide_batch(client, pool, features)
    except Exception as exc:
        log.exception("unexpected error while calling the batch endpoints")
        client.metrics.counter("members_internal_error").inc(len(features))
        return [internal_error(exc) for _ in features]


def _decide_batch(client: PartnerClient, pool: ThreadPoolExecutor, features: list[dict]) -> list[dict]:
    partner = client.partner
    size = partner.endpoints.max_batch_size
    parts = chunks([prediction_body(partner, f, client.wire) for f in features], size)
    ats_jobs = [pool.submit(client.call_batch, "ats", part) for part in parts]
    resp_jobs = [pool.submit(client.call_batch, "resp", part) for part in parts]
    ats = [r for job in ats_jobs for r in job.result()]
    resp = [r for job in resp_jobs for r in job.result()]
    ready = [i for i, (a, r) in enumerate(zip(ats, resp, strict=True)) if a.error is None and r.error is None]
    offers: list[CallResult | None] = [None] * len(features)
    offer_parts = chunks(ready, size)
    offer_jobs = [
        pool.submit(client.call_batch, "offer", [offer_body(partner, ats[i].value, resp[i].value) for i in part])
        for part in offer_parts
    ]
    for part, job in zip(offer_parts, offer_jobs, strict=True):
        for i, result in zip(part, job.result(), strict=True):
            offers[i] = result
    return [decision(a, r, o) for a, r, o in zip(ats, resp, offers, strict=True)]


class CallEndpointsFn(TimedDoFn):
    """A batch of (member id, summary) -> (member id, summary, decision).

    Per-member partners: each member's calls run in a thread pool. Batch
    partners (``endpoints.batch``): one request per route per ``max_batch_size``
    members, requests in the pool. The session and the pool live for the DoFn
    instance (``setup``/``teardown``), so keep-alive connections are reused
    across bundles.
    """

    def __init__(self, partner: PartnerConfig):
        self._partner = partner
        self.batch_ms = Metrics.distribution(NAMESPACE, "call_batch_ms")
        self.batch_size = Metrics.distribution(NAMESPACE, "call_batch_size")

    def setup(self):
        self._client = PartnerClient(self._partner)
        self._pool = ThreadPoolExecutor(self._partner.calls.concurrency, thread_name_prefix="endpoints")

    def teardown(self):
        self._pool.shutdown(wait=True)
        self._client.close()

    def process(self, batch: list):
        t0 = time.perf_counter()
        if self._partner.endpoints.batch:
            decisions = decide_batch(self._client, self._pool, [summary["FEATURES"] for _, summary in batch])
        else:
            decisions = self._pool.map(lambda kv: decide(self._client, kv[1]["FEATURES"]), batch)
        for (member_id, summary), decision_ in zip(batch, decisions, strict=True):
            progress.member_called(summary["N_TRANSACTIONS"])
            yield member_id, summary, decision_
        self._client.metrics.flush()
        self.batch_ms.update(int((time.perf_counter() - t0) * 1000))
        self.batch_size.update(len(batch))


class CallEndpoints(beam.PTransform):
    """Members with features -> members with predictions and an offer, in batches."""

    def __init__(self, partner: PartnerConfig):
        super().__init__()
        self._partner = partner

    def expand(self, members):
        size = self._partner.calls.batch_size
        if self._partner.endpoints.batch:
            # Two full requests per route and batch: ATS and RESP requests overlap, and
            # the server sees few, large requests.
            size = 2 * self._partner.endpoints.max_batch_size
        # Fixed-size batches (a bundle's last one is smaller): BatchElements' adaptive
        # sizing would start at one member and ramp up, a round trip per tiny batch.
        return (
            members
            | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
            | "Call" >> beam.ParDo(CallEndpointsFn(self._partner))
        )
