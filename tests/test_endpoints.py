"""Endpoint calls and DoFns against a scripted local server: success, 500s, malformed bodies."""
from __future__ import annotations

import asyncio
import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from lantern.partner import Auth, load_named
from tests.scripted_server import ScriptedServer
from transforms import endpoints as E
from transforms import partner_client as C

BASE = "http://ml.test"
PARTNER = load_named("default").with_endpoint_url(BASE)
FAST = PARTNER.model_copy(update={"calls": PARTNER.calls.model_copy(update={
    "retries": 2, "backoff_s": 0.0, "backoff_jitter_s": 0.0, "adaptive_throttling": False})})
FEATURES = {
    "AVG_POINTS_BOUGHT": 1000.0, "AVG_REVENUE_USD": 10.0,
    "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 2000.0, "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 20.0,
    "PCT_BUY_TRANSACTIONS": 0.5, "PCT_GIFT_TRANSACTIONS": 0.25, "PCT_REDEEM_TRANSACTIONS": 0.25,
    "DAYS_SINCE_LAST_TRANSACTION": 9,
}
ATS, RESP, OFFER = "/ml/ats/predict", "/ml/resp/predict", "/offer/assign"


@pytest.fixture
def server():
    with ScriptedServer() as scripted:
        yield scripted


def at(server: ScriptedServer, partner=FAST):
    return partner.with_endpoint_url(server.url)


def decide(partner):
    client = C.PartnerClient(partner)
    try:
        return E.decide(client, FEATURES)
    finally:
        client.close()


def test_three_calls_and_the_bodies_sent(server):
    server.post(ATS, json={"prediction": 850.0})
    server.post(RESP, json={"prediction": 0.5})
    server.post(OFFER, json={"offer": "OFFER_2"})
    out = decide(at(server))
    assert (out["STATUS"], out["OFFER"], out["ATS_PREDICTION"], out["RESP_PREDICTION"]) == ("OK", "OFFER_2", 850.0, 0.5)
    assert out["ATTEMPTS"] == 3 and out["ERROR"] is None
    assert out["ATS_LATENCY_MS"] >= 0 and out["OFFER_LATENCY_MS"] >= 0
    assert [c.json() for c in server.calls_to(ATS)] == [c.json() for c in server.calls_to(RESP)] == [FEATURES]
    assert [c.json() for c in server.calls_to(OFFER)] == [{"ats_prediction": 850.0, "resp_prediction": 0.5}]
    assert len(server.calls) == 3


def test_500_is_retried_then_succeeds(server):
    server.post(ATS, status=500, body="boom")
    server.post(ATS, json={"prediction": 1.0})
    server.post(RESP, json={"prediction": 0.5})
    server.post(OFFER, json={"offer": "OFFER_1"})
    out = decide(at(server))
    assert out["STATUS"] == "OK"
    assert out["ATTEMPTS"] == 4  # ATS twice, RESP and offer once


def test_persistent_500_fails_the_member_with_the_reason(server):
    server.post(ATS, status=500, body="model crashed")
    server.post(RESP, json={"prediction": 0.5})
    out = decide(at(server))
    assert out["STATUS"] == "FAILED"
    assert out["ERROR"].startswith("ats: HTTP 500: model crashed")
    assert out["OFFER"] is None and out["ATS_PREDICTION"] is None
    assert out["ATTEMPTS"] == 3 + 1  # 1 + 2 retries on ATS, 1 on RESP
    assert len(server.calls_to(OFFER)) == 0 and len(server.calls_to(ATS)) == 3


def test_4xx_is_not_retried(server):
    server.post(ATS, status=422, json={"detail": "bad"})
    server.post(RESP, json={"prediction": 0.5})
    out = decide(at(server))
    assert out["STATUS"] == "FAILED" and "HTTP 422" in out["ERROR"]
    assert len(server.calls_to(ATS)) == 1


@pytest.mark.parametrize(
    "body, reason",
    [
        ({"score": 1.0}, "no 'prediction' field"),
        ({"prediction": None}, "not a number"),
        ({"prediction": "1.0"}, "not a number"),
        ({"prediction": True}, "not a number"),
        ("[1, 2]", "no 'prediction' field"),
        ("{oops", "not JSON"),
        ('{"prediction": NaN}', "not finite"),
        ('{"prediction": Infinity}', "not finite"),
    ],
)
def test_malformed_prediction_is_a_failure_not_a_crash(server, body, reason):
    text = body if isinstance(body, str) else json.dumps(body)
    server.post(ATS, body=text)
    server.post(RESP, json={"prediction": 0.5})
    out = decide(at(server))
    assert out["STATUS"] == "FAILED"
    assert reason in out["ERROR"]


def test_unknown_offer_is_a_failure(server):
    server.post(ATS, json={"prediction": 1.0})
    server.post(RESP, json={"prediction": 0.5})
    server.post(OFFER, json={"offer": "OFFER_99"})
    out = decide(at(server))
    assert out["STATUS"] == "FAILED" and "unknown offer 'OFFER_99'" in out["ERROR"]


def test_connection_refused_is_a_failure():
    partner = FAST.with_endpoint_url("http://127.0.0.1:9")
    out = decide(partner)
    assert out["STATUS"] == "FAILED" and out["ERROR"].startswith("ats: ConnectionError")


def test_call_endpoints_transform_keeps_every_member(server, local_runner):
    # Member "bad" gets a 500 from RESP; the DoFn must emit it as FAILED, not drop it.
    def resp_cb(request):
        if request.json()["DAYS_SINCE_LAST_TRANSACTION"] == 99:
            return 500, {}, "down"
        return 200, {}, json.dumps({"prediction": 0.5})

    server.post(ATS, json={"prediction": 100.0})
    server.post(RESP, callback=resp_cb)
    server.post(OFFER, json={"offer": "OFFER_1"})
    members = [(f"m{i}", {"N_TRANSACTIONS": 1, "FEATURES": FEATURES}) for i in range(5)]
    members.append(("bad", {"N_TRANSACTIONS": 1, "FEATURES": {**FEATURES, "DAYS_SINCE_LAST_TRANSACTION": 99}}))
    with TestPipeline(runner=local_runner) as p:
        out = p | beam.Create(members) | E.CallEndpoints(at(server)) | beam.Map(lambda t: (t[0], t[2]["STATUS"]))
        assert_that(out, equal_to([(f"m{i}", "OK") for i in range(5)] + [("bad", "FAILED")]))


def test_request_shape_from_partner_file():
    from lantern.partner import PartnerConfig

    partner = PartnerConfig.model_validate({
        "name": "shaped",
        "features": [{"name": "AVG_POINTS_BOUGHT", "send_as": "avg_points"}, "N_TRANSACTIONS"],
        "endpoints": {"request": {"nest_under": "features", "extra_fields": {"model": "v2"}},
                      "ats": {"path": "/a"}, "resp": {"path": "/r"}, "offer": {"path": "/o"}},
    })
    body = C.prediction_body(partner, {"AVG_POINTS_BOUGHT": 1.5, "N_TRANSACTIONS": 3})
    assert body == {"model": "v2", "features": {"avg_points": 1.5, "N_TRANSACTIONS": 3}}


def test_days_feature_type_is_int_in_json():
    text = json.dumps(C.prediction_body(PARTNER, FEATURES))
    assert '"DAYS_SINCE_LAST_TRANSACTION": 9}' in text


def test_each_call_sends_the_headers_auth_and_cookies_of_the_partner(server, monkeypatch):
    # What went over the wire: the JSON content type, the auth header, each body's own
    # length, and a cookie the server set sent back on every later call (load balancers).
    monkeypatch.setenv("ACME_KEY", "s3cret")
    partner = at(server).model_copy(update={"auth": Auth(header="X-Api-Key", env="ACME_KEY")})
    server.post(ATS, json={"prediction": 1.0}, headers={"Set-Cookie": "lb=node-7; Path=/"})
    server.post(ATS, json={"prediction": 1.0})
    server.post(RESP, json={"prediction": 0.5})
    server.post(OFFER, json={"offer": "OFFER_1"})
    client = C.PartnerClient(partner)
    try:
        assert client.call("ats", FEATURES).error is None
        assert E.decide(client, FEATURES)["STATUS"] == "OK"
        short = E.decide(client, {**FEATURES, "DAYS_SINCE_LAST_TRANSACTION": 1234567})
        assert short["STATUS"] == "OK"
    finally:
        client.close()
    sent = server.calls
    assert [r.path for r in sent[1:]].count(ATS) == 2 and len(sent) == 7
    for request in sent:
        assert request.method == "POST"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["X-Api-Key"] == "s3cret"
        assert request.headers["Content-Length"] == str(len(request.body))
    assert "Cookie" not in sent[0].headers
    assert [r.headers.get("Cookie") for r in sent[1:]] == ["lb=node-7"] * 6
    assert {r.json()["DAYS_SINCE_LAST_TRANSACTION"] for r in sent if r.path != OFFER} == {9, 1234567}


def test_environment_proxy_is_read_once_when_the_client_is_made(server, monkeypatch):
    # The proxy variables are read once per URL when the client is made, and honoured:
    # the scripted server plays the proxy, so it sees the absolute URL of the endpoint.
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server.url)
    server.post(ATS, json={"prediction": 1.0})
    client = C.PartnerClient(FAST)  # http://ml.test: reachable only through the proxy
    try:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        result = client.call("ats", FEATURES)
    finally:
        client.close()
    assert result.error is None and result.value == 1.0
    assert [c.path for c in server.calls] == [BASE + ATS]


def test_latency_in_two_parts_waiting_for_a_slot_and_on_the_wire(server):
    """One slot, a server that takes 0.2 s: of four calls at once, each is on the wire about 0.2 s;
    the later ones waited for the slot 0.2, 0.4 and 0.6 s first. Total = wait + wire (+ client work)."""
    import time as _time

    def slow(request):
        _time.sleep(0.2)
        return 200, {}, json.dumps({"prediction": 1.0})

    server.post(ATS, callback=slow)
    one_slot = at(server).model_copy(update={"calls": FAST.calls.model_copy(update={
        "concurrency": 1, "adaptive_concurrency": False})})
    client = C.PartnerClient(one_slot)
    try:
        async def four():
            return await asyncio.gather(*(client.call_async("ats", C.prediction_body(one_slot, FEATURES))
                                          for _ in range(4)))
        results = client.loop.run(four())
    finally:
        client.close()
    assert all(r.error is None for r in results)
    waits = sorted(r.wait_ms for r in results)
    assert all(180 <= r.wire_ms <= 400 for r in results), [r.wire_ms for r in results]
    assert waits[0] < 50 and all(w >= 180 * (i + 1) for i, w in enumerate(waits[1:])), waits
    for r in results:
        assert r.wait_ms + r.wire_ms <= r.latency_ms + 0.5 and r.latency_ms - r.wait_ms - r.wire_ms < 50


def test_retried_attempts_add_up_on_the_wire(server):
    server.post(ATS, status=503, body="busy")
    server.post(ATS, json={"prediction": 1.0})
    client = C.PartnerClient(at(server))
    try:
        result = client.call("ats", C.prediction_body(at(server), FEATURES))
    finally:
        client.close()
    assert result.error is None and result.attempts == 2
    assert 0 < result.wire_ms <= result.latency_ms and result.wait_ms >= 0


def test_the_dofns_of_a_process_share_one_client_closed_by_the_last(server):
    import pickle

    fn = E.CallEndpointsFn(load_named("default").with_endpoint_url(server.url))
    copies = [pickle.loads(pickle.dumps(fn)) for _ in range(3)]  # as a worker process unpickles each instance
    failed = pickle.loads(pickle.dumps(fn))
    failed.teardown()  # an instance whose setup never ran lets go of nothing
    for copy in copies:
        copy.setup()
    client = copies[0]._client
    assert all(copy._client is client for copy in copies)
    copies[0].teardown()
    copies[0].teardown()  # twice: still one user fewer
    assert not client.loop.loop.is_closed()
    for copy in copies[1:]:
        copy.teardown()
    assert client.loop.loop.is_closed()
