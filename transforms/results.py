"""Result and dead-letter rows and their Parquet schemas (docs/contract.md)."""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from lantern.features import INTEGER_FEATURES, SPEC_FEATURES
from transforms import NAMESPACE, progress

OK, NO_TRANSACTIONS, FAILED = "OK", "NO_TRANSACTIONS", "FAILED"
# A member with transactions in a --features-only run: features filled, no calls made.
FEATURES_ONLY = "FEATURES_ONLY"
STATUSES = (OK, NO_TRANSACTIONS, FAILED, FEATURES_ONLY)
NOT_CALLED = {"STATUS": FEATURES_ONLY, "ATTEMPTS": 0}  # the decision of a features-only member

DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("SOURCE", pa.string()),
        ("RAW_LINE", pa.string()),
        ("REASON", pa.string()),
        ("DETAIL", pa.string()),
    ]
)

# A decision's columns (transforms.endpoints fills them, per member or as columns of a table).
DECISION_FIELDS = [
    ("ATS_PREDICTION", pa.float64()),
    ("RESP_PREDICTION", pa.float64()),
    ("OFFER", pa.string()),
    ("STATUS", pa.string()),
    ("ERROR", pa.string()),
    ("ATS_LATENCY_MS", pa.float64()),
    ("RESP_LATENCY_MS", pa.float64()),
    ("OFFER_LATENCY_MS", pa.float64()),
    # The two parts of each call's latency (over its attempts): waiting for a slot, client side,
    # and on the wire, request sent to response read (the server's and the network's time).
    ("ATS_WAIT_MS", pa.float64()),
    ("ATS_WIRE_MS", pa.float64()),
    ("RESP_WAIT_MS", pa.float64()),
    ("RESP_WIRE_MS", pa.float64()),
    ("OFFER_WAIT_MS", pa.float64()),
    ("OFFER_WIRE_MS", pa.float64()),
    ("ATTEMPTS", pa.int64()),
]


# The latency columns, by the name run.json's ``latency_ms`` gives each: one summary per column
# (transforms/run_counts.py), so a new latency column is summarised once it is listed here.
# A decision's timing columns: they differ from one run of the same members to the next.
TIMING_COLUMNS = tuple(name for name, _ in DECISION_FIELDS if name.endswith("_MS"))
# run.json's latency_ms entries and the results column each summarises: per endpoint the whole call
# (``ats``), its wait for slots (``ats_wait``) and its time on the wire (``ats_wire``).
LATENCY_COLUMNS = {
    **{kind: f"{kind.upper()}_LATENCY_MS" for kind in ("ats", "resp", "offer")},
    **{f"{kind}_{part}": f"{kind.upper()}_{part.upper()}_MS" for kind in ("ats", "resp", "offer")
       for part in ("wait", "wire")},
}


def feature_columns(feature_names: Iterable[str]) -> list[str]:
    """The contract's 8 feature columns always, then any extra the partner computes."""
    extra = [n for n in feature_names if n not in SPEC_FEATURES and n != "N_TRANSACTIONS"]
    return list(SPEC_FEATURES) + extra


# --changed-only runs: whether a member's decision is the base run's (true) or was made now (false).
DECISION_CARRIED_OVER = "DECISION_CARRIED_OVER"


def results_schema(feature_names: Iterable[str], carried_column: bool = False) -> pa.Schema:
    features = [
        (name, pa.int64() if name in INTEGER_FEATURES else pa.float64())
        for name in feature_columns(feature_names)
    ]
    return pa.schema(
        [("MEMBER_ID", pa.string()), *features, ("N_TRANSACTIONS", pa.int64()), *DECISION_FIELDS,
         ("PARTNER", pa.string()), ("AS_OF", pa.date32())]
        + ([(DECISION_CARRIED_OVER, pa.bool_())] if carried_column else [])
    )


_DECISION_NAMES = tuple(name for name, _ in DECISION_FIELDS)
NO_DECISION = {**dict.fromkeys(_DECISION_NAMES), "STATUS": NO_TRANSACTIONS, "ATTEMPTS": 0}


def result_row(
    member_id: str, summary: dict, decision: dict | None, columns: list[str], partner: str, as_of: dt.date
) -> dict:
    """One results row; a member without transactions gets nulls and no decision."""
    features = summary["FEATURES"]
    row = {"MEMBER_ID": member_id}
    if features is None:
        row.update(dict.fromkeys(columns))
    else:
        get = features.get
        for name in columns:
            row[name] = get(name)
    row["N_TRANSACTIONS"] = summary["N_TRANSACTIONS"]
    if decision is None:
        row.update(NO_DECISION)
    else:
        get = decision.get
        for name in _DECISION_NAMES:
            row[name] = get(name)
    row["PARTNER"] = partner
    row["AS_OF"] = as_of
    return row


def not_called_table(members: pa.Table) -> pa.Table:
    """A ``members_table`` with the decisions of a features-only run as columns: FEATURES_ONLY for
    members with transactions, NO_TRANSACTIONS for the others, no calls."""
    active = pc.greater(members.column("N_TRANSACTIONS"), 0)
    status = pc.if_else(active, pa.scalar(FEATURES_ONLY), pa.scalar(NO_TRANSACTIONS))
    return members.append_column("STATUS", status).append_column(
        "ATTEMPTS", pa.array(np.zeros(members.num_rows, dtype=np.int64)))


def result_table(decided: pa.Table, schema: pa.Schema, partner: str, as_of: dt.date) -> pa.Table:
    """Members with their decisions as columns -> results rows as one table of ``schema``: the
    columns ``result_row`` fills, nulls where ``decided`` has none, the partner and as-of date."""
    n = decided.num_rows
    constants = {"PARTNER": pa.scalar(partner, pa.string()), "AS_OF": pa.scalar(as_of, pa.date32())}
    columns = []
    for field in schema:
        if field.name in constants:
            columns.append(pa.repeat(constants[field.name], n))
        elif field.name in decided.column_names:
            columns.append(decided.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(n, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


class ToResultRowFn(progress.TalliedDoFn):
    """Members -> results rows, counted by status in plain integers handed to Beam per bundle (progress.Tally).

    An element is one member (one row leaves), or a table of members with their decisions as
    columns (the block reader's ``not_called_table`` or batch-route tables: a results table leaves)."""

    def __init__(self, columns: list[str], partner: str, as_of: dt.date, carried_column: bool = False):
        self._columns = columns
        self._partner = partner
        self._as_of = as_of
        self._carried_column = carried_column
        self._schema = results_schema(columns, carried_column)
        self._status_counter = {s: f"members_{s.lower()}" for s in STATUSES}
        self.tally = progress.Tally(self._status_counter.values())

    def process(self, element):
        if isinstance(element, pa.Table):
            table = result_table(element, self._schema, self._partner, self._as_of)
            if self._carried_column:  # decided now unless the table says it was carried over
                index = table.schema.get_field_index(DECISION_CARRIED_OVER)
                table = table.set_column(index, DECISION_CARRIED_OVER, pc.fill_null(table.column(index), False))
            for status in pc.value_counts(table.column("STATUS")).to_pylist():
                self.tally.counts[self._status_counter[status["values"]]] += status["counts"]
            yield table
        else:
            yield self._row(element)

    def _row(self, member) -> dict:
        member_id, summary, decision = member
        row = result_row(member_id, summary, decision, self._columns, self._partner, self._as_of)
        self.tally.counts[self._status_counter[row["STATUS"]]] += 1
        if self._carried_column:
            row[DECISION_CARRIED_OVER] = False
        return row


# Streaming: one row per emitted member update, with when it happened (docs/streaming.md).
_STREAM_FIELDS = [
    ("UPDATE_SEQ", pa.int64()),
    ("LAST_TRANSACTION_AT", pa.timestamp("us", tz="UTC")),
    ("RECEIVED_AT", pa.timestamp("us", tz="UTC")),
    ("FEATURES_AT", pa.timestamp("us", tz="UTC")),
    ("DECIDED_AT", pa.timestamp("us", tz="UTC")),
    ("TXN_TO_OFFER_MS", pa.float64()),
]


def stream_results_schema(feature_names: Iterable[str]) -> pa.Schema:
    schema = results_schema(feature_names)
    for name, kind in _STREAM_FIELDS:
        schema = schema.append(pa.field(name, kind))
    return schema


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


class ToStreamResultRowFn(ToResultRowFn):
    """(member, update summary, decision) -> a results row with when it was received, computed and decided.

    The row keeps the timestamp its update left the member's state with: the sink files rows
    by the wall-clock time they reach it (their decision time), not by event time.
    """

    def __init__(self, columns: list[str], partner: str):
        super().__init__(columns, partner, None)
        self.latency = Metrics.distribution(NAMESPACE, "stream_txn_to_offer_ms")

    def process(self, element):
        member_id, summary, decision = element
        now = time.time()
        row = result_row(member_id, summary, decision, self._columns, self._partner, summary["AS_OF"])
        self.tally.counts[self._status_counter[row["STATUS"]]] += 1
        row["UPDATE_SEQ"] = summary["UPDATE_SEQ"]
        row["LAST_TRANSACTION_AT"] = summary["LAST_TRANSACTION_AT"]
        row["RECEIVED_AT"] = _utc(summary["RECEIVED_AT"])
        row["FEATURES_AT"] = _utc(summary["FEATURES_AT"])
        row["DECIDED_AT"] = _utc(now)
        row["TXN_TO_OFFER_MS"] = None
        if row["OFFER"] is not None:
            row["TXN_TO_OFFER_MS"] = (now - summary["RECEIVED_AT"]) * 1000
            self.latency.update(int(row["TXN_TO_OFFER_MS"]))
        yield row
