"""Streaming messages: export lines without a header, or JSON objects, through the batch parser rules."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from apache_beam.pvalue import TaggedOutput

from lantern import features
from lantern.features import Transaction
from lantern.partner import load_named
from transforms.messages import Message, ParseMessageFn, message_layout
from transforms.parse import parse_timestamp

SOURCE = "pubsub:projects/p/subscriptions/s"
AS_OF = dt.date(2026, 11, 24)


def _fn(partner_name: str = "legacy_export", as_of: dt.date | None = AS_OF) -> ParseMessageFn:
    partner = load_named(partner_name)
    layout = message_layout(partner.input)
    return ParseMessageFn({SOURCE: layout}, partner.input.columns, partner.input.delimiter,
                          partner.input.timestamp_formats, as_of)


def _parse(fn: ParseMessageFn, raw: bytes | Message) -> list:
    """Outputs, each parsed message as (member id, Transaction | None)."""
    message = raw if isinstance(raw, Message) else Message(SOURCE, raw)
    return [out if isinstance(out, TaggedOutput) else (out[0], out[1].txn) for out in fn.process(message)]


def _identity(fn: ParseMessageFn, message: Message) -> str | None:
    ((_, arrival),) = fn.process(message)
    return arrival.txn_id


def _ts(text: str) -> int:
    return parse_timestamp(text, ("iso",))


def test_line_in_partner_column_order_is_a_transaction():
    out = _parse(_fn(), b"M1,2025-03-01 10:00:00,Buy,100,2.5\r\n")
    assert out == [("M1", Transaction(_ts("2025-03-01 10:00:00"), features.BUY, 100.0, 2.5))]


def test_json_object_keyed_by_partner_columns_matches_the_line():
    msg = {"memberId": " M1 ", "lastTransatcionUtcTs": "2025-03-01T10:00:00Z", "lastTransactionType": "buy",
           "lastTransactionPointsBought": 100, "lastTransactionRevenueUSD": 2.5, "extra": [1]}
    out = _parse(_fn(), json.dumps(msg).encode())
    assert out == [("M1", Transaction(_ts("2025-03-01 10:00:00"), features.BUY, 100.0, 2.5))]


def test_json_member_only_and_header_message():
    fn = _fn("default")
    assert _parse(fn, b'{"MEMBER_ID": "M2", "LAST_TRANSACTION_TS": null}') == [("M2", None)]
    header = b"MEMBER_ID,LAST_TRANSACTION_TS,LAST_TRANSACTION_TYPE,LAST_TRANSACTION_POINTS_BOUGHT,LAST_TRANSACTION_REVENUE_USD"
    assert _parse(fn, header) == []  # a replayed export's header is skipped, not a dead letter


@pytest.mark.parametrize("raw, reason", [
    (b'{"memberId": "M1", "lastTransatcionUtcTs": ', "MALFORMED_JSON"),
    (b"[1, 2]", "WRONG_FIELD_COUNT"),  # not an object, so read as a CSV line
    (b'{"memberId": "M1", "lastTransactionType": "buy"}', "PARTIAL_TRANSACTION"),
    (b'{"lastTransatcionUtcTs": "2025-03-01 10:00:00", "lastTransactionType": "buy", '
     b'"lastTransactionPointsBought": 1, "lastTransactionRevenueUSD": 1}', "MISSING_MEMBER_ID"),
    (b'{"memberId": "M1", "lastTransatcionUtcTs": "2025-03-01 10:00:00", "lastTransactionType": "buy", '
     b'"lastTransactionPointsBought": true, "lastTransactionRevenueUSD": 1}', "BAD_NUMBER"),
    (b'{"memberId": "M1", "lastTransatcionUtcTs": "2025-03-01 10:00:00", "lastTransactionType": "buy", '
     b'"lastTransactionPointsBought": NaN, "lastTransactionRevenueUSD": 1}', "NON_FINITE_NUMBER"),
    (b"M1,2025-03-01 10:00:00,buy,100", "WRONG_FIELD_COUNT"),
    (b"M1,2026-11-25 00:00:00,buy,100,1", "AFTER_AS_OF"),
    (b"{\xff}", "NOT_UTF8"),
])
def test_bad_messages_are_dead_letters_with_the_batch_reason_codes(raw, reason):
    (out,) = _parse(_fn(), raw)
    assert isinstance(out, TaggedOutput)
    assert out.value["REASON"] == reason
    assert out.value["SOURCE"] == SOURCE


def test_without_as_of_the_cutoff_is_today_utc():
    fn = _fn(as_of=None)
    today = dt.datetime.now(dt.timezone.utc).date()
    ok = f"M1,{today} 00:00:00,buy,1,1".encode()
    late = f"M1,{today + dt.timedelta(days=1)} 00:00:00,buy,1,1".encode()
    assert _parse(fn, ok)[0][0] == "M1"
    assert _parse(fn, late)[0].value["REASON"] == "AFTER_AS_OF"


def test_headerless_partner_messages_follow_its_header_columns():
    from lantern.errors import ConfigError
    from lantern.partner import InputConfig

    config = InputConfig(header=False, header_columns=[
        "LAST_TRANSACTION_TYPE", "MEMBER_ID", "EXTRA", "LAST_TRANSACTION_TS",
        "LAST_TRANSACTION_POINTS_BOUGHT", "LAST_TRANSACTION_REVENUE_USD"])
    layout = message_layout(config)
    fn = ParseMessageFn({SOURCE: layout}, config.columns, ",", ("iso",), AS_OF)
    assert _parse(fn, b"gift,M7,x,2025-01-02 03:04:05,5,6") == [
        ("M7", Transaction(_ts("2025-01-02 03:04:05"), features.GIFT, 5.0, 6.0))]
    with pytest.raises(ConfigError, match="MEMBER_ID"):
        message_layout(InputConfig(header=False, header_columns=["A", "B"]))


LINE = b"M1,2025-03-01 10:00:00,buy,100,2.5"


def _id_fn(id_attribute: str | None = "txn", column: str | None = None) -> ParseMessageFn:
    partner = load_named("default")
    config = partner.input.model_copy(update={"transaction_id_column": column})
    layout = message_layout(config)
    return ParseMessageFn({SOURCE: layout}, config.columns, config.delimiter, config.timestamp_formats, AS_OF,
                          partner="default", id_attribute=id_attribute, transaction_id_column=column)


def test_identity_is_the_transaction_id_then_the_id_attribute_then_the_message_id():
    fn = _id_fn(column="TXN_ID")
    assert _identity(fn, Message(SOURCE, LINE + b",T-9", {"txn": "A-1"}, "m-1")) == "txn:T-9"
    assert _identity(fn, Message(SOURCE, LINE + b",", {"txn": "A-1"}, "m-1")) == "attr:A-1"
    assert _identity(fn, Message(SOURCE, LINE + b",", {}, "m-1")) == "msg:m-1"
    assert _identity(fn, Message(SOURCE, LINE + b",")) is None  # a replayed line without an id: never a duplicate
    as_json = json.dumps({"MEMBER_ID": "M1", "LAST_TRANSACTION_TS": "2025-03-01 10:00:00", "LAST_TRANSACTION_TYPE":
                          "buy", "LAST_TRANSACTION_POINTS_BOUGHT": 1, "LAST_TRANSACTION_REVENUE_USD": 1,
                          "TXN_ID": 77}).encode()
    assert _identity(fn, Message(SOURCE, as_json, {}, "m-2")) == "txn:77"
    assert message_layout(load_named("default").input.model_copy(
        update={"transaction_id_column": "TXN_ID"})).n_fields == 6


@pytest.mark.parametrize("attributes, reason", [
    ({"trace": "x"}, "UNKNOWN_ATTRIBUTE"),
    ({"partner": "acme_rewards"}, "UNKNOWN_PARTNER"),
    ({"format": "avro"}, "UNKNOWN_FORMAT"),
    ({"format": "json"}, "MALFORMED_JSON"),  # a line announced as JSON is read as JSON
])
def test_bad_attributes_are_dead_letters(attributes, reason):
    (out,) = _parse(_id_fn(), Message(SOURCE, LINE, attributes, "m-1"))
    assert isinstance(out, TaggedOutput) and out.value["REASON"] == reason and "\n" not in out.value["DETAIL"]


def test_known_attributes_are_accepted():
    attributes = {"partner": "default", "format": "csv", "txn": "A-1", "googclient_schemaencoding": "JSON"}
    assert _parse(_id_fn(), Message(SOURCE, LINE, attributes, "m-1")) == [
        ("M1", Transaction(_ts("2025-03-01 10:00:00"), features.BUY, 100.0, 2.5))]
