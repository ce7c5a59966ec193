"""The counts a run's accounting is built from, computed by the pipeline itself.

Each is a small accumulator merged across workers (``CombineGlobally``): sums of
integers, counts by value, a latency histogram per endpoint. None grows with the
number of members, so the last step (``beam_pipeline.finalize``) can read them
all as one side input on one worker. A runner's metrics are not used: they are
what a launcher that waits can see, and a job must account for itself whether
anyone waits or not.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.window import GlobalWindows

from lantern.latency_histogram import LogHistogram
from lantern.member_fingerprint import MemberFingerprint, merge_all, of_ids
from transforms.results import LATENCY_COLUMNS

# The tagged output where a parse DoFn hands over each bundle's counts (a dict of ints).
COUNTS = "counts"


def _merge_counters(accs: Iterable[Counter]) -> Counter:
    out: Counter = Counter()
    for acc in accs:
        out.update(acc)
    return out


class SumCountsFn(beam.CombineFn):
    """Dicts of counts -> their sum by name (e.g. a parse's per-bundle counts)."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, counts: Mapping[str, int]) -> Counter:
        acc.update(counts)
        return acc

    def merge_accumulators(self, accs: Iterable[Counter]) -> Counter:
        return _merge_counters(accs)

    def extract_output(self, acc: Counter) -> dict[str, int]:
        return {name: n for name, n in sorted(acc.items()) if n}


def _size(element) -> int:
    return element.num_rows if isinstance(element, pa.Table) else len(element) if isinstance(element, list) else 1


class CountRowsFn(beam.CombineFn):
    """How many rows: an element is one row, or an Arrow table (or list) of them."""

    def create_accumulator(self) -> int:
        return 0

    def add_input(self, acc: int, element) -> int:
        return acc + _size(element)

    def merge_accumulators(self, accs: Iterable[int]) -> int:
        return sum(accs)

    def extract_output(self, acc: int) -> int:
        return acc


class ValueCountsFn(beam.CombineFn):
    """Rows (dicts or Arrow tables) -> how many rows hold each value of ``column`` (nulls left out)."""

    def __init__(self, column: str):
        self._column = column

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, element) -> Counter:
        if isinstance(element, pa.Table):
            for item in pc.value_counts(element.column(self._column)).to_pylist():
                if item["values"] is not None:
                    acc[item["values"]] += item["counts"]
        else:
            value = element.get(self._column)
            if value is not None:
                acc[value] += 1
        return acc

    def merge_accumulators(self, accs: Iterable[Counter]) -> Counter:
        return _merge_counters(accs)

    def extract_output(self, acc: Counter) -> dict:
        return dict(sorted(acc.items(), key=lambda kv: str(kv[0])))


class MemberFingerprintFn(beam.CombineFn):
    """Member IDs -> their ``MemberFingerprint`` (``lantern.member_fingerprint``): exact, whatever the order.

    An element is an Arrow table or a dict with a ``MEMBER_ID``, or a fingerprint already taken
    (e.g. of each table a step read), merged as it is.
    """

    def create_accumulator(self) -> MemberFingerprint:
        return MemberFingerprint()

    def add_input(self, acc: MemberFingerprint, element) -> MemberFingerprint:
        if isinstance(element, MemberFingerprint):
            return acc.merge(element)
        if isinstance(element, pa.Table):
            return acc.merge(of_ids(element.column("MEMBER_ID").to_pylist()))
        return acc.merge(of_ids([element["MEMBER_ID"]]))

    def merge_accumulators(self, accs: Iterable[MemberFingerprint]) -> MemberFingerprint:
        return merge_all(accs)

    def extract_output(self, acc: MemberFingerprint) -> MemberFingerprint:
        return acc


class ResultStats:
    """What the results rows say about a run: rows, members by status, offers, latency per endpoint."""

    __slots__ = ("latency", "offers", "rows", "statuses")

    def __init__(self, latency_columns: Iterable[str]):
        self.rows = 0
        self.statuses: Counter = Counter()
        self.offers: Counter = Counter()
        self.latency = {name: LogHistogram() for name in latency_columns}

    def merge(self, other: ResultStats) -> ResultStats:
        self.rows += other.rows
        self.statuses.update(other.statuses)
        self.offers.update(other.offers)
        for name, histogram in other.latency.items():
            self.latency.setdefault(name, LogHistogram()).merge(histogram)
        return self

    def as_json(self, names: Mapping[str, str] = LATENCY_COLUMNS) -> dict:
        """``rows``, ``statuses``, ``offers`` and ``latency_ms`` (by endpoint name) as run.json words them."""
        return {
            "rows": self.rows,
            "statuses": dict(sorted(self.statuses.items())),
            "offers": dict(sorted(self.offers.items(), key=lambda kv: str(kv[0]))),
            "latency_ms": {name: self.latency[column].summary() for name, column in names.items()
                           if column in self.latency},
        }


def _counts(column: pa.ChunkedArray) -> Iterable[tuple]:
    for item in pc.value_counts(column).to_pylist():
        if item["values"] is not None:
            yield item["values"], item["counts"]


class ResultStatsFn(beam.CombineFn):
    """Results rows (dicts, or Arrow tables of them) -> their ``ResultStats`` as a dict.

    The latency columns are ``transforms.results.LATENCY_COLUMNS`` unless given: a
    column listed there is summarised without a change here.
    """

    def __init__(self, latency_columns: Mapping[str, str] = LATENCY_COLUMNS):
        self._names = dict(latency_columns)

    def create_accumulator(self) -> ResultStats:
        return ResultStats(self._names.values())

    def add_input(self, acc: ResultStats, element) -> ResultStats:
        if isinstance(element, pa.Table):
            acc.rows += element.num_rows
            acc.statuses.update(dict(_counts(element.column("STATUS"))))
            acc.offers.update(dict(_counts(element.column("OFFER"))))
            for column, histogram in acc.latency.items():
                if column in element.column_names:
                    values = element.column(column)
                    if values.null_count < len(values):
                        histogram.add_array(values.to_numpy(zero_copy_only=False).astype(np.float64))
            return acc
        acc.rows += 1
        acc.statuses[element.get("STATUS")] += 1
        offer = element.get("OFFER")
        if offer is not None:
            acc.offers[offer] += 1
        for column, histogram in acc.latency.items():
            value = element.get(column)
            if value is not None:
                histogram.add_one(value)
        return acc

    def merge_accumulators(self, accs: Iterable[ResultStats]) -> ResultStats:
        accs = iter(accs)
        out = next(accs)
        for acc in accs:
            out.merge(acc)
        return out

    def extract_output(self, acc: ResultStats) -> dict:
        return acc.as_json(self._names)


class PartialCountFn(beam.DoFn):
    """Elements -> one ``(name, accumulator)`` per bundle: the count's partial combine, in the step
    that makes the elements, so only the small accumulator leaves it (never a row or a table)."""

    def __init__(self, name: str, fn: beam.CombineFn):
        self._name = name
        self._fn = fn

    def start_bundle(self):
        self._acc = None

    def process(self, element):
        fn = self._fn
        self._acc = fn.add_input(fn.create_accumulator() if self._acc is None else self._acc, element)
        return ()

    def finish_bundle(self):
        if self._acc is not None:
            acc, self._acc = self._fn.compact(self._acc), None
            yield GlobalWindows.windowed_value_at_end_of_window((self._name, acc))


class NamedCountsFn(beam.CombineFn):
    """``(name, partial accumulator)`` pairs -> ``{name: that name's CombineFn output}``: every count
    of a run in one combine (one shuffle, whatever the number of counts).

    A name that saw no element still gets its CombineFn's empty output.
    """

    def __init__(self, fns: Mapping[str, beam.CombineFn]):
        self._fns = dict(fns)

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, acc: dict, item: tuple[str, object]) -> dict:
        name, part = item
        acc[name] = part if name not in acc else self._fns[name].merge_accumulators([acc[name], part])
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        out: dict = {}
        for acc in accs:
            for item in acc.items():
                self.add_input(out, item)
        return out

    def extract_output(self, acc: dict) -> dict:
        return {name: fn.extract_output(acc[name] if name in acc else fn.create_accumulator())
                for name, fn in self._fns.items()}


class ListFn(beam.CombineFn):
    """Elements -> their sorted list: for a handful of values (the file names a write produced)."""

    def create_accumulator(self) -> list:
        return []

    def add_input(self, acc: list, element) -> list:
        acc.append(element)
        return acc

    def merge_accumulators(self, accs: Iterable[list]) -> list:
        return [element for acc in accs for element in acc]

    def extract_output(self, acc: list) -> list:
        return sorted(acc)


class CountRun(beam.PTransform):
    """``{name: (PCollection, CombineFn)}`` -> one element, ``{name: count}``, from one combine.

    Each count is first combined per bundle where its elements are made (``PartialCountFn``); the
    partial accumulators of every count then meet in one combine. Its one element exists once every
    input PCollection is complete (a combine waits for all of its input), so a step that consumes it
    runs after everything counted here has finished. At least one input must hold an element (as a
    write's file names always do): no default is injected, which would cost the job another stage.
    """

    def __init__(self, counts: Mapping[str, tuple[beam.PCollection, beam.CombineFn]]):
        super().__init__()
        self._counts = dict(counts)

    def expand(self, pbegin):
        partial = [pcoll | f"Count[{name}]" >> beam.ParDo(PartialCountFn(name, fn))
                   for name, (pcoll, fn) in self._counts.items()]
        fns = {name: fn for name, (_, fn) in self._counts.items()}
        return (partial | "Gather" >> beam.Flatten()
                | "Combine" >> beam.CombineGlobally(NamedCountsFn(fns)).without_defaults())
