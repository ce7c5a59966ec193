"""Fault injection of the reference service: configuration from the environment, and the draws."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from fastapi.testclient import TestClient

import faults
from faults import FaultConfig, FaultConfigError, choose


def test_off_by_default():
    config = FaultConfig.from_env({})
    assert config == FaultConfig()
    assert not config.active


def test_every_variable_is_read():
    config = FaultConfig.from_env({
        "FAULT_RATE": "0.2", "FAULT_STATUS": "503", "FAULT_LATENCY_MS": "250", "FAULT_LATENCY_RATE": "0.05",
        "FAULT_MALFORMED_RATE": "0.1", "FAULT_MALFORMED_KINDS": "nan, null", "FAULT_429_RATE": "0.3",
        "FAULT_RETRY_AFTER_S": "2", "FAULT_PATHS": "/ml/resp/predict", "FAULT_SEED": "7",
    })
    assert config == FaultConfig(rate=0.2, status=503, latency_ms=250, latency_rate=0.05, malformed_rate=0.1,
                                 malformed_kinds=("nan", "null"), rate_429=0.3, retry_after_s=2,
                                 paths=("/ml/resp/predict",), seed=7)
    assert config.active


@pytest.mark.parametrize("env, message", [
    ({"FAULT_RATE": "lots"}, "FAULT_RATE='lots' is not valid"),
    ({"FAULT_RATE": "1.5"}, "FAULT_RATE=1.5: must be between 0 and 1"),
    ({"FAULT_RATE": "0.6", "FAULT_429_RATE": "0.6"}, "must not exceed 1"),
    ({"FAULT_STATUS": "200"}, "FAULT_STATUS=200"),
    ({"FAULT_MALFORMED_KINDS": "nan,weird"}, "unknown ['weird']"),
])
def test_bad_values_are_one_readable_error(env, message):
    with pytest.raises(FaultConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        FaultConfig.from_env(env)


def test_only_post_routes_under_the_chosen_paths_are_affected():
    config = FaultConfig(rate=1.0, paths=("/ml/resp",))
    assert config.applies_to("POST", "/ml/resp/predict")
    assert not config.applies_to("POST", "/ml/ats/predict")
    assert not config.applies_to("GET", "/")
    assert FaultConfig(rate=1.0).applies_to("POST", "/offer/assign")


def test_rates_are_honoured_over_many_draws():
    config = FaultConfig(rate=0.2, rate_429=0.1, malformed_rate=0.1, latency_ms=100, latency_rate=0.05)
    rng = random.Random(3)
    draws = [choose(config, "/ml/ats/predict", rng) for _ in range(20_000)]
    statuses = Counter(d.status for d in draws)
    assert statuses[500] / len(draws) == pytest.approx(0.2, abs=0.015)
    assert statuses[429] / len(draws) == pytest.approx(0.1, abs=0.015)
    assert statuses[200] / len(draws) == pytest.approx(0.1, abs=0.015)
    assert statuses[None] / len(draws) == pytest.approx(0.6, abs=0.015)
    delayed = [d for d in draws if d.delay_s]
    assert len(delayed) / len(draws) == pytest.approx(0.05, abs=0.01)
    assert {d.delay_s for d in delayed} == {0.1}
    assert all(d.headers == {"Retry-After": "1"} for d in draws if d.status == 429)


def test_malformed_bodies_name_the_route_field_and_unknown_offer_only_on_the_offer_route():
    config = FaultConfig(malformed_rate=1.0)
    rng = random.Random(1)
    ats_bodies = {choose(config, "/ml/ats/predict", rng).body for _ in range(500)}
    offer_bodies = {choose(config, "/offer/assign", rng).body for _ in range(500)}
    assert ats_bodies == {b.format(field="prediction") for k, b in faults.MALFORMED_BODIES.items()
                          if k != "unknown_offer"}
    assert offer_bodies == {b.format(field="offer") for b in faults.MALFORMED_BODIES.values()}


def _client(config: FaultConfig) -> TestClient:
    from fastapi import FastAPI

    import app as app_module

    app = FastAPI()
    app.router.routes.extend(app_module.app.router.routes)
    app.add_middleware(faults.FaultInjectionMiddleware, config=config)
    return TestClient(app)


def test_middleware_answers_with_the_fault_and_leaves_ping_alone():
    client = _client(FaultConfig(rate_429=1.0, retry_after_s=3))
    response = client.post("/offer/assign", json={"ats_prediction": 1, "resp_prediction": 1})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert client.get("/").json() == {"msg": "pong"}


def test_middleware_passes_unaffected_routes_to_the_real_handler():
    client = _client(FaultConfig(rate=1.0, status=503, paths=("/ml/resp/predict",)))
    offer = client.post("/offer/assign", json={"ats_prediction": 1000, "resp_prediction": 0.5})
    assert offer.json() == {"offer": "OFFER_2"}
    resp = client.post("/ml/resp/predict", json={})
    assert resp.status_code == 503
    assert json.loads(resp.text)["detail"] == "injected fault: HTTP 503"
