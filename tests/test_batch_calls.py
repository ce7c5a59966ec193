"""Batch-route calls: every member gets a decision, whatever the batch answer; members given one
by one (``decide_batch``) or as a table (``decide_table_async``, the block reader's) alike."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from lantern.errors import ConfigError
from lantern.partner import load, load_named
from tests.conftest import free_port
from tests.scripted_server import ScriptedServer
from transforms.endpoints import DECISION_TYPES, decide_batch, decide_table_async
from transforms.partner_client import PartnerClient

ATS, RESP, OFFER = "/ml/ats/predict/batch", "/ml/resp/predict/batch", "/offer/assign/batch"


@pytest.fixture
def server():
    with ScriptedServer() as scripted:
        yield scripted


@pytest.fixture(params=["members", "table"], autouse=True)
def path(request, monkeypatch):
    """Each test runs with the members given one by one, then as a table."""
    monkeypatch.setitem(PATHS, "current", request.param)
    return request.param


PATHS = {"current": "members"}


def make_partner(server, max_batch_size: int = 100):
    partner = load_named("reference_batch").with_endpoint_url(server.url)
    calls = partner.calls.model_copy(update={"retries": 0, "adaptive_throttling": False})
    endpoints = partner.endpoints.model_copy(update={"max_batch_size": max_batch_size})
    return partner.model_copy(update={"calls": calls, "endpoints": endpoints})


def features(i: int) -> dict:
    return {
        "AVG_POINTS_BOUGHT": float(i), "AVG_REVENUE_USD": 1.0, "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": float(i),
        "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 1.0, "PCT_BUY_TRANSACTIONS": 1.0, "PCT_GIFT_TRANSACTIONS": 0.0,
        "PCT_REDEEM_TRANSACTIONS": 0.0, "DAYS_SINCE_LAST_TRANSACTION": 1,
    }


def echo_points(request):
    """ATS/RESP stand-in: the member's points back, so order mistakes are visible."""
    instances = request.json()["instances"]
    return 200, {}, json.dumps({"predictions": [f["AVG_POINTS_BOUGHT"] for f in instances]})


def offers_by_ats(request):
    instances = request.json()["instances"]
    return 200, {}, json.dumps({"predictions": [f"OFFER_{1 + int(p['ats_prediction']) % 2}" for p in instances]})


def members_table(rows: list[dict | None]) -> pa.Table:
    """Members M0, M1... with these features (None: a member without transactions)."""
    names = list(features(0))
    return pa.table({
        "MEMBER_ID": [f"M{i}" for i in range(len(rows))],
        "N_TRANSACTIONS": [0 if row is None else 1 for row in rows],
        **{name: [None if row is None else row[name] for row in rows] for name in names},
    })


def decide_table(client, rows: list[dict | None]) -> list[dict]:
    """``decide_table_async`` on a table of ``rows``, its decisions read back in member order."""
    decided = client.loop.run(decide_table_async(client, members_table(rows))).to_pylist()
    by_member = {row["MEMBER_ID"]: {name: row[name] for name in DECISION_TYPES} for row in decided}
    return [by_member[f"M{i}"] for i in range(len(rows))]


def run(partner, n: int) -> list[dict]:
    client = PartnerClient(partner)
    try:
        if PATHS["current"] == "table":
            return decide_table(client, [features(i) for i in range(n)])
        return decide_batch(client, [features(i) for i in range(n)])
    finally:
        client.close()


def instances_per_request(server, path: str) -> list[int]:
    return sorted(len(c.json()["instances"]) for c in server.calls_to(path))


def test_decisions_come_back_in_member_order_in_requests_of_at_most_max_batch_size(server):
    server.post(ATS, callback=echo_points)
    server.post(RESP, callback=echo_points)
    server.post(OFFER, callback=offers_by_ats)
    decisions = run(make_partner(server, max_batch_size=4), 10)
    assert [d["ATS_PREDICTION"] for d in decisions] == [float(i) for i in range(10)]
    assert [d["OFFER"] for d in decisions] == [f"OFFER_{1 + i % 2}" for i in range(10)]
    assert {d["STATUS"] for d in decisions} == {"OK"} and {d["ATTEMPTS"] for d in decisions} == {3}
    for url in (ATS, RESP, OFFER):
        assert instances_per_request(server, url) == [2, 4, 4]


def test_a_bad_item_fails_only_its_member_and_skips_its_offer(server):
    server.post(ATS, callback=echo_points)
    server.post(RESP, json={"predictions": [0.5, "high", 0.5]})
    server.post(OFFER, callback=offers_by_ats)
    decisions = run(make_partner(server), 3)
    assert [d["STATUS"] for d in decisions] == ["OK", "FAILED", "OK"]
    assert "resp: bad response item" in decisions[1]["ERROR"] and decisions[1]["OFFER"] is None
    assert decisions[1]["ATS_PREDICTION"] == 1.0  # what did succeed is kept
    assert instances_per_request(server, OFFER) == [2]


@pytest.mark.parametrize("answer, failed", [
    ({"status": 503, "body": "overloaded"}, [0, 1, 2, 3, 4]),
    ({"json": {"predictions": [1.0, 2.0]}}, [0, 1, 2]),  # right for the request of 2 only
    ({"json": {"prediction": 1.0}}, [0, 1, 2, 3, 4]),
    ({"body": "not json"}, [0, 1, 2, 3, 4]),
])
def test_a_failed_batch_request_fails_each_of_its_members_and_nothing_else(server, answer, failed):
    server.post(ATS, callback=echo_points)
    server.post(RESP, **answer)
    server.post(OFFER, callback=offers_by_ats)
    decisions = run(make_partner(server, max_batch_size=3), 5)  # requests of 3 and 2 members
    assert [i for i, d in enumerate(decisions) if d["STATUS"] == "FAILED"] == failed
    assert all(decisions[i]["ERROR"].startswith("resp: ") and decisions[i]["OFFER"] is None for i in failed)
    assert [d["ATS_PREDICTION"] for d in decisions] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert sum(instances_per_request(server, OFFER)) == 5 - len(failed)


def test_unreachable_batch_route_fails_every_member(server):
    server.url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    decisions = run(make_partner(server), 3)
    assert [d["STATUS"] for d in decisions] == ["FAILED"] * 3
    assert all("ats: ConnectionError" in d["ERROR"] for d in decisions)


def test_batch_partner_without_batch_paths_is_a_config_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nendpoints:\n  batch: true\n")
    with pytest.raises(ConfigError, match="batch is true but ats, resp, offer has no batch_path"):
        load(path)


def test_a_table_sends_only_members_with_transactions_and_the_same_instances(server):
    server.post(ATS, callback=echo_points)
    server.post(RESP, callback=echo_points)
    server.post(OFFER, callback=offers_by_ats)
    partner = make_partner(server, max_batch_size=100)
    rows = [features(0), None, {**features(2), "AVG_REVENUE_USD": 0.1 + 0.2, "PCT_BUY_TRANSACTIONS": 1 / 3}, None]
    client = PartnerClient(partner)
    try:
        decisions = decide_table(client, rows)
        sent_by_table = [c.json()["instances"] for c in server.calls_to(ATS)]
        expected = decide_batch(client, [rows[0], rows[2]])
    finally:
        client.close()
    assert [d["STATUS"] for d in decisions] == ["OK", "NO_TRANSACTIONS", "OK", "NO_TRANSACTIONS"]
    assert decisions[1] == {**dict.fromkeys(DECISION_TYPES), "STATUS": "NO_TRANSACTIONS", "ATTEMPTS": 0}
    same = [name for name in DECISION_TYPES if not name.endswith("_MS")]  # timings differ, of course
    assert [{name: d[name] for name in same} for d in (decisions[0], decisions[2])] == [
        {name: d[name] for name in same} for d in expected]
    sent_one_by_one = [c.json()["instances"] for c in server.calls_to(ATS)][len(sent_by_table):]
    assert sent_by_table == sent_one_by_one  # value for value, the types of the values too
    assert [[type(v) for v in i.values()] for i in sent_by_table[0]] == [[float] * 7 + [int]] * 2


def test_an_unexpected_error_fails_the_tables_members_instead_of_the_bundle(server, monkeypatch):
    def broken(self, columns):
        raise KeyError("AVG_POINTS_BOUGHT")

    monkeypatch.setattr("lantern.json_columns.ObjectTemplate.render", broken)
    client = PartnerClient(make_partner(server))
    try:
        decisions = decide_table(client, [features(0), None])
    finally:
        client.close()
    assert decisions[0]["STATUS"] == "FAILED" and decisions[0]["OFFER"] is None
    assert decisions[0]["ERROR"] == "internal error: KeyError: 'AVG_POINTS_BOUGHT'"
    assert decisions[1]["STATUS"] == "NO_TRANSACTIONS"
