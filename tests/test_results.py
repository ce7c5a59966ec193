"""Results rows through the batch job's writer: every column's value and null, and the counts by status."""
from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline

from lantern.features import SPEC_FEATURES
from transforms.parquet_rows import WriteParquetRows
from transforms.results import NOT_CALLED, ToResultRowFn, feature_columns, results_schema

AS_OF = dt.date(2026, 11, 24)
COLUMNS = feature_columns(SPEC_FEATURES)


def features(i: int) -> dict:
    return {name: (i if name == "DAYS_SINCE_LAST_TRANSACTION" else i / 4) for name in COLUMNS}


MEMBERS = [
    ("idle", {"N_TRANSACTIONS": 0, "FEATURES": None}, None),
    ("fo", {"N_TRANSACTIONS": 3, "FEATURES": features(3)}, NOT_CALLED),
    ("ok", {"N_TRANSACTIONS": 2, "FEATURES": features(2)},
     {"ATS_PREDICTION": 1400.5, "RESP_PREDICTION": 0.25, "OFFER": "OFFER_B", "STATUS": "OK", "ERROR": None,
      "ATS_LATENCY_MS": 1.5, "RESP_LATENCY_MS": 2.0, "OFFER_LATENCY_MS": 0.5, "ATS_WAIT_MS": 0.25,
      "ATS_WIRE_MS": 1.25, "RESP_WAIT_MS": 0.5, "RESP_WIRE_MS": 1.5, "OFFER_WAIT_MS": 0.0, "OFFER_WIRE_MS": 0.5,
      "ATTEMPTS": 3}),
    ("failed", {"N_TRANSACTIONS": 1, "FEATURES": features(1)},
     {"STATUS": "FAILED", "ERROR": "ats: HTTP 503", "ATS_LATENCY_MS": 9.0, "ATTEMPTS": 4}),
]
NO_DECISION = dict.fromkeys(("ATS_PREDICTION", "RESP_PREDICTION", "OFFER", "STATUS", "ERROR", "ATS_LATENCY_MS",
                             "RESP_LATENCY_MS", "OFFER_LATENCY_MS", "ATS_WAIT_MS", "ATS_WIRE_MS", "RESP_WAIT_MS",
                             "RESP_WIRE_MS", "OFFER_WAIT_MS", "OFFER_WIRE_MS", "ATTEMPTS"))


def expected(member_id, summary, decision) -> dict:
    row = {"MEMBER_ID": member_id, **(summary["FEATURES"] or dict.fromkeys(COLUMNS)),
           "N_TRANSACTIONS": summary["N_TRANSACTIONS"], **NO_DECISION, **(decision or {}),
           "PARTNER": "default", "AS_OF": AS_OF}
    if decision is None:
        row.update(STATUS="NO_TRANSACTIONS", ATTEMPTS=0)
    return row


def test_results_parquet_holds_every_value_and_null_and_counts_by_status(local_runner, tmp_path):
    p = TestPipeline(runner=local_runner)
    (p | beam.Create(MEMBERS * 5)
       | beam.ParDo(ToResultRowFn(COLUMNS, "default", AS_OF))
       | WriteParquetRows(str(tmp_path / "part"), results_schema(SPEC_FEATURES)))
    result = p.run()
    result.wait_until_finish()

    table = pq.read_table(next(tmp_path.glob("part-*.parquet")))
    assert table.schema == results_schema(SPEC_FEATURES)
    want = [expected(*m) for m in MEMBERS * 5]
    assert sorted(table.to_pylist(), key=lambda r: r["MEMBER_ID"]) == sorted(want, key=lambda r: r["MEMBER_ID"])
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter())["counters"]}
    assert {k: v for k, v in counters.items() if k.startswith("members_")} == {
        "members_ok": 5, "members_no_transactions": 5, "members_failed": 5, "members_features_only": 5}
