"""``run.json``: what one run did, as typed records; its JSON schema is generated from them.

The batch job, a ``--retry-failed`` run and a streaming replay each write one
``run.json``. :class:`RunSummary` is the batch and retry record (a retry fills
in ``retry_of`` and the retry counts of its accounting; a run held back for too
many dead letters fills in ``published``, ``staging`` and ``error``);
:class:`ReplaySummary` is a streaming replay's. Building the record through
these models catches a missing or misspelt field when the run ends, not when a
reader of the file trips over it.

Two kinds of empty: a field with no default is always written, ``null``
included (a step's ``seconds`` when the runner reports no time); a field that
defaults to ``None`` is left out of the file when it has no value (``retry_of``
in a run that retried nothing). The schema says the same, and allows extra
fields on the record itself: these are promised, more may come.

``python -m lantern.run_record`` prints the schema; the committed
``beam_pipeline/schemas/run.schema.json`` is that output (a test compares them).
"""
from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_serializer
from pydantic.json_schema import GenerateJsonSchema, SkipJsonSchema

SCHEMA_ID = "https://lantern.example/schemas/run.schema.json"

Count = Annotated[int, Field(ge=0)]
Name = Annotated[str, Field(min_length=1)]
Date = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", description="YYYY-MM-DD")]
Timestamp = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(Z|[+-][0-9]{2}:[0-9]{2})$",
                                 description="ISO 8601 with its UTC offset")]
Seconds = Annotated[float, Field(ge=0)]
Ratio = Annotated[float, Field(ge=0, le=1)]
Absent = SkipJsonSchema[None]  # a field left out of run.json when it has no value; never written as null


class Record(BaseModel):
    """A part of run.json: strict when built, a field without a value left out when written."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler) -> dict[str, Any]:
        data = handler(self)
        fields = type(self).model_fields
        return {k: v for k, v in data.items()
                if not (v is None and k in fields and not fields[k].is_required())}


class Accounting(Record):
    """Where every row and member went: ``rows_read == transactions + member_only_rows + dead_letter_rows``."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": {"type": "integer", "minimum": 0}})

    rows_read: Count = Field(description="data rows; header lines excluded")
    header_lines: Count
    transactions: Count
    member_only_rows: Count
    dead_letter_rows: Count
    members: Count
    members_ok: Count
    members_no_transactions: Count
    members_failed: Count
    members_features_only: Count | Absent = None
    # --retry-failed: what became of the previous run's members
    members_carried_over: Count | Absent = None
    members_retried: Count | Absent = None
    members_retried_ok: Count | Absent = None
    members_still_failed: Count | Absent = None


class StateSummary(Record):
    """The member state the run wrote (``state/``): its members, and what became of each
    (docs/incremental.md). Today's rows are in ``accounting``; these count the whole state."""

    members: Count = Field(description="members in the state: every one has a results row")
    members_carried_over: Count = Field(description="in the base state only: no rows today")
    members_updated: Count = Field(description="in the base state and in today's rows")
    members_new: Count = Field(description="in today's rows only (a full run: every member)")
    transactions: Count = Field(description="transactions folded into the state, over every run that built it")
    inputs_folded: Count = Field(description="input files folded into the state, over every run that built it")
    layout_version: Annotated[int, Field(ge=1)]
    members_decision_carried_over: Count | Absent = Field(
        None, description="--changed-only: members without rows today that kept the base run's decision, uncalled")


class DeadLetterLimit(Record):
    """Dead letters / rows read against --max-dead-letter-ratio (1.0: no limit)."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": True})

    ratio: Ratio
    limit: Ratio
    exceeded: bool


class Step(Record):
    """Elements, seconds and throughput of one step of the pipeline."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": True})

    name: str
    transform: str
    unit: str
    elements: Count
    seconds: Seconds | None
    per_second: Annotated[float, Field(ge=0)] | None
    seconds_source: Literal["execution_time", "bundle_ms"] | None


class Latency(Record):
    """Percentiles of one endpoint's call latency; empty when it was never called."""

    model_config = ConfigDict(json_schema_extra={"dependentRequired": {"count": ["p50", "p95", "p99", "mean", "max"]}})

    p50: Seconds | Absent = None
    p95: Seconds | Absent = None
    p99: Seconds | Absent = None
    mean: Seconds | Absent = None
    max: Seconds | Absent = None
    count: Annotated[int, Field(ge=1)] | Absent = None


class LatencyByEndpoint(Record):
    """Call latency per endpoint (more endpoints may come: the schema allows them, as Latency)."""

    model_config = ConfigDict(extra="allow")

    ats: Latency
    resp: Latency
    offer: Latency


class ConcurrencyLimit(Record):
    """One endpoint's adaptive limit on calls in flight per worker over the run."""

    mean: Annotated[float, Field(ge=1)]
    min: Annotated[int, Field(ge=1)]
    max: Annotated[int, Field(ge=1)]
    samples: Annotated[int, Field(ge=1)] = Field(description="values sampled (about twice a second per worker)")


class InputFile(Record):
    model_config = ConfigDict(json_schema_extra={"additionalProperties": True})

    path: str
    size_bytes: Count = Field(description="the size matched at launch: the job reads up to it")
    generation: int | Absent = Field(None, description="a Cloud Storage object's generation matched at launch: "
                                                       "the job reads that generation")


class Options(Record):
    """What the run was asked to do; secret-looking values already redacted."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": True})

    endpoint_base_url: str
    cli: dict[str, Any]
    pipeline: dict[str, Any]


class RunSummary(Record):
    """What one batch run (or ``--retry-failed`` run) did."""

    model_config = ConfigDict(
        title="Lantern run summary (run.json)",
        json_schema_extra={"additionalProperties": True},
    )

    run_id: Name
    retry_of: Name | Absent = Field(None, description="--retry-failed: the run id whose FAILED members this run "
                                                      "called again")
    retry_of_output: str | Absent = Field(None, description="--retry-failed: that run's output folder")
    incremental_from: Name | Absent = Field(None, description="--incremental-from: the run whose state this "
                                                              "run folded today's inputs into")
    incremental_from_output: str | Absent = Field(None, description="--incremental-from: that run's output folder")
    state: StateSummary | Absent = Field(None, description="the member state written to state/ (batch runs)")
    partner: Name
    partner_source: str
    partner_features: list[str] = Field(description="the features the run computed and sent "
                                                    "(a retry must send the same)")
    as_of: Date
    runner: str
    started_at: Timestamp
    finished_at: Timestamp
    wall_seconds: Seconds
    exit_code: Literal[0, 1, 3, 4] = Field(description="3: some members FAILED; 4: too many dead letters, and 1: "
                                                      "the accounting does not close (neither is published)")
    accounting: Accounting
    offers: dict[str, Count] = Field(description="members per offer")
    dead_letter_reasons: dict[str, Count] = Field(description="rejected rows per reason code",
                                                  json_schema_extra={"propertyNames": {"pattern": "^[A-Z0-9_]+$"}})
    dead_letter_limit: DeadLetterLimit | Absent = None
    steps: list[Step] = Field(min_length=1)
    latency_ms: LatencyByEndpoint
    requests: dict[str, dict[str, Count]] | Absent = Field(
        None, description="per endpoint: requests by outcome (ok, http_error, bad_response, exception, throttled), "
                          "retries; from the runner's metrics, added by a launcher that waits for the job")
    concurrency_limit: dict[str, ConcurrencyLimit] | Absent = Field(
        None, description="per endpoint called: the adaptive limit on calls in flight per worker (mean, min, max)")
    inputs: list[InputFile] = Field(min_length=1)
    output: str
    options: Options
    versions: dict[str, str | None] = Field(description="python and package versions; null: not installed")
    launcher_wall_seconds: Seconds | Absent = Field(
        None, description="the launcher's own wall time, start to end of the job (a launcher that waits adds it)")
    published: bool = Field(True, description="false: the run is held back in its staging folder (exit 1 or 4)")
    staging: str | Absent = Field(None, description="where an unpublished run's outputs stay")
    error: str | Absent = Field(None, description="the one-line reason an unpublished run printed")


class ReplayAccounting(Record):
    """Rows and offer updates of a streaming replay: ``rows_replayed == transactions + member_only_rows + dead_letter_rows``."""

    rows_replayed: Count
    transactions: Count
    dead_letter_rows: Count
    member_only_rows: Count
    members: Count
    updates: Count
    updates_ok: Count
    updates_no_transactions: Count
    updates_failed: Count


class Replay(Record):
    rate_per_s: Annotated[float, Field(gt=0)]
    debounce_s: Seconds
    idle_days: Annotated[float, Field(gt=0)]


class TxnToOffer(Record):
    """Transaction -> offer latency in ms; empty when no member got an offer."""

    p50: Seconds | Absent = None
    p95: Seconds | Absent = None
    p99: Seconds | Absent = None


class ReplaySummary(Record):
    """What a streaming replay (``--streaming --input``) did."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": True})

    streaming: Literal[True]
    run_id: Name
    partner: Name
    as_of: Date | None = Field(description="null: each update used the UTC date it was computed on")
    runner: str
    started_at: Timestamp
    finished_at: Timestamp
    wall_seconds: Seconds
    replay: Replay
    accounting: ReplayAccounting
    txn_to_offer_ms: TxnToOffer
    latency_ms: LatencyByEndpoint
    output: str
    versions: dict[str, str | None]
    incremental_from: Name | Absent = Field(None, description="--incremental-from: the batch run whose member "
                                                              "state seeded the stream")


def package_versions() -> dict:
    names = ("offer-pipeline", "apache-beam", "pyarrow", "numpy", "requests", "urllib3", "aiohttp", "pydantic",
             "fastapi", "uvicorn", "pyyaml")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def to_json(record: RunSummary | ReplaySummary) -> dict[str, Any]:
    """The record as run.json holds it (an option value JSON has no type for is written as its text)."""
    return record.model_dump(mode="json", fallback=str)


class _Schema(GenerateJsonSchema):
    """Pydantic's schema without what misleads a reader of run.json: made-up titles, ``default: null``."""

    def field_title_should_be_set(self, schema) -> bool:
        return False

    def default_schema(self, schema):
        out = super().default_schema(schema)
        if out.get("default", ...) is None:
            del out["default"]  # an absent field is left out of run.json, never written as null
        return out


def schema() -> dict[str, Any]:
    """The JSON schema (2020-12) of every run.json the product writes."""
    generated = TypeAdapter(RunSummary | ReplaySummary).json_schema(schema_generator=_Schema)
    generated["$defs"]["LatencyByEndpoint"]["additionalProperties"] = {"$ref": "#/$defs/Latency"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Lantern run.json",
        "description": "What one run of the offer pipeline did: a batch or --retry-failed run (RunSummary) "
                       "or a streaming replay (ReplaySummary). Generated by `python -m lantern.run_record`.",
        **generated,
    }


def schema_text() -> str:
    """The schema as the committed file holds it."""
    return json.dumps(schema(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_text())
