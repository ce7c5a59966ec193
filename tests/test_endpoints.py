"""Endpoint DoFns against ``responses`` mocks: success, 500s, malformed bodies."""
from __future__ import annotations

import json

import apache_beam as beam
import pytest
import responses
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from responses import matchers

from lantern.partner import Auth, load_named
from transforms import endpoints as E

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
ATS, RESP, OFFER = (BASE + "/ml/ats/predict", BASE + "/ml/resp/predict", BASE + "/offer/assign")


def decide(partner=FAST):
    client = E.PartnerClient(partner)
    try:
        return E.decide(client, FEATURES)
    finally:
        client.close()


@responses.activate
def test_three_calls_and_the_bodies_sent():
    responses.post(ATS, json={"prediction": 850.0}, match=[matchers.json_params_matcher(FEATURES)])
    responses.post(RESP, json={"prediction": 0.5}, match=[matchers.json_params_matcher(FEATURES)])
    responses.post(OFFER, json={"offer": "OFFER_2"},
                   match=[matchers.json_params_matcher({"ats_prediction": 850.0, "resp_prediction": 0.5})])
    out = decide()
    assert (out["STATUS"], out["OFFER"], out["ATS_PREDICTION"], out["RESP_PREDICTION"]) == ("OK", "OFFER_2", 850.0, 0.5)
    assert out["ATTEMPTS"] == 3 and out["ERROR"] is None
    assert out["ATS_LATENCY_MS"] >= 0 and out["OFFER_LATENCY_MS"] >= 0


@responses.activate
def test_500_is_retried_then_succeeds():
    responses.post(ATS, status=500, body="boom")
    responses.post(ATS, json={"prediction": 1.0})
    responses.post(RESP, json={"prediction": 0.5})
    responses.post(OFFER, json={"offer": "OFFER_1"})
    out = decide()
    assert out["STATUS"] == "OK"
    assert out["ATTEMPTS"] == 4  # ATS twice, RESP and offer once


@responses.activate
def test_persistent_500_fails_the_member_with_the_reason():
    responses.post(ATS, status=500, body="model crashed")
    responses.post(RESP, json={"prediction": 0.5})
    out = decide()
    assert out["STATUS"] == "FAILED"
    assert out["ERROR"].startswith("ats: HTTP 500: model crashed")
    assert out["OFFER"] is None and out["ATS_PREDICTION"] is None
    assert out["ATTEMPTS"] == 3 + 1  # 1 + 2 retries on ATS, 1 on RESP
    assert len([c for c in responses.calls if c.request.url == OFFER]) == 0


@responses.activate
def test_4xx_is_not_retried():
    responses.post(ATS, status=422, json={"detail": "bad"})
    responses.post(RESP, json={"prediction": 0.5})
    out = decide()
    assert out["STATUS"] == "FAILED" and "HTTP 422" in out["ERROR"]
    assert len([c for c in responses.calls if c.request.url == ATS]) == 1


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
@responses.activate
def test_malformed_prediction_is_a_failure_not_a_crash(body, reason):
    text = body if isinstance(body, str) else json.dumps(body)
    responses.post(ATS, body=text, content_type="application/json")
    responses.post(RESP, json={"prediction": 0.5})
    out = decide()
    assert out["STATUS"] == "FAILED"
    assert reason in out["ERROR"]


@responses.activate
def test_unknown_offer_is_a_failure():
    responses.post(ATS, json={"prediction": 1.0})
    responses.post(RESP, json={"prediction": 0.5})
    responses.post(OFFER, json={"offer": "OFFER_99"})
    out = decide()
    assert out["STATUS"] == "FAILED" and "unknown offer 'OFFER_99'" in out["ERROR"]


def test_connection_refused_is_a_failure():
    partner = FAST.with_endpoint_url("http://127.0.0.1:9")
    out = decide(partner)
    assert out["STATUS"] == "FAILED" and out["ERROR"].startswith("ats: ConnectionError")


@responses.activate
def test_call_endpoints_transform_keeps_every_member(local_runner):
    # Member "bad" gets a 500 from RESP; the DoFn must emit it as FAILED, not drop it.
    def ats_cb(request):
        return 200, {}, json.dumps({"prediction": 100.0})

    def resp_cb(request):
        body = json.loads(request.body)
        if body["DAYS_SINCE_LAST_TRANSACTION"] == 99:
            return 500, {}, "down"
        return 200, {}, json.dumps({"prediction": 0.5})

    responses.add_callback(responses.POST, ATS, callback=ats_cb)
    responses.add_callback(responses.POST, RESP, callback=resp_cb)
    responses.post(OFFER, json={"offer": "OFFER_1"})
    members = [(f"m{i}", {"N_TRANSACTIONS": 1, "FEATURES": FEATURES}) for i in range(5)]
    members.append(("bad", {"N_TRANSACTIONS": 1, "FEATURES": {**FEATURES, "DAYS_SINCE_LAST_TRANSACTION": 99}}))
    with TestPipeline(runner=local_runner) as p:
        out = p | beam.Create(members) | E.CallEndpoints(FAST) | beam.Map(lambda t: (t[0], t[2]["STATUS"]))
        assert_that(out, equal_to([(f"m{i}", "OK") for i in range(5)] + [("bad", "FAILED")]))


def test_request_shape_from_partner_file():
    from lantern.partner import PartnerConfig

    partner = PartnerConfig.model_validate({
        "name": "shaped",
        "features": [{"name": "AVG_POINTS_BOUGHT", "send_as": "avg_points"}, "N_TRANSACTIONS"],
        "endpoints": {"request": {"nest_under": "features", "extra_fields": {"model": "v2"}},
                      "ats": {"path": "/a"}, "resp": {"path": "/r"}, "offer": {"path": "/o"}},
    })
    body = E.prediction_body(partner, {"AVG_POINTS_BOUGHT": 1.5, "N_TRANSACTIONS": 3})
    assert body == {"model": "v2", "features": {"avg_points": 1.5, "N_TRANSACTIONS": 3}}


def test_days_feature_type_is_int_in_json():
    text = json.dumps(E.prediction_body(PARTNER, FEATURES))
    assert '"DAYS_SINCE_LAST_TRANSACTION": 9}' in text


@responses.activate
def test_each_call_sends_what_session_post_would(monkeypatch):
    # Calls go out from a request prepared once per URL: the headers, the auth header,
    # a body length per call and cookies a server set must still be those of Session.post.
    monkeypatch.setenv("ACME_KEY", "s3cret")
    partner = FAST.model_copy(update={"auth": Auth(header="X-Api-Key", env="ACME_KEY")})
    responses.post(ATS, json={"prediction": 1.0}, headers={"Set-Cookie": "lb=node-7; Path=/"})
    responses.post(RESP, json={"prediction": 0.5})
    responses.post(OFFER, json={"offer": "OFFER_1"})
    client = E.PartnerClient(partner)
    try:
        assert E.decide(client, FEATURES)["STATUS"] == "OK"
        short = E.decide(client, {**FEATURES, "DAYS_SINCE_LAST_TRANSACTION": 1234567})
        assert short["STATUS"] == "OK"
    finally:
        client.close()
    sent = [c.request for c in responses.calls]
    assert [r.url for r in sent] == [ATS, RESP, OFFER] * 2
    for request in sent:
        assert request.method == "POST"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["X-Api-Key"] == "s3cret"
        assert request.headers["Content-Length"] == str(len(request.body))
    assert "Cookie" not in sent[0].headers
    assert [r.headers.get("Cookie") for r in sent[1:]] == ["lb=node-7"] * 5
    assert json.loads(sent[3].body)["DAYS_SINCE_LAST_TRANSACTION"] == 1234567


@responses.activate
def test_environment_is_read_once_when_the_client_is_made(monkeypatch):
    # requests reads proxy variables and .netrc on every call while trust_env is on;
    # the client reads them once per URL and keeps honouring them.
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    proxied = matchers.request_kwargs_matcher({"proxies": {"http": "http://proxy.test:3128"}})
    responses.post(ATS, json={"prediction": 1.0}, match=[proxied])
    client = E.PartnerClient(FAST)
    try:
        assert client.session.trust_env is False
        monkeypatch.setenv("HTTP_PROXY", "http://elsewhere.test:1")
        result = client.call("ats", FEATURES)
    finally:
        client.close()
    assert result.error is None and result.value == 1.0
