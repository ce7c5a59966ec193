"""The reference service: every route, the formulas of docs/contract.md, and 422 on bad bodies."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from app import JSONRoute, app

client = TestClient(app)

FEATURES = {
    "AVG_POINTS_BOUGHT": 1000.0,
    "AVG_REVENUE_USD": 10.0,
    "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 2000.0,
    "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 20.0,
    "PCT_BUY_TRANSACTIONS": 0.5,
    "PCT_GIFT_TRANSACTIONS": 0.25,
    "PCT_REDEEM_TRANSACTIONS": 0.25,
    "DAYS_SINCE_LAST_TRANSACTION": 9,
}


def test_ping():
    assert client.get("/").json() == {"msg": "pong"}


def test_ats():
    # volume = 0.7*2000 + 0.3*1000 = 1700; weight = 0.5 + 0.25 - 0.25 = 0.5
    assert client.post("/ml/ats/predict", json=FEATURES).json() == {"prediction": 850.0}


def test_ats_weight_is_clipped_at_zero():
    body = {**FEATURES, "PCT_BUY_TRANSACTIONS": 0.0, "PCT_GIFT_TRANSACTIONS": 0.0, "PCT_REDEEM_TRANSACTIONS": 1.0}
    assert client.post("/ml/ats/predict", json=body).json() == {"prediction": 0.0}


def test_resp():
    # p = 0.4*0.5 + 0.3*0.25 + 0.3*0.25 = 0.35; r = (3 + 14)/100 = 0.17; d = 1/10
    got = client.post("/ml/resp/predict", json=FEATURES).json()["prediction"]
    assert got == pytest.approx(min(0.9, 1000 * 0.35 * 0.17 * 0.1), abs=1e-12)


def test_resp_is_capped():
    body = {**FEATURES, "DAYS_SINCE_LAST_TRANSACTION": 0}
    assert client.post("/ml/resp/predict", json=body).json() == {"prediction": 0.9}


@pytest.mark.parametrize("ats, resp, offer", [(400, 0.5, "OFFER_2"), (399.99, 0.5, "OFFER_1"), (0, 0.9, "OFFER_1")])
def test_offer_threshold(ats, resp, offer):
    assert client.post("/offer/assign", json={"ats_prediction": ats, "resp_prediction": resp}).json() == {"offer": offer}


@pytest.mark.parametrize(
    "path, body",
    [
        ("/ml/ats/predict", {k: v for k, v in FEATURES.items() if k != "AVG_POINTS_BOUGHT"}),
        ("/ml/resp/predict", {**FEATURES, "PCT_BUY_TRANSACTIONS": "lots"}),
        ("/ml/resp/predict", {**FEATURES, "PCT_BUY_TRANSACTIONS": 1.5}),
        ("/offer/assign", {"ats_prediction": 1.0}),
        ("/offer/assign", {"ats_prediction": "x", "resp_prediction": 1.0}),
    ],
)
def test_bad_body_is_422_with_a_message(path, body):
    response = client.post(path, json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"]


def test_not_json_is_422():
    response = client.post("/offer/assign", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422


@pytest.mark.parametrize("path, field", [("/ml/ats/predict", "AVG_POINTS_BOUGHT"), ("/offer/assign", "resp_prediction")])
@pytest.mark.parametrize("value", [b"Infinity", b"-Infinity", b"NaN"])
def test_infinite_or_nan_numbers_are_422(path, field, value):
    body = FEATURES if path.startswith("/ml") else {"ats_prediction": 1.0, "resp_prediction": 0.5}
    text = json.dumps({**body, field: 1.0}).replace(f'"{field}": 1.0', f'"{field}": {value.decode()}')
    response = client.post(path, content=text.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_the_json_parser_reads_what_json_loads_reads():
    text = '{"ats_prediction": 1e2, "resp_prediction": 5E-1, "ignored": [null, true, "\\u00e9", {"a": -0}]}'
    response = client.post("/offer/assign", content=text.encode(), headers={"Content-Type": "application/json"})
    assert response.json() == {"offer": "OFFER_1"}
    assert all(isinstance(route, JSONRoute) for route in app.router.routes if hasattr(route, "body_field"))
