"""The HTTP client for a partner's ATS, RESP and offer endpoints: attempts, retries, throttling.

The calls run on one asyncio event loop per client (aiohttp; why in
docs/decisions.md), so hundreds of calls are in flight at a fraction of a
millisecond of CPU each. How many calls to each endpoint may be in flight is
learnt from latency and errors (``transforms.concurrency_limit``). Each attempt
has its own timeouts; retries follow urllib3's ``Retry`` rules (exponential
backoff with jitter, ``Retry-After`` honoured and capped, a separate budget for
connections that cannot be made). A call that still fails is not an exception:
it is a ``CallResult`` with the reason, so one bad member never fails a bundle.
"""
from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import math
import random
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit

import aiohttp
from apache_beam.metrics import Metrics

from lantern.json_columns import ObjectTemplate
from lantern.partner import PartnerConfig
from transforms import NAMESPACE, progress
from transforms.call_throttle import CompletedCallThrottler
from transforms.concurrency_limit import AdaptiveLimit, Slots
from transforms.event_loop import LoopThread
from transforms.rate_limit import RateLimiter
from transforms.response_body import ACCEPT_ENCODING, BadEncoding, TooLarge, read_capped
from transforms.thread_metrics import PooledMetrics

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_AFTER_STATUSES = frozenset({413, 429, 503})  # urllib3's: where a Retry-After header is honoured
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5  # same-origin hops followed, where the partner allows them
STUCK_AFTER_S = 0.25  # at least: an attempt this long (and 10x the latency target) stops counting against the limit
THROTTLED_RETRIES = 3  # a call the throttler refuses asks again after backoff_max_s, then 2x and 4x that
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
    # The two parts of latency_ms the client controls and the server does, over all attempts:
    wait_ms: float | None = None  # waiting for a slot (and a rate-limit token): client-side queueing
    wire_ms: float | None = None  # on the wire: request sent to response read (server and network)


class BatchAnswer(NamedTuple):
    """One batch request's answer for its members: a value each (None where it failed), the
    members' errors (None when none failed), and the request's latency and attempts."""

    values: list
    errors: list[str | None] | None
    latency_ms: float | None
    attempts: int
    wait_ms: float | None = None  # as CallResult's, for the whole request
    wire_ms: float | None = None


class CallTiming:
    """One call's time waiting for a slot and on the wire, summed over its attempts (seconds).

    What is left of the call's latency is back-off between attempts and the client's own work."""

    __slots__ = ("wait_s", "wire_s")

    def __init__(self):
        self.wait_s = 0.0
        self.wire_s = 0.0

    def into(self, result):
        """``result`` (a CallResult or BatchAnswer) with this call's wait and wire milliseconds."""
        return result._replace(wait_ms=self.wait_s * 1000, wire_ms=self.wire_s * 1000)


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
    retry_after: float | None  # seconds a Retry-After header asks for, where honoured


class Attempt(NamedTuple):
    """What one attempt came to: an answer, or the reason there is none; whether to try again."""

    answer: _Answer | None
    failure: str | None
    retry: bool  # a timeout, no connection, 429 or 5xx: worth another attempt, and a sign of overload
    connect: bool = False  # no connection could be made (the separate connect-retry budget)


class NotFollowed(ValueError):
    """A redirect the client does not follow: to another origin, ever; to the same one, unless allowed."""


def origin(url: str) -> str:
    """scheme://host:port of ``url``, the port spelt out, so http://h and http://h:80 are one origin."""
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    except ValueError:
        port = 0
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


class Budget:
    """One member's time with an endpoint, against ``calls.member_timeout_s``: wall time while at
    least one of its calls is on the wire or waiting to retry (ATS and RESP in parallel count
    once), not while it waits for a slot or a rate-limit token (the client's own queue)."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic):
        self.total_s = total_s
        self._clock = clock
        self._spent = 0.0
        self._active = 0
        self._since = 0.0

    def left(self) -> float:
        running = self._clock() - self._since if self._active else 0.0
        return self.total_s - self._spent - running

    @contextmanager
    def running(self) -> Iterator[None]:
        if not self._active:
            self._since = self._clock()
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            if not self._active:
                self._spent += self._clock() - self._since


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
        auth = partner.auth_headers()
        self._secrets = [value for value in auth.values() if value]
        headers = {"Content-Type": "application/json", "Accept-Encoding": ACCEPT_ENCODING, **auth}
        self._throttlers = {kind: CompletedCallThrottler() for kind in KINDS} if policy.adaptive_throttling else {}
        self._called: set[str] = set()  # endpoints with at least one attempt (active_kinds)
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
        # Per attempt: the wait for a slot and the time on the wire (the results hold them per call).
        self.wait_ms = {kind: self.metrics.distribution(f"wait_ms_{kind}") for kind in KINDS}
        self.wire_ms = {kind: self.metrics.distribution(f"wire_ms_{kind}") for kind in KINDS}
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
        return [kind for kind in KINDS if kind in self._called]

    def _refused(self, kind: str) -> bool:
        """Client-side throttling (``transforms.call_throttle``): whether to hold this call back now.

        Only once more than half of the recent completed calls to the endpoint
        failed even after retries; a healthy or merely flaky endpoint (retries
        succeed) is never held back.
        """
        throttler = self._throttlers.get(kind)
        return throttler is not None and throttler.refuse()

    def _completed(self, kind: str, accepted: bool) -> None:
        throttler = self._throttlers.get(kind)
        if throttler is not None:
            throttler.completed(accepted)

    def _failed(self, kind: str, latency: float | None, attempts: int, detail: str) -> CallResult:
        detail = self._redact(detail)
        self._last_error[kind] = detail
        return CallResult(None, latency, attempts, f"{kind}: {detail}")

    def _redact(self, text: str) -> str:
        """A reason never carries the auth secret, even where an endpoint echoes it back."""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    async def _attempt(self, kind: str, url: str, data: bytes, first: bool, budget: Budget,
                       timing: CallTiming) -> Attempt:
        """One attempt: wait for one of the endpoint's slots, then go on the wire; never raises
        for what the endpoint does (the Attempt says what happened). ``timing`` gets the
        attempt's wait for its slot and its time on the wire."""
        slots = self.slots[kind]
        self._called.add(kind)
        queued = time.perf_counter()
        in_flight = await slots.acquire(first)  # where an attempt waits for its slot
        waited = time.perf_counter() - queued
        timing.wait_s += waited
        self.wait_ms[kind].update(int(waited * 1000))
        t0 = time.perf_counter()
        attempt = None
        aside = []  # set when the attempt is stuck: its slot goes to the next call (see Slots.set_aside)
        stuck = asyncio.get_running_loop().call_later(
            self._stuck_after_s(kind), lambda: slots.set_aside() and aside.append(True))
        try:
            with budget.running():
                # Where the attempt is on the wire: from the request sent to the whole answer read.
                attempt = await self._on_the_wire(url, data, budget)
            return attempt
        finally:  # cancelled too: the slot is given back
            stuck.cancel()
            seconds = time.perf_counter() - t0
            if attempt is not None:
                self._on_wire(kind, timing, seconds)
            self._give_back(slots, attempt, seconds, in_flight, bool(aside))

    def _on_wire(self, kind: str, timing: CallTiming, seconds: float) -> None:
        timing.wire_s += seconds
        self.wire_ms[kind].update(int(seconds * 1000))

    @staticmethod
    def _give_back(slots: Slots, attempt: Attempt | None, latency: float, in_flight: int, aside: bool) -> None:
        """The attempt's slot back, with what it says of the endpoint's load: 429 and 5xx, and no
        connection, are overload signals; an attempt with no complete answer (a deadline, a reset, a
        short body, bytes that are not HTTP) or a refused one (too large, a redirect) says nothing of
        the other calls, and cutting the limit for it would let a few misbehaving members starve
        the others."""
        if attempt is None or attempt.answer is not None or attempt.connect:
            sample, dropped = latency, attempt is not None and attempt.retry
        else:
            sample, dropped = None, False
        if aside:
            slots.finish_aside(sample, in_flight, dropped)
        elif sample is None:
            slots.give_back()
        else:
            slots.release(sample, in_flight, dropped=dropped)

    def _stuck_after_s(self, kind: str) -> float:
        """How long an attempt runs before it is taken to be stuck: far past what calls take."""
        target = self.limits[kind].target_s()
        return max(STUCK_AFTER_S, 10 * target) if target is not None else STUCK_AFTER_S

    async def _on_the_wire(self, url: str, data: bytes, budget: Budget) -> Attempt:
        """Send ``data`` and read the whole answer within the attempt's deadline (connect, send,
        every byte of the body): the smaller of ``attempt_timeout_s`` and what the member has left."""
        policy = self.policy
        limit = min(policy.attempt_timeout_s, budget.left())
        try:
            async with asyncio.timeout(limit) as deadline:
                answer = await self._exchange(url, data)
        except TimeoutError as exc:
            if deadline.expired():
                if limit < policy.attempt_timeout_s:
                    why = f"member timeout: its calls took {policy.member_timeout_s:g} s (calls.member_timeout_s)"
                else:
                    why = f"attempt timeout: no complete answer within {limit:g} s (calls.attempt_timeout_s)"
                return Attempt(None, f"ConnectionError: {why}", retry=True)
            reason, connect = describe_error(exc)
            return Attempt(None, reason, retry=True, connect=connect)
        except (aiohttp.ClientError, OSError) as exc:
            reason, connect = describe_error(exc)
            return Attempt(None, reason, retry=True, connect=connect)
        except NotFollowed as exc:
            return Attempt(None, str(exc), retry=False)
        except (TooLarge, BadEncoding) as exc:
            return Attempt(None, str(exc), retry=False)
        return Attempt(answer, None, retry=answer.status in RETRY_STATUSES)

    async def _exchange(self, url: str, data: bytes) -> _Answer:
        """POST and read the answer (size-capped); redirects only as the partner allows them:
        never to another origin, so the auth header never goes anywhere else."""
        policy = self.policy
        for _ in range(MAX_REDIRECTS + 1):
            proxy = self._proxies[url] if url in self._proxies else env_proxy(url)
            async with self.session.post(url, data=data, timeout=self._timeout, proxy=proxy,
                                         allow_redirects=False, auto_decompress=False) as response:
                status = response.status
                if status in REDIRECT_STATUSES:
                    url = self._redirect_target(url, status, response.headers.get("Location"))
                    continue
                body = await read_capped(response, policy.max_response_bytes)
                wait = (retry_after_s(response.headers.get("Retry-After"), policy.retry_after_max_s)
                        if status in RETRY_AFTER_STATUSES else None)
                return _Answer(status, body, wait)
        raise NotFollowed(f"more than {MAX_REDIRECTS} redirects")

    def _redirect_target(self, url: str, status: int, location: str | None) -> str:
        """Where a redirect may be followed to, or NotFollowed saying why not."""
        if not location:
            raise NotFollowed(f"HTTP {status}: redirect without a Location not followed")
        target = urljoin(url, location.strip())
        where = origin(target)
        if where != origin(url):
            raise NotFollowed(f"HTTP {status}: redirect to {where[:120]} not followed (another origin)")
        if self.policy.redirects != "same_origin":
            raise NotFollowed(f"HTTP {status}: redirect to {where[:120]} not followed "
                              "(same origin: calls.redirects: same_origin would follow it)")
        return target

    async def _post(self, kind: str, url: str, data: bytes, budget: Budget | None = None) -> CallResult:
        """POST with retries: the parsed JSON body as the value, or the reason it failed as the
        error, never an exception; with the call's wait for slots and time on the wire."""
        timing = CallTiming()
        posted = await self._post_timed(kind, url, data, timing, budget)
        return posted if posted.latency_ms is None else timing.into(posted)  # None: never sent

    async def _post_timed(self, kind: str, url: str, data: bytes, timing: CallTiming,
                          budget: Budget | None) -> CallResult:
        """``_post``'s attempts. Budgets as urllib3's ``Retry``: ``retries`` in all, of which
        at most ``connect_retries`` for connections that cannot be made; and the member's time
        (``budget``): no attempt starts, no wait is begun, that it could not finish."""
        policy = self.policy
        budget = budget if budget is not None else Budget(policy.member_timeout_s)
        if self._rate_limiter is not None:
            wait = self._rate_limiter.reserve()
            if wait:  # waiting for a rate-limit token is client-side queueing too
                timing.wait_s += wait
                await pause(wait)
        refused = await self._wait_while_refused(kind, budget, timing)
        if refused is not None:
            return refused
        t0 = time.perf_counter()
        attempts = 0
        connect_left = min(policy.connect_retries, policy.retries)
        retries_left = policy.retries
        gave_up = ""
        while True:
            attempts += 1
            attempt = await self._attempt(kind, url, data, attempts == 1, budget, timing)
            if not attempt.retry or retries_left <= 0 or (attempt.connect and connect_left <= 0):
                break
            wait = attempt.answer.retry_after if attempt.answer is not None else None
            wait = wait or backoff_s(attempts, policy.backoff_s, policy.backoff_jitter_s, policy.backoff_max_s)
            if budget.left() <= wait:
                gave_up = f" (gave up: calls.member_timeout_s of {policy.member_timeout_s:g} s spent)"
                break
            retries_left -= 1
            connect_left -= attempt.connect
            if wait:
                with budget.running():
                    await pause(wait)
        latency = (time.perf_counter() - t0) * 1000
        if attempts > 1:
            self.retries[kind].inc(attempts - 1)
        answer = attempt.answer
        # A completed call for the throttler: accepted unless the endpoint was overloaded or unreachable.
        self._completed(kind, accepted=not attempt.retry)
        if answer is None:
            self.outcomes[kind, "http_error" if attempt.failure.startswith("HTTP ") else
                          "bad_response" if not attempt.retry else "exception"].inc()
            return self._failed(kind, latency, attempts, f"{attempt.failure:.200}{gave_up}")
        self.latency[kind].update(int(latency))
        if answer.status != 200:
            self.outcomes[kind, "http_error"].inc()
            text = answer.body.decode("utf-8", "replace").replace("\n", " ")
            return self._failed(kind, latency, attempts, f"HTTP {answer.status}: {text:.160}{gave_up}")
        try:
            payload = json.loads(answer.body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
            self.outcomes[kind, "bad_response"].inc()
            if isinstance(exc, RecursionError):
                return self._failed(kind, latency, attempts, "bad response: JSON nested too deeply")
            text = answer.body[:200].decode("utf-8", "replace")
            return self._failed(kind, latency, attempts, f"bad response: body is not JSON: {text!r:.60}")
        return CallResult(payload, latency, attempts, None)

    async def _wait_while_refused(self, kind: str, budget: Budget, timing: CallTiming) -> CallResult | None:
        """While the throttler refuses the call, wait and ask again (the endpoint may recover
        meanwhile); a call still refused after ``THROTTLED_RETRIES`` waits is not sent. The
        waits are client-side queueing (``timing``)."""
        if not self._refused(kind):
            return None
        for n in range(THROTTLED_RETRIES):
            wait = max(self.policy.backoff_max_s, 0.1) * 2 ** n
            if budget.left() <= wait:
                break
            with budget.running():
                await pause(wait)
            timing.wait_s += wait
            if not self._refused(kind):
                return None
        self.outcomes[kind, "throttled"].inc()
        last = self._last_error.get(kind, "")
        return CallResult(None, None, 0, f"{kind}: not sent: most calls are failing (last: {last:.140})")

    def _value(self, kind: str, item: Any) -> Any:
        """One member's answer: a prediction number, or an offer among the partner's offers."""
        if kind == "offer":
            return check_offer(item, self.partner.endpoints.offer.offers)
        return check_prediction(item, getattr(self.partner.endpoints, kind).response_field)

    async def call_async(self, kind: str, body: dict | bytes, budget: Budget | None = None) -> CallResult:
        """One member's call to a per-member route (``body`` as a dict or already as JSON); ``budget``
        is the member's time, shared by its calls (a budget of its own when not given)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        posted = await self._post(kind, self.urls[kind], data, budget)
        if posted.error:
            return posted
        field = getattr(self.partner.endpoints, kind).response_field
        try:
            value = self._value(kind, _field(posted.value, field))
        except BadResponse as exc:
            self.outcomes[kind, "bad_response"].inc()
            failed = self._failed(kind, posted.latency_ms, posted.attempts, f"bad response: {exc}")
            return failed._replace(wait_ms=posted.wait_ms, wire_ms=posted.wire_ms)
        self.outcomes[kind, "ok"].inc()
        return posted._replace(value=value)

    async def post_batch_async(self, kind: str, data: bytes, count: int, budget: Budget | None = None) -> BatchAnswer:
        """One request of ``count`` instances (``data``, already encoded) to a batch route.

        A failed request fails each of its members with the same reason; an item
        that is not a valid answer fails only its own member. Latency and attempts
        are the request's, shared by its members.
        """
        posted = await self._post(kind, self.batch_urls[kind], data, budget)
        failed = posted.error
        if not failed:
            try:
                items = read_batch(posted.value, count)
            except BadResponse as exc:
                self.outcomes[kind, "bad_response"].inc()
                failed = self._failed(kind, posted.latency_ms, posted.attempts, f"bad response: {exc}").error
        if failed:
            return BatchAnswer([None] * count, [failed] * count, posted.latency_ms, posted.attempts,
                               posted.wait_ms, posted.wire_ms)
        self.outcomes[kind, "ok"].inc()
        if kind == "offer":
            offers = self._offers
            usual = all(type(v) is str and v in offers for v in items)
        else:
            usual = all(type(v) is float for v in items) and all(map(math.isfinite, items))
        if usual:  # every item a valid answer: checked at once, not item by item
            return BatchAnswer(items, None, posted.latency_ms, posted.attempts, posted.wait_ms, posted.wire_ms)
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
        return BatchAnswer(values, errors if any(errors) else None, posted.latency_ms, posted.attempts,
                           posted.wait_ms, posted.wire_ms)

    def call(self, kind: str, body: dict) -> CallResult:
        """``call_async`` from a thread other than the loop's (tests, benchmarks)."""
        return self.loop.run(self.call_async(kind, body))
