"""The batch job, assembled top to bottom in the order the data flows."""
from __future__ import annotations

import dataclasses
import datetime as dt

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.textio import ReadFromTextWithFilename
from apache_beam.metrics import Metrics

from beam_pipeline.outputs import join
from lantern.partner import PartnerConfig
from transforms import NAMESPACE
from transforms.endpoints import CallEndpoints
from transforms.features import MemberFeaturesFn
from transforms.parquet_rows import WriteParquetRows
from transforms.parse import DEAD_LETTER, FileLayout, ParseExport
from transforms.results import DEAD_LETTER_SCHEMA, NOT_CALLED, ToResultRowFn, feature_columns, results_schema

MEMBERS_WITH_FEATURES = "members_with_features"

# The top-level steps' labels: run.json times each one by its label (beam_pipeline/summary.py).
READ_EXPORTS = "ReadExports"
PARSE = "Parse"
MEMBER_FEATURES = "MemberFeatures"
DECIDE_OFFERS = "DecideOffers"
TO_RESULT_ROW = "ToResultRow"
WRITE_RESULTS = "WriteResults"
WRITE_DEAD_LETTERS = "WriteDeadLetters"


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything the pipeline needs, resolved and validated before it is built."""

    input_patterns: tuple[str, ...]
    layouts: dict[str, FileLayout]
    partner: PartnerConfig
    as_of: dt.date
    staging: str  # the run's private folder; published only when complete
    features_only: bool = False  # no endpoint calls: members with transactions get FEATURES_ONLY


class ReadExports(beam.PTransform):
    """Every input pattern as (file name, raw line bytes)."""

    def __init__(self, patterns):
        super().__init__()
        self._patterns = patterns

    def expand(self, pbegin):
        # validate=False: the CLI matched every pattern before the run (inputs.py); validating here
        # again would list the bucket a second time and make building the job need cloud access.
        reads = [
            pbegin | f"Read[{i}]" >> ReadFromTextWithFilename(pattern, coder=coders.BytesCoder(), validate=False)
            for i, pattern in enumerate(self._patterns)
        ]
        return reads[0] if len(reads) == 1 else tuple(reads) | "Flatten" >> beam.Flatten()


def _has_transactions(member) -> bool:
    return member[1]["N_TRANSACTIONS"] > 0


class CountMembersFn(beam.DoFn):
    """Counts the members that leave the feature step, so the run can prove each got a results row."""

    def __init__(self):
        self.members = Metrics.counter(NAMESPACE, MEMBERS_WITH_FEATURES)

    def process(self, member):
        self.members.inc()
        yield member


class DecideOffers(beam.PTransform):
    """Member summaries -> (member, summary, decision); no calls for members without transactions."""

    def __init__(self, partner: PartnerConfig, features_only: bool = False):
        super().__init__()
        self._partner = partner
        self._features_only = features_only

    def expand(self, members):
        if self._features_only:  # one step per member: nothing to split, batch or call
            return members | "NotCalled" >> beam.Map(lambda m: (m[0], m[1], NOT_CALLED if _has_transactions(m) else None))
        active, idle = members | "SplitByActivity" >> beam.Partition(
            lambda m, _: 0 if _has_transactions(m) else 1, 2
        )
        decided = active | "CallEndpoints" >> CallEndpoints(self._partner)
        skipped = idle | "NoCalls" >> beam.Map(lambda m: (m[0], m[1], None))
        return (decided, skipped) | "Merge" >> beam.Flatten()


def build_pipeline(p: beam.Pipeline, job: JobConfig) -> None:
    partner = job.partner
    columns = feature_columns(partner.feature_names)

    parsed = (
        p
        | READ_EXPORTS >> ReadExports(job.input_patterns)
        | PARSE >> ParseExport(job.layouts, partner.input.delimiter, partner.input.timestamp_formats, job.as_of,
                                 type_codes=partner.input.type_codes())
    )
    (
        parsed.transactions
        | MEMBER_FEATURES >> beam.CombinePerKey(MemberFeaturesFn(job.as_of, partner.feature_names))
        | "CountMembers" >> beam.ParDo(CountMembersFn())
        | DECIDE_OFFERS >> DecideOffers(partner, job.features_only)
        | TO_RESULT_ROW >> beam.ParDo(ToResultRowFn(columns, partner.name, job.as_of))
        | WRITE_RESULTS >> WriteParquetRows(join(job.staging, "results", "part"), results_schema(partner.feature_names))
    )
    (
        parsed[DEAD_LETTER]
        | WRITE_DEAD_LETTERS >> WriteParquetRows(join(job.staging, "dead_letter", "part"), DEAD_LETTER_SCHEMA)
    )
