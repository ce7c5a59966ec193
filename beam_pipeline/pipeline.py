"""The batch job, assembled top to bottom in the order the data flows."""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import time

import apache_beam as beam
import pyarrow as pa
from apache_beam import coders
from apache_beam.io.filebasedsource import FileBasedSource
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.textio import _TextSourceWithFilename
from apache_beam.metrics import Metrics

from beam_pipeline.finalize import Finalize, RunPlan
from beam_pipeline.outputs import join
from lantern.member_table import SHARDS
from lantern.partner import PartnerConfig
from lantern.state_manifest import STATE_DIR
from transforms import NAMESPACE
from transforms.carried_decisions import RECALL, CarryDecisions
from transforms.endpoints import CallEndpoints
from transforms.features import (
    STATE,
    STATE_COUNTS,
    UNCHANGED,
    AccumulatorsFn,
    CombineMemberShardsFn,
    MemberFeaturesFn,
    SummaryAndStateFn,
)
from transforms.input_files import FixedFiles, InputFile
from transforms.member_state_io import ReadBaseState, WriteState
from transforms.parquet_rows import WriteParquetRows
from transforms.parse import DEAD_LETTER, FileLayout, ParseExport, ParseExportBlocks
from transforms.results import (
    DEAD_LETTER_SCHEMA,
    NOT_CALLED,
    ToResultRowFn,
    feature_columns,
    not_called_table,
    results_schema,
)
from transforms.run_counts import COUNTS, CountRowsFn, ResultStatsFn, SumCountsFn, ValueCountsFn
from transforms.table_coder import ArrowTableCoder  # noqa: F401 - registers the coder of table elements
from transforms.timing import BUNDLE_MS

MEMBERS_WITH_FEATURES = "members_with_features"
READERS = (BLOCKS, LINES) = ("blocks", "lines")
BLOCK_BYTES = 4 << 20

# The top-level steps' labels: run.json times each one by its label (beam_pipeline/summary.py).
READ_EXPORTS = "ReadExports"
PARSE = "Parse"
MEMBER_FEATURES = "MemberFeatures"
DECIDE_OFFERS = "DecideOffers"
TO_RESULT_ROW = "ToResultRow"
WRITE_RESULTS = "WriteResults"
WRITE_DEAD_LETTERS = "WriteDeadLetters"
FINALIZE = "Finalize"
# The names of the run's counts and awaited writes, as the accountant reads them (beam_pipeline/accounting.py).
ROWS, RESULT_STATS, DEAD_LETTER_REASONS = "rows", "results", "dead_letters"
RESULTS, DEAD_LETTER_FILES = "results", "dead_letter"
# The member state (docs/incremental.md): its write is awaited like the others; its counts are facts.
STATE_FILES, STATE_FACTS, DECISIONS_CARRIED = "state", "state_members", "decisions_carried_over"
READ_BASE_STATE = "ReadBaseState"
WRITE_STATE = "WriteState"
CARRY_DECISIONS = "CarryDecisions"


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything the pipeline needs, resolved and validated before it is built."""

    inputs: tuple[InputFile, ...]  # the files matched at launch: the job reads these, never the globs again
    layouts: dict[str, FileLayout]
    partner: PartnerConfig
    as_of: dt.date
    staging: str  # the run's private folder; published only when complete
    features_only: bool = False  # no endpoint calls: members with transactions get FEATURES_ONLY
    reader: str = BLOCKS  # blocks: columnar parse and fold; lines: one element per line (the reference)
    shards: int = SHARDS  # member shards of the block reader's shuffle (lantern.member_table.shards_for)
    plan: RunPlan | None = None  # the last step's (beam_pipeline.finalize); None builds the job without it
    base_state: tuple[str, ...] = ()  # --incremental-from: the base state's files, folded in with today's rows
    carry_from: str | None = None  # --changed-only: the base run's results, whose decisions unchanged members keep


class ExportBlockSource(FixedFiles, FileBasedSource):
    """Each input file as (file name, block): byte ranges of whole lines, about ``block_bytes`` each.

    A line belongs to the split it starts in, as with ``ReadFromText``, and lines end where
    ``ReadFromText`` ends them (at ``\n``), so both readers see the same lines. Uncompressed
    files split at any offset (Dataflow balances work by splitting them); compressed ones
    (``CompressionTypes.AUTO``: ``.gz``, ``.bz2``, ...) are read whole, decompressed as they go.
    """

    def __init__(self, files: tuple[InputFile, ...], block_bytes: int = BLOCK_BYTES):
        # The files matched at launch (transforms/input_files.py); the pattern is only a name.
        super().__init__(files[0].path, compression_type=CompressionTypes.AUTO, validate=False)
        self.fix_files(files)
        self._block_bytes = block_bytes

    def default_output_coder(self):
        return coders.TupleCoder([coders.StrUtf8Coder(), coders.BytesCoder()])

    def read_records(self, file_name: str, range_tracker):
        """The blocks of one split, timed: the read step's ``bundle_ms`` is the time spent reading
        (not in the steps fused after it, which run while a block is handed on), so the step has a
        time on a runner that reports no execution times (Dataflow) as well."""
        timer = Metrics.distribution(NAMESPACE, BUNDLE_MS)
        spent, start = 0.0, time.perf_counter()
        try:
            for record in self._blocks(file_name, range_tracker):
                spent += time.perf_counter() - start
                yield record
                start = time.perf_counter()
            spent += time.perf_counter() - start
        finally:
            timer.update(round(spent * 1000))

    def _blocks(self, file_name: str, range_tracker):
        size = self._block_bytes
        with self.open_file(file_name) as handle:
            position = range_tracker.start_position()
            buffer, eof = b"", False
            if position > 0:  # the line that ends at or after position - 1 is the previous split's
                handle.seek(position - 1)
                position -= 1
                while True:
                    chunk = handle.read(1 << 16)
                    if not chunk:
                        return
                    cut = chunk.find(b"\n")
                    if cut >= 0:
                        position += cut + 1
                        buffer = chunk[cut + 1:]
                        break
                    position += len(chunk)
            while range_tracker.try_claim(position):
                while not eof and len(buffer) < size:
                    more = handle.read(size - len(buffer))
                    eof = not more
                    buffer += more
                end = buffer.rfind(b"\n") + 1
                while not end and not eof:  # a line longer than a block: read on, doubling
                    more = handle.read(max(size, len(buffer)))
                    eof = not more
                    cut = more.rfind(b"\n")
                    end = len(buffer) + cut + 1 if cut >= 0 else 0
                    buffer += more
                if eof:
                    end = len(buffer)
                block, buffer = buffer[:end], buffer[end:]
                if not block:
                    return
                last_start = position + block.rfind(b"\n", 0, len(block) - 1) + 1
                if last_start > position and not range_tracker.try_claim(last_start):
                    # The split was cut short meanwhile: keep the lines that start before its new end.
                    keep = block.find(b"\n", range_tracker.stop_position() - 1 - position)
                    yield file_name, block if keep < 0 else block[:keep + 1]
                    return
                yield file_name, block
                position += len(block)


class ExportLineSource(FixedFiles, _TextSourceWithFilename):
    """Each input file as (file name, raw line bytes): ``ReadFromTextWithFilename``'s source over the
    files matched at launch."""

    def __init__(self, files: tuple[InputFile, ...]):
        super().__init__(files[0].path, 0, CompressionTypes.AUTO, True, coders.BytesCoder(), validate=False)
        self.fix_files(files)


class ReadExports(beam.PTransform):
    """The input files as (file name, raw line bytes), or with ``reader="blocks"`` as
    (file name, block of whole lines)."""

    def __init__(self, files: tuple[InputFile, ...], reader: str = LINES):
        super().__init__()
        self._files = tuple(files)
        self._reader = reader

    def expand(self, pbegin):
        if self._reader == BLOCKS:
            return pbegin | "Read" >> beam.io.Read(ExportBlockSource(self._files))
        source = ExportLineSource(self._files)
        return pbegin | "Read" >> beam.io.Read(source).with_output_types(source.output_type_hint())


def _has_transactions(member) -> bool:
    return member[1]["N_TRANSACTIONS"] > 0


class CountMembersFn(beam.DoFn):
    """Counts the members that leave the feature step, so the run can prove each got a results row.
    With ``batched``, each element is a table of members."""

    def __init__(self, batched: bool = False):
        self.members = Metrics.counter(NAMESPACE, MEMBERS_WITH_FEATURES)
        self._batched = batched

    def process(self, member):
        self.members.inc(len(member) if self._batched else 1)
        yield member


def _not_called(member) -> tuple:
    return member[0], member[1], NOT_CALLED if _has_transactions(member) else None


class DecideOffers(beam.PTransform):
    """Member summaries -> (member, summary, decision); no calls for members without transactions."""

    def __init__(self, partner: PartnerConfig, features_only: bool = False, batched: bool = False):
        super().__init__()
        self._partner = partner
        self._features_only = features_only
        self._batched = batched  # the block reader's features-only and batch-route runs: tables of members

    def expand(self, members):
        if self._features_only and self._batched:  # tables of members in, tables with decisions out
            return members | "NotCalled" >> beam.Map(not_called_table).with_output_types(pa.Table)
        if self._batched:  # batch routes: tables in, tables out; members without transactions are not sent
            return members | "CallEndpoints" >> CallEndpoints(self._partner, tables=True)
        if self._features_only:  # one step per member: nothing to split, batch or call
            return members | "NotCalled" >> beam.Map(_not_called)
        active, idle = members | "SplitByActivity" >> beam.Partition(
            lambda m, _: 0 if _has_transactions(m) else 1, 2
        )
        decided = active | "CallEndpoints" >> CallEndpoints(self._partner)
        skipped = idle | "NoCalls" >> beam.Map(lambda m: (m[0], m[1], None))
        return (decided, skipped) | "Merge" >> beam.Flatten()


class MemberFeatures(beam.PTransform):
    """(member, value) -> (member, summary) with ``MemberFeaturesFn`` (output ``members``), and each
    member's accumulator for ``state/`` (output ``STATE``).

    The line reader's values are rows: ``CombinePerKey`` lifts the combine so rows are folded
    before the shuffle. The block reader has already folded each bundle into one packed
    accumulator per member and sends them in batches by member shard (a base state's too,
    marked as such): the shuffle groups the batches by shard, and each shard's members are
    merged and summarised in one call.
    """

    def __init__(self, fn: MemberFeaturesFn, prefolded: bool, batched: bool = False, changed_only: bool = False):
        super().__init__()
        self._fn = fn
        self._prefolded = prefolded
        self._batched = batched
        self._changed_only = changed_only

    def expand(self, values):
        if not self._prefolded:
            return (
                values
                | "Combine" >> beam.CombinePerKey(AccumulatorsFn(self._fn))
                | "Summarise" >> beam.ParDo(SummaryAndStateFn(self._fn)).with_outputs(STATE, STATE_COUNTS,
                                                                                     main="members")
            )
        combine = beam.ParDo(CombineMemberShardsFn(self._fn, batched=self._batched, changed_only=self._changed_only))
        if self._batched:
            combine = combine.with_output_types(pa.Table)  # transforms.table_coder: no pickling to size them
        out = values | "Group" >> beam.GroupByKey() | "Combine" >> combine.with_outputs(STATE, UNCHANGED,
                                                                                      STATE_COUNTS, main="members")
        out[STATE].element_type = pa.Table  # the shards' state tables travel with the table coder too
        return out


def build_pipeline(p: beam.Pipeline, job: JobConfig) -> None:
    partner = job.partner
    columns = feature_columns(partner.feature_names)

    parse = functools.partial(ParseExportBlocks, shards=job.shards) if job.reader == BLOCKS else ParseExport
    # The block reader moves members from the combine to the results as Arrow tables (one per shard)
    # when nothing is called per member: features-only runs, and batch routes (a table is cut into
    # requests anyway). No Beam step and no Python object per member in between.
    batched = job.reader == BLOCKS and (job.features_only or partner.endpoints.batch)
    count_members = beam.ParDo(CountMembersFn(batched))
    carrying = job.carry_from is not None
    to_result_row = beam.ParDo(ToResultRowFn(columns, partner.name, job.as_of, carried_column=carrying))
    if batched:  # tables of members from the combine to the results
        count_members = count_members.with_output_types(pa.Table)
        to_result_row = to_result_row.with_output_types(pa.Table)
    parsed = (
        p
        | READ_EXPORTS >> ReadExports(job.inputs, job.reader)
        | PARSE >> parse(job.layouts, partner.input.delimiter, partner.input.timestamp_formats, job.as_of,
                         type_codes=partner.input.type_codes())
    )
    transactions = parsed.transactions
    if job.base_state:  # --incremental-from: the base's accumulators join today's in the shuffle
        base = p | READ_BASE_STATE >> ReadBaseState(job.base_state, job.shards).with_output_types(tuple[int, bytes])
        transactions = (transactions, base) | "WithBaseState" >> beam.Flatten()
    features = transactions | MEMBER_FEATURES >> MemberFeatures(
        MemberFeaturesFn(job.as_of, partner.feature_names), job.reader == BLOCKS, batched, changed_only=carrying)
    members = features.members | "CountMembers" >> count_members
    carried = None
    if carrying:  # --changed-only: members without rows today keep the base run's decision
        carried = features[UNCHANGED] | CARRY_DECISIONS >> CarryDecisions(
            join(job.carry_from, "results", "*.parquet"), partner.feature_names, batched, job.shards)
        members = (members, carried[RECALL]) | "WithRecalled" >> beam.Flatten()
    decided = members | DECIDE_OFFERS >> DecideOffers(partner, job.features_only, batched)
    if carried is not None:
        decided = (decided, carried.carried) | "WithCarried" >> beam.Flatten()
    results = decided | TO_RESULT_ROW >> to_result_row
    written = {
        RESULTS: results | WRITE_RESULTS >> WriteParquetRows(join(job.staging, "results", "part"),
                                                             results_schema(partner.feature_names, carrying)),
        DEAD_LETTER_FILES: parsed[DEAD_LETTER] | WRITE_DEAD_LETTERS >> WriteParquetRows(
            join(job.staging, "dead_letter", "part"), DEAD_LETTER_SCHEMA),
        STATE_FILES: features[STATE] | WRITE_STATE >> WriteState(join(job.staging, STATE_DIR, "part")),
    }
    if job.plan is None:
        return
    counts = {
        ROWS: (parsed[COUNTS], SumCountsFn()),
        MEMBERS_WITH_FEATURES: (members if carried is None else (members, carried.carried) | "WithCarriedMembers"
                                >> beam.Flatten(), CountRowsFn()),
        STATE_FACTS: (features[STATE_COUNTS], SumCountsFn()),
        RESULT_STATS: (results, ResultStatsFn()),
        DEAD_LETTER_REASONS: (parsed[DEAD_LETTER], ValueCountsFn("REASON")),
    }
    if carried is not None:
        counts[DECISIONS_CARRIED] = (carried.carried, CountRowsFn())
    p | FINALIZE >> Finalize(job.plan, counts, written)
