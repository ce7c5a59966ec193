"""Parse: one case per dead-letter reason, member-only rows, headers, encodings."""
from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from lantern.features import BUY, GIFT, REDEEM, Transaction
from transforms import parse as P

AS_OF = dt.date(2026, 11, 24)
HEADER = b"MEMBER_ID,LAST_TRANSACTION_TS,LAST_TRANSACTION_TYPE,LAST_TRANSACTION_POINTS_BOUGHT,LAST_TRANSACTION_REVENUE_USD"
LAYOUT = P.FileLayout(HEADER, 5, 0, 1, 2, 3, 4)
SRC = "export.csv"


def run_fn(lines: list[bytes]) -> tuple[list, list]:
    fn = P.ParseLineFn({SRC: LAYOUT}, ",", ["iso"], AS_OF)
    good, bad = [], []
    for line in lines:
        for out in fn.process((SRC, line)):
            if isinstance(out, beam.pvalue.TaggedOutput):
                bad.append(out.value)
            else:
                good.append(out)
    return good, bad


def us(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1_000_000)


def test_transaction_row():
    good, bad = run_fn([b"A1 ,2023-12-10 11:24:18,Gift,9600,32.0"])
    assert bad == []
    assert good == [("A1", Transaction(us("2023-12-10T11:24:18+00:00"), GIFT, 9600.0, 32.0))]


def test_member_only_row():
    good, bad = run_fn([b"A1,,,,"])
    assert (good, bad) == ([("A1", None)], [])


REASON_CASES = [
    (b",2023-12-10 11:24:18,buy,1,1", P.MISSING_MEMBER_ID),
    (b",,,,", P.MISSING_MEMBER_ID),
    (b"A1,2023-12-10 11:24:18,buy,,1", P.PARTIAL_TRANSACTION),
    (b"A1,yesterday,buy,1,1", P.BAD_TIMESTAMP),
    (b"A1,2023-12-10 11:24:18,transfer,1,1", P.UNKNOWN_TYPE),
    (b"A1,2023-12-10 11:24:18,buy,lots,1", P.BAD_NUMBER),
    (b"A1,2023-12-10 11:24:18,buy,1,inf", P.NON_FINITE_NUMBER),
    (b"A1,2023-12-10 11:24:18,buy,nan,1", P.NON_FINITE_NUMBER),
    (b"A1,2023-12-10 11:24:18,buy,1", P.WRONG_FIELD_COUNT),
    (b'A1,"2023-12-10 11:24:18"x,buy,1,1', P.MALFORMED_CSV),
    (b"A\xff1,2023-12-10 11:24:18,buy,1,1", P.NOT_UTF8),
    (b"A1,2026-11-25 00:00:00,buy,1,1", P.AFTER_AS_OF),
    (b"   ", P.BLANK_LINE),
]


@pytest.mark.parametrize("line, reason", REASON_CASES)
def test_each_reason_code(line, reason):
    good, bad = run_fn([line])
    assert good == []
    assert len(bad) == 1
    assert bad[0]["REASON"] == reason
    assert bad[0]["SOURCE"] == SRC
    assert bad[0]["DETAIL"]


def test_every_reason_code_has_a_case():
    assert {reason for _, reason in REASON_CASES} == set(P.REASONS)


def test_raw_bytes_are_kept_escaped():
    _, bad = run_fn([b"A\xff1,2023-12-10 11:24:18,buy,1,1"])
    assert bad[0]["RAW_LINE"] == "A\\xff1,2023-12-10 11:24:18,buy,1,1"


def test_quoted_fields_bom_crlf_and_repeated_header():
    lines = [
        P.BOM + HEADER + b"\r\n",
        b'"A,1",2023-12-10T11:24:18Z,"BUY",100,"1.5"\r\n',
        HEADER,
        b"B2,2023-12-10T12:24:18+01:00,redeem,-100,0\r",
    ]
    good, bad = run_fn(lines)
    assert bad == []
    assert good == [
        ("A,1", Transaction(us("2023-12-10T11:24:18+00:00"), BUY, 100.0, 1.5)),
        ("B2", Transaction(us("2023-12-10T11:24:18+00:00"), REDEEM, -100.0, 0.0)),
    ]


def test_timestamp_on_the_as_of_day_is_accepted():
    good, bad = run_fn([b"A1,2026-11-24 23:59:59,buy,1,1"])
    assert bad == [] and len(good) == 1


def test_custom_timestamp_format():
    assert P.parse_timestamp("10/12/2023 11:24", ("iso", "%d/%m/%Y %H:%M")) == us("2023-12-10T11:24:00+00:00")


def test_parse_export_transform_tags_dead_letters(local_runner):
    lines = [(SRC, HEADER), (SRC, b"A1,2023-12-10 11:24:18,buy,10,1"), (SRC, b"A2,,,,"), (SRC, b",,,,")]
    with TestPipeline(runner=local_runner) as p:
        out = p | beam.Create(lines) | P.ParseExport({SRC: LAYOUT}, ",", ["iso"], AS_OF)
        assert_that(out.transactions | beam.Map(lambda kv: kv[0]), equal_to(["A1", "A2"]), label="members")
        assert_that(out[P.DEAD_LETTER] | beam.Map(lambda r: r["REASON"]), equal_to([P.MISSING_MEMBER_ID]),
                    label="dead")
