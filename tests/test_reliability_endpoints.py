"""The endpoint client against the real reference service with faults injected (``faults.py``).

No mocks here: every request goes through aiohttp, the client's retries and uvicorn.
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lantern.partner import load
from tests.broken_server import BrokenServer
from tests.conftest import free_port, uvicorn_server, write_partner
from tests.scripted_server import ScriptedServer
from transforms import endpoints as E
from transforms import partner_client as C

FEATURES = {
    "AVG_POINTS_BOUGHT": 1000.0, "AVG_REVENUE_USD": 10.0,
    "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 2000.0, "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 20.0,
    "PCT_BUY_TRANSACTIONS": 0.5, "PCT_GIFT_TRANSACTIONS": 0.25, "PCT_REDEEM_TRANSACTIONS": 0.25,
    "DAYS_SINCE_LAST_TRANSACTION": 9,
}


@pytest.fixture(scope="module")
def flaky_url():
    """20% HTTP 500, and 5% of requests delayed past the tests' 0.3 s read timeout."""
    env = {"FAULT_RATE": "0.2", "FAULT_STATUS": "500", "FAULT_LATENCY_MS": "800", "FAULT_LATENCY_RATE": "0.05"}
    with uvicorn_server(env=env) as url:
        yield url


@pytest.fixture(scope="module")
def busy_url():
    """Half of the requests get 429 with Retry-After: 2."""
    with uvicorn_server(env={"FAULT_429_RATE": "0.5", "FAULT_RETRY_AFTER_S": "2"}) as url:
        yield url


@pytest.fixture(scope="module")
def garbled_url():
    """Every answer is a 200 with a malformed body (all kinds, repeatable draws)."""
    with uvicorn_server(env={"FAULT_MALFORMED_RATE": "1", "FAULT_SEED": "11"}) as url:
        yield url


@pytest.fixture
def client_for(tmp_path):
    clients = []

    def make(url: str, **calls) -> C.PartnerClient:
        client = C.PartnerClient(load(write_partner(tmp_path, url, **calls)))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def sleeps(monkeypatch):
    """Every wait of the client (backoff, Retry-After, rate limit), recorded, not waited."""
    recorded = []

    async def record(seconds):
        recorded.append(seconds)

    monkeypatch.setattr(C, "pause", record)
    return recorded


def test_500s_and_read_timeouts_are_retried_until_every_member_is_ok(flaky_url, client_for):
    client = client_for(flaky_url, retries=10, read_timeout_s=0.3)
    decisions = [E.decide(client, FEATURES) for _ in range(40)]
    assert {d["STATUS"] for d in decisions} == {"OK"}, [d["ERROR"] for d in decisions if d["ERROR"]]
    assert {d["OFFER"] for d in decisions} == {"OFFER_2"}
    # 120 calls at 20-24% failure each: some attempts were retries (P(no retry) < 1e-11).
    assert sum(d["ATTEMPTS"] for d in decisions) > 3 * len(decisions)


def test_a_read_timeout_without_retries_fails_the_member_with_the_reason(tmp_path, client_for):
    with uvicorn_server(env={"FAULT_LATENCY_MS": "1000", "FAULT_PATHS": "/ml/ats"}) as url:
        decision = E.decide(client_for(url, retries=0, read_timeout_s=0.2), FEATURES)
    assert decision["STATUS"] == "FAILED"
    assert decision["ERROR"] == "ats: ConnectionError: read timeout"
    assert decision["RESP_PREDICTION"] is not None  # the other model was still asked
    assert decision["ATTEMPTS"] == 2


def test_429_waits_as_long_as_retry_after_says(busy_url, client_for, sleeps):
    client = client_for(busy_url, retries=10, retry_after_max_s=30, backoff_s=0.001)
    decisions = [E.decide(client, FEATURES) for _ in range(10)]
    assert {d["STATUS"] for d in decisions} == {"OK"}
    retry_after_waits = [s for s in sleeps if s == 2]
    assert len(retry_after_waits) == sum(d["ATTEMPTS"] for d in decisions) - 3 * len(decisions) > 0


def test_retry_after_is_capped_by_the_partner_policy(busy_url, client_for, sleeps):
    client = client_for(busy_url, retries=10, retry_after_max_s=1, backoff_s=0.001)
    decisions = [E.decide(client, FEATURES) for _ in range(10)]
    assert {d["STATUS"] for d in decisions} == {"OK"}
    assert 2 not in sleeps and 1 in sleeps


def test_other_4xx_is_not_retried(server_url, client_for):
    client = client_for(server_url, retries=5)
    result = client.call("ats", {"AVG_POINTS_BOUGHT": "lots"})
    assert result.attempts == 1
    assert result.error.startswith("ats: HTTP 422: ")
    assert "AVG_POINTS_BOUGHT" in result.error


def test_malformed_bodies_are_failures_with_a_reason(garbled_url, client_for):
    client = client_for(garbled_url, retries=3)
    offer_body = {"ats_prediction": 1, "resp_prediction": 1}
    results = [client.call(kind, offer_body if kind == "offer" else FEATURES)
               for kind in ("ats", "offer") for _ in range(40)]
    assert all(r.value is None and r.attempts == 1 for r in results)  # a 200 is never retried
    assert {r.error for r in results} == {
        "ats: bad response: body is not JSON: '<html>upstream error</html>'",
        "ats: bad response: response has no 'prediction' field",
        "ats: bad response: 'prediction' is not a number: None",
        "ats: bad response: 'prediction' is not a number: '12.5'",
        "ats: bad response: 'prediction' is not finite: nan",
        "ats: bad response: 'prediction' is not finite: inf",
        "offer: bad response: body is not JSON: '<html>upstream error</html>'",
        "offer: bad response: response has no 'offer' field",
        "offer: bad response: unknown offer None",
        "offer: bad response: unknown offer '12.5'",
        "offer: bad response: unknown offer nan",
        "offer: bad response: unknown offer inf",
        "offer: bad response: unknown offer 'OFFER_99'",
    }


def test_connection_refused_fails_after_the_retries(tmp_path, client_for):
    client = client_for(f"http://127.0.0.1:{free_port()}", retries=2)
    decision = E.decide(client, FEATURES)
    assert decision["STATUS"] == "FAILED"
    assert decision["ERROR"] == "ats: ConnectionError: connection refused; resp: ConnectionError: connection refused"
    assert decision["ATTEMPTS"] == 6
    assert decision["OFFER"] is None


def test_a_host_that_refuses_connections_gets_only_the_connect_retries(client_for):
    client = client_for(f"http://127.0.0.1:{free_port()}", retries=6, connect_retries=1, adaptive_throttling=False)
    result = client.call("ats", FEATURES)
    assert (result.attempts, result.error) == (2, "ats: ConnectionError: connection refused")


def test_calls_to_a_down_endpoint_are_held_back_and_to_a_healthy_one_never(server_url, client_for, sleeps):
    down = client_for(f"http://127.0.0.1:{free_port()}", retries=0)
    results = [down.call("ats", FEATURES) for _ in range(40)]
    sent = [r for r in results if r.attempts]
    held_back = [r for r in results if not r.attempts]
    # The refusal probability climbs towards n/(n+1) as failures accumulate without a success.
    assert len(held_back) >= 15 and len(sent) >= 1
    assert all(r.error == "ats: ConnectionError: connection refused" for r in sent)
    assert all(r.error == "ats: not sent: most calls are failing (last: ConnectionError: connection refused)"
               and r.latency_ms is None and r.value is None for r in held_back)
    assert sleeps and set(sleeps) <= {0.1, 0.2, 0.4}  # a refused call waited and asked again before giving up
    healthy = client_for(server_url, retries=0)
    assert all(healthy.call("ats", FEATURES).attempts == 1 for _ in range(40))


def test_throttling_can_be_switched_off(client_for):
    down = client_for(f"http://127.0.0.1:{free_port()}", retries=0, adaptive_throttling=False)
    assert all(down.call("ats", FEATURES).attempts == 1 for _ in range(40))


def test_answers_that_are_not_overload_never_hold_calls_back(garbled_url, client_for):
    """A malformed 200 (like a 4xx) means the backend handled the call: retrying less would not help it."""
    client = client_for(garbled_url, retries=0)
    assert all(client.call("ats", FEATURES).attempts == 1 for _ in range(40))


def test_an_unexpected_error_fails_the_member_instead_of_the_bundle(server_url, client_for, monkeypatch):
    def broken(partner, features, wire=None):
        raise KeyError("AVG_POINTS_BOUGHT")

    monkeypatch.setattr(E, "prediction_body", broken)
    decision = E.decide(client_for(server_url), FEATURES)
    assert decision["STATUS"] == "FAILED"
    assert decision["ERROR"] == "internal error: KeyError: 'AVG_POINTS_BOUGHT'"
    assert decision["OFFER"] is None and decision["ATTEMPTS"] == 0


@pytest.mark.parametrize("mode, reason", [
    ("hang", "ConnectionError: read timeout"),
    ("reset", "ConnectionError: connection lost: "),
    ("garbage", "ConnectionError: bad HTTP answer: "),
])
def test_an_endpoint_that_hangs_resets_or_answers_garbage_fails_each_member_with_the_reason(
        client_for, mode, reason):
    with BrokenServer(mode) as server:
        client = client_for(server.url, retries=1, read_timeout_s=0.2, adaptive_throttling=False)
        decisions = client.loop.run(decide_many(client, 12))
        limits = {kind: client.limits[kind].limit for kind in ("ats", "resp")}
    assert len(decisions) == 12 and {d["STATUS"] for d in decisions} == {"FAILED"}
    for d in decisions:
        assert d["ERROR"].startswith(f"ats: {reason}") and f"; resp: {reason}" in d["ERROR"], d["ERROR"]
        assert d["ATTEMPTS"] == 4 and d["OFFER"] is None  # ATS and RESP: 1 + 1 retry each
        assert "\n" not in d["ERROR"]
    assert server.posts == 48
    assert all(limit >= 1 for limit in limits.values())  # cut down, never to zero


def test_the_limit_shrinks_while_an_endpoint_is_slow_and_grows_back_when_it_is_fast(client_for):
    slow = threading.Event()
    slow.set()

    def answer(request):
        if slow.is_set():
            time.sleep(0.3)
        return 200, {}, '{"prediction": 1.0}'

    with ScriptedServer() as server:
        server.post("/ml/ats/predict", callback=answer)
        client = client_for(server.url, retries=0, concurrency=64)
        limit = client.limits["ats"]
        # The server shares this process (and its GIL) with the client: allow it 100 ms of
        # jitter when fast (a loaded machine's scheduling), still far below the 300 ms of its slow phase.
        limit.slack_s = 0.1

        async def calls(n):
            return await asyncio.gather(*(client.call_async("ats", FEATURES) for _ in range(n)))

        # Fast first (the floor), then slow: the server handles the calls one thread each,
        # so latency grows with the calls in flight and the limit is cut.
        slow.clear()
        assert all(r.error is None for r in client.loop.run(calls(200)))
        slow.set()
        assert all(r.error is None for r in client.loop.run(calls(100)))
        assert limit.decreases > 0
        cut = limit.limit
        slow.clear()
        for _ in range(20):  # fast rounds until the limit has grown back (a loaded machine needs more)
            assert all(r.error is None for r in client.loop.run(calls(400)))
            if limit.limit > cut:
                break
        assert limit.limit > cut


async def decide_many(client, n):
    return await asyncio.gather(*(E.decide_async(client, FEATURES) for _ in range(n)))
