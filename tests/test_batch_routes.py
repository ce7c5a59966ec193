"""The reference service's batch routes: same formulas as the per-member routes, in order, bounded."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import prediction
from app import app

client = TestClient(app)


def features(i: int) -> dict:
    return {
        "AVG_POINTS_BOUGHT": 100.0 * i - 250,
        "AVG_REVENUE_USD": 0.035 * i,
        "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 1000.0 + 37 * i,
        "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 0.125 * i + 0.05,
        "PCT_BUY_TRANSACTIONS": (i % 4) / 4,
        "PCT_GIFT_TRANSACTIONS": ((i + 1) % 4) / 8,
        "PCT_REDEEM_TRANSACTIONS": ((i + 2) % 4) / 8,
        "DAYS_SINCE_LAST_TRANSACTION": 3 * i + 1,
    }


@pytest.mark.parametrize("kind", ["ats", "resp"])
def test_prediction_batch_matches_single_calls_in_order(kind):
    instances = [features(i) for i in range(12)]
    batch = client.post(f"/ml/{kind}/predict/batch", json={"instances": instances})
    assert batch.status_code == 200
    singles = [client.post(f"/ml/{kind}/predict", json=f).json()["prediction"] for f in instances]
    assert batch.json() == {"predictions": singles}
    assert len(set(singles)) > 6  # distinct answers, so a reordering would show


def test_offer_batch_matches_single_calls_in_order():
    instances = [{"ats_prediction": 50.0 * i, "resp_prediction": 0.9 - 0.05 * i} for i in range(15)]
    batch = client.post("/offer/assign/batch", json={"instances": instances})
    assert batch.status_code == 200
    singles = [client.post("/offer/assign", json=p).json()["offer"] for p in instances]
    assert batch.json() == {"predictions": singles}
    assert set(singles) == {"OFFER_1", "OFFER_2"}


@pytest.mark.parametrize("route", ["/ml/ats/predict/batch", "/ml/resp/predict/batch", "/offer/assign/batch"])
def test_batch_past_the_maximum_is_rejected_with_the_limit_named(route):
    one = features(1) if "ml" in route else {"ats_prediction": 1.0, "resp_prediction": 0.5}
    at_max = client.post(route, json={"instances": [one] * prediction.MAX_BATCH_SIZE})
    assert at_max.status_code == 200
    past = client.post(route, json={"instances": [one] * (prediction.MAX_BATCH_SIZE + 1)})
    assert past.status_code == 422
    assert str(prediction.MAX_BATCH_SIZE) in past.text


@pytest.mark.parametrize("body", [{"instances": []}, {}, {"instances": "x"}, [features(1)]])
def test_batch_without_instances_is_a_422(body):
    assert client.post("/ml/ats/predict/batch", json=body).status_code == 422


def test_one_invalid_instance_rejects_the_batch_and_names_its_position():
    bad = {**features(2), "PCT_BUY_TRANSACTIONS": 1.5}
    response = client.post("/ml/resp/predict/batch", json={"instances": [features(1), bad]})
    assert response.status_code == 422
    assert "instances" in response.text and "1" in response.text
