"""The endpoint client against a server that misbehaves in every way we know of (``tests/hostile_server.py``).

Every member must end with the outcome its behaviour calls for: FAILED with a
reason that names what happened, or OK with the reference answer; within the
time and memory bounds; and the auth secret must never reach another origin,
a reason or a log.
"""
from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from pathlib import Path

import pytest

import prediction
from lantern.partner import load
from tests.hostile_server import BEHAVIOURS, HostileServer, instance_key
from transforms import endpoints as E
from transforms import partner_client as C
from transforms.call_throttle import CompletedCallThrottler

SECRET = "s3cr3t-hostile-test-key"
KEY_ENV = "LANTERN_HOSTILE_TEST_KEY"
# Short enough for a fast suite, with the drip (a byte every 0.2 s) well inside the read timeout.
CALLS = {"connect_timeout_s": 1.0, "read_timeout_s": 0.6, "attempt_timeout_s": 1.0, "member_timeout_s": 3.0,
         "retries": 1, "backoff_s": 0.01, "backoff_max_s": 0.05, "backoff_jitter_s": 0.0, "concurrency": 64,
         "max_response_bytes": 262144}
BATCH = {"ats": {"path": "/ml/ats/predict", "batch_path": "/ml/ats/predict/batch"},
         "resp": {"path": "/ml/resp/predict", "batch_path": "/ml/resp/predict/batch"},
         "offer": {"path": "/offer/assign", "batch_path": "/offer/assign/batch", "response_field": "offer"},
         "batch": True, "max_batch_size": 4}


def hostile_partner(directory: Path, url: str, endpoints: dict | None = None, **calls) -> Path:
    path = directory / "hostile_partner.yaml"
    path.write_text(json.dumps({"name": "hostile", "endpoints": {"base_url": url, **(endpoints or {})},
                                "auth": {"header": "X-Api-Key", "env": KEY_ENV}, "calls": {**CALLS, **calls}}))
    return path


def members(n: int) -> list[dict]:
    """n distinct members' features (so the server's choice spreads over every behaviour)."""
    return [{"AVG_POINTS_BOUGHT": 100.0 + i, "AVG_REVENUE_USD": 10.0 + i / 7,
             "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 200.0 + i, "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 20.0,
             "PCT_BUY_TRANSACTIONS": 0.5, "PCT_GIFT_TRANSACTIONS": 0.25, "PCT_REDEEM_TRANSACTIONS": 0.25,
             "DAYS_SINCE_LAST_TRANSACTION": i % 40} for i in range(n)]


def reference(features: dict) -> tuple[float, float, str]:
    f = prediction.Features.model_validate(features)
    ats, resp = prediction.ats(f), prediction.resp(f)
    return ats, resp, prediction.offer(prediction.Prediction(ats_prediction=ats, resp_prediction=resp))


def check_outcomes(server: HostileServer, features: list[dict], decisions: list[dict],
                   followed: frozenset = frozenset()) -> dict[str, int]:
    """Each member: FAILED with its behaviour's reason, or OK with the reference answer. Returns
    how many members met each behaviour."""
    met: dict[str, int] = {}
    for f, d in zip(features, decisions, strict=True):
        behaviour = server.affected.get(instance_key(f))
        if behaviour is None or behaviour in followed:
            assert d["STATUS"] == "OK", (behaviour, d["ERROR"])
            assert (d["ATS_PREDICTION"], d["RESP_PREDICTION"], d["OFFER"]) == reference(f)
        else:
            assert d["STATUS"] == "FAILED" and d["OFFER"] is None, (behaviour, d)
            assert d["ERROR"].startswith("ats: "), (behaviour, d["ERROR"])
            assert server.reason_fits(behaviour, d["ERROR"]), (behaviour, d["ERROR"])
            assert "\n" not in d["ERROR"] and SECRET not in d["ERROR"]
        met[behaviour or "healthy"] = met.get(behaviour or "healthy", 0) + 1
    return met


@pytest.fixture
def servers():
    """The hostile server and "another origin" (a second loopback server on another port)."""
    with HostileServer(rate=0, secret=SECRET) as other, \
            HostileServer(rate=1.0, secret=SECRET, other=other.url, bomb_bytes=128 << 20) as hostile:
        yield hostile, other


@pytest.fixture
def client_for(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    clients = []

    def make(url: str, endpoints: dict | None = None, **calls) -> C.PartnerClient:
        client = C.PartnerClient(load(hostile_partner(tmp_path, url, endpoints, **calls)))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


async def decide_all(client, features):
    return await asyncio.gather(*(E.decide_async(client, f) for f in features))


def test_every_behaviour_fails_its_members_with_the_reason_within_the_bounds(servers, client_for, caplog):
    hostile, other = servers
    client = client_for(hostile.url)
    features = members(300)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with caplog.at_level(logging.INFO):
        decisions = client.loop.run(decide_all(client, features))
    elapsed = time.monotonic() - start
    met = check_outcomes(hostile, features, decisions)
    assert set(met) == set(BEHAVIOURS), met  # every behaviour met by some member (all of them misbehave)
    # Drips (4 KB at a byte per 0.2 s) and hangs never end by themselves: the deadlines end them.
    assert elapsed < 10 * CALLS["member_timeout_s"], elapsed
    # A 128 MiB gzip bomb and 30 MB bodies: the process grew by far less than one of them (KiB).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 25 * 1024
    assert other.requests == 0 and other.secret_seen == 0  # nothing went to the other origin
    assert hostile.secret_seen == hostile.requests > 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]  # no per-member traceback
    assert SECRET not in caplog.text


def test_redirects_to_the_same_origin_are_followed_when_the_partner_allows_them(servers, client_for):
    hostile, other = servers
    client = client_for(hostile.url, redirects="same_origin")
    hostile.behaviours = ("redirect_same", "redirect_other")
    features = members(40)
    decisions = client.loop.run(decide_all(client, features))
    met = check_outcomes(hostile, features, decisions, followed=frozenset({"redirect_same"}))
    assert met.get("redirect_same") and met.get("redirect_other")
    assert other.requests == 0 and other.secret_seen == 0


def test_batch_routes_give_each_behaviour_the_same_treatment(servers, client_for):
    hostile, other = servers
    hostile.rate = 0.6
    client = client_for(hostile.url, endpoints=BATCH)
    features = members(800)
    start = time.monotonic()
    decisions = E.decide_batch(client, features)
    assert time.monotonic() - start < 10 * CALLS["member_timeout_s"]
    met = check_outcomes(hostile, features, decisions)
    assert set(met) == {*BEHAVIOURS, "healthy"}, met
    assert other.requests == 0 and other.secret_seen == 0


def test_healthy_members_are_not_refused_while_most_calls_succeed(servers, client_for):
    hostile, _ = servers
    hostile.rate = 0.3
    hostile.behaviours = ("reset", "hang", "drip")  # failures that count against the endpoint
    client = client_for(hostile.url, attempt_timeout_s=2.0, member_timeout_s=5.0)
    features = members(200)
    decisions = client.loop.run(decide_all(client, features))
    check_outcomes(hostile, features, decisions)
    assert not [d for d in decisions if d["ERROR"] and "not sent" in d["ERROR"]]


def test_a_refused_call_is_asked_again_later_and_sent_once_the_endpoint_recovers(servers, client_for, monkeypatch):
    hostile, _ = servers
    hostile.rate = 0
    client = client_for(hostile.url)
    answers = iter([True, True, False])
    monkeypatch.setattr(client, "_refused", lambda kind: next(answers, False))
    waits = []

    async def record(seconds):
        waits.append(seconds)

    monkeypatch.setattr(C, "pause", record)
    result = client.call("ats", members(1)[0])
    assert result.error is None and result.attempts == 1
    assert waits == [0.1, 0.2]  # backoff_max_s (at least 0.1 s), then twice that


def test_the_throttler_counts_completed_calls_only():
    now = [1000.0]
    throttler = CompletedCallThrottler(clock=lambda: now[0])
    for _ in range(1000):  # asking (calls in flight) counts for nothing
        assert not throttler.refuse()
    for i in range(100):  # 60% of completed calls succeed: above the 50% threshold, nothing is refused
        throttler.completed(accepted=i % 5 < 3)
    assert throttler.refusal_probability() == 0.0
    for _ in range(100):
        throttler.completed(accepted=False)
    assert throttler.refusal_probability() > 0.3
    now[0] += 61  # the window moves on
    assert throttler.refusal_probability() == 0.0


@pytest.mark.parametrize("size, cap, encoding, outcome", [
    (1000, 2048, None, 1000),
    (5000, 2048, None, "response too large: Content-Length 5000, more than 2048 bytes"),
    (1000, 2048, "gzip", 1000),
    (100_000, 2048, "gzip", "response too large: decoded body more than 2048 bytes"),
    (1000, 2048, "br", "Content-Encoding 'br' not asked for"),
])
def test_bodies_are_capped_before_and_after_decompression(size, cap, encoding, outcome):
    import gzip

    from transforms.response_body import read_capped

    class Content:
        def __init__(self, data):
            self.data = data

        async def read(self, n):
            chunk, self.data = self.data[:n], self.data[n:]
            return chunk

    class Response:
        def __init__(self, data, headers):
            self.content, self.headers, self.content_length = Content(data), headers, len(data)

    raw = json.dumps("x" * (size - 2)).encode()
    data = gzip.compress(raw) if encoding == "gzip" else raw
    response = Response(data, {"Content-Encoding": encoding} if encoding else {})
    if isinstance(outcome, int):
        assert asyncio.run(read_capped(response, cap)) == raw
    else:
        with pytest.raises(ValueError, match=outcome):
            asyncio.run(read_capped(response, cap))


def test_a_reason_never_quotes_the_secret_even_when_the_endpoint_echoes_it(client_for):
    from tests.scripted_server import ScriptedServer

    with ScriptedServer() as server:
        server.post("/ml/ats/predict", callback=lambda request: (
            400, {}, json.dumps({"detail": f"bad key {request.headers.get('X-Api-Key')}"})))
        result = client_for(server.url).call("ats", members(1)[0])
    assert server.calls[0].headers["X-Api-Key"] == SECRET  # it was sent to its own origin
    assert result.error == 'ats: HTTP 400: {"detail": "bad key [redacted]"}'
