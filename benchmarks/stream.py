"""The live stream's sustained rate and its transaction-to-offer latency, on this machine.

The ``--subscription`` pipeline (``pubsub_messages`` + ``build_stream``: ``ReadFromPubSub``,
the parser, member state, the endpoint calls, the sharded writer) runs on the local runner
against the reference service on loopback. Pub/Sub itself is replaced by an in-process
``SubscriberClient`` that publishes transactions at a fixed rate: each message's publish time
is when it became available to pull. Transactions go round a population of ``--members``
members; transaction k of a member has its offer in the first update of that member holding at
least k transactions, so the latency measured for every transaction is

    DECIDED_AT of that update (the offer came back) - the transaction's publish time

A rate
is **sustained** when, over the measured part of the run (after a warm-up, before the end), at
least 99% of the transactions published got their offer and the decided rate keeps up with
the published one; transactions still without an offer when the run stops count as infinitely
late, so a falling-behind pipeline cannot hide in p99.

    python benchmarks/stream.py                       # debounce 0 and 5 s, a ladder of rates
    python benchmarks/stream.py --rates 20 40 --debounce 0 --seconds 30
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import apache_beam as beam  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from beam_pipeline.runners import streaming_local_runner  # noqa: E402
from beam_pipeline.streaming import StreamConfig, build_stream, pubsub_messages  # noqa: E402
from benchmarks.perf import reference_server  # noqa: E402
from benchmarks.results import Recorder  # noqa: E402
from lantern.partner import load_named  # noqa: E402
from transforms.messages import message_layout  # noqa: E402

SUBSCRIPTION = "projects/lantern-bench/subscriptions/transactions"
AS_OF = dt.date(2026, 11, 24)
TARGET_P99_MS = 2000.0
WARMUP_S = 5.0
TAIL_S = 4.0  # the last seconds' transactions are published but not measured: they may be in flight


class PacedSubscriber:
    """A ``pubsub.SubscriberClient`` whose topic receives ``rate`` transactions a second from ``start``."""

    rate = 1.0
    start = 0.0
    stop = 0.0
    members = 200
    published: dict[int, float] = {}  # noqa: RUF012 - one run at a time, shared with the runner's copy
    lock = threading.Lock()
    next_index = 0

    @staticmethod
    def subscription_path(project, name):
        return f"projects/{project}/subscriptions/{name}"

    def pull(self, subscription, max_messages, timeout):
        from google.cloud import pubsub

        cls = PacedSubscriber
        response = pubsub.types.PullResponse()
        for _ in range(2):  # like a real pull, wait (a little) for the next message rather than return empty
            with cls.lock:
                now = time.time()
                due = min(int((min(now, cls.stop) - cls.start) * cls.rate), cls.next_index + max_messages)
                batch = range(cls.next_index, max(due, cls.next_index))
                cls.next_index = max(due, cls.next_index)
            if batch:
                break
            time.sleep(min(0.05, max(0.0, cls.start + (cls.next_index + 1) / cls.rate - now)))
        for i in batch:
            published = cls.start + i / cls.rate
            member = member_of(i, cls.members)
            cls.published[i] = published
            received = pubsub.types.ReceivedMessage(ack_id=f"a{i}")
            received.message = pubsub.types.PubsubMessage(
                data=f"{member},2026-11-20 10:00:00,buy,{100 + i % 50},2.5".encode(), message_id=f"m{i}")
            received.message.publish_time = dt.datetime.fromtimestamp(published, dt.timezone.utc)
            response.received_messages.append(received)
        return response

    def acknowledge(self, subscription, ack_ids):
        pass

    def close(self):
        pass


STAGES = ("RECEIVED_AT", "FEATURES_AT", "DECIDED_AT")


def member_of(i: int, members: int) -> str:
    return f"B{i % members:05d}"


def decided(folder: Path) -> dict[str, list[tuple[int, float, float, float]]]:
    """Member -> its updates as (N_TRANSACTIONS, RECEIVED_AT, FEATURES_AT, DECIDED_AT), by N, from the files
    written so far."""
    out: dict[str, list] = {}
    for path in folder.glob("part-*.parquet"):
        table = pq.read_table(path, columns=["MEMBER_ID", "STATUS", "N_TRANSACTIONS", *STAGES])
        columns = [table.column(c).to_pylist() for c in table.column_names]
        for member, status, n, *times in zip(*columns, strict=True):
            if status == "OK":
                out.setdefault(member, []).append((n, *(t.timestamp() for t in times)))
    return {member: sorted(updates) for member, updates in out.items()}


def answer(updates: dict[str, list], i: int, members: int) -> tuple | None:
    """The update that first answered transaction ``i``: its member's first holding i // members + 1."""
    k = i // members + 1
    return next((u[1:] for u in updates.get(member_of(i, members), ()) if u[0] >= k), None)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_once(url: str, rate: float, debounce_s: float, seconds: float, work: Path, members: int) -> dict:
    partner = load_named("default").with_endpoint_url(url)
    out = work / f"r{rate:g}-d{debounce_s:g}-{time.monotonic_ns()}"
    cfg = StreamConfig(partner, AS_OF, str(out / "results"), str(out / "dead_letter"), debounce_s=debounce_s,
                       idle_days=36_500, window_s=1)
    cls = PacedSubscriber
    cls.published.clear()
    cls.rate, cls.next_index, cls.members = rate, 0, members
    with mock.patch("google.cloud.pubsub.SubscriberClient", PacedSubscriber):
        p = beam.Pipeline(runner=streaming_local_runner(), options=PipelineOptions(["--streaming"]))
        messages, source = pubsub_messages(p, SUBSCRIPTION)
        build_stream(messages, {source: message_layout(partner.input)}, cfg)
        cls.start = time.time() + 3.0  # the runner's start-up is not part of the run
        cls.stop = cls.start + seconds
        result = p.run()
        try:
            time.sleep(max(0.0, cls.stop - time.time()) + debounce_s + 3.0)  # the last measured ones settle
        finally:
            result.cancel()
    updates = decided(out / "results")
    measured = {i: t for i, t in cls.published.items() if cls.start + WARMUP_S <= t < cls.stop - TAIL_S}
    answers = {i: answer(updates, i, members) for i in measured}
    latencies = [(a[2] - measured[i]) * 1000 if a else math.inf for i, a in answers.items()]
    # Where the time goes (medians, ms): publish -> state, state -> features (debounce), features -> offer.
    stages = [(a[0] - measured[i], a[1] - a[0], a[2] - a[1]) for i, a in answers.items() if a]
    window = (cls.stop - TAIL_S) - (cls.start + WARMUP_S)
    on_time = [ms for ms in latencies if math.isfinite(ms)]
    return {
        "rate_per_s": rate,
        "debounce_s": debounce_s,
        "members": members,
        "published": len(cls.published),
        "measured": len(measured),
        "decided_rate_per_s": round(len(on_time) / window, 1),
        "answered_pct": round(100 * len(on_time) / max(1, len(measured)), 1),
        "p50_ms": round(percentile(latencies, 0.5), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
        **{f"{name}_p50_ms": round(percentile([st[i] for st in stages], 0.5) * 1000, 1) if stages else None
           for i, name in enumerate(("to_state", "debounce", "calls"))},
    }


def sustained(row: dict) -> bool:
    return row["answered_pct"] >= 99.0 and row["decided_rate_per_s"] >= 0.95 * row["rate_per_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--debounce", type=float, nargs="+", default=[0.0, 5.0])
    parser.add_argument("--seconds", type=float, default=30.0, help="publishing time per rate")
    parser.add_argument("--runs", type=int, default=1, help="runs per (debounce, rate); the table shows the median")
    parser.add_argument("--members", type=int, default=200, help="members the transactions go round")
    args = parser.parse_args(argv)
    recorder = Recorder("stream", argv if argv is not None else sys.argv[1:], columns=[
        "debounce_s", "rate_per_s", "decided_rate_per_s", "answered_pct", "p50_ms", "p99_ms", "to_state_p50_ms",
        "debounce_p50_ms", "calls_p50_ms", "sustained"])
    best: dict[float, float] = {}
    with reference_server(workers=1) as (url, _), tempfile.TemporaryDirectory(dir=ROOT / "out") as tmp:
        for debounce_s in args.debounce:
            for rate in args.rates:
                runs = [run_once(url, rate, debounce_s, args.seconds, Path(tmp), args.members)
                        for _ in range(args.runs)]
                runs.sort(key=lambda r: r["p99_ms"])
                row = {**runs[len(runs) // 2], "runs": runs}
                row["sustained"] = sustained(row) and (debounce_s > 0 or row["p99_ms"] < TARGET_P99_MS)
                recorder.row(**row)
                print(f"debounce {debounce_s:g} s, {rate:g}/s: decided {row['decided_rate_per_s']}/s, "
                      f"answered {row['answered_pct']}%, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms "
                      f"(to state {row['to_state_p50_ms']}, debounce {row['debounce_p50_ms']}, "
                      f"calls {row['calls_p50_ms']})",
                      flush=True)
                if row["sustained"]:
                    best[debounce_s] = max(best.get(debounce_s, 0.0), rate)
    if 0.0 in args.debounce:
        recorder.note(f"debounce 0: the highest rate sustained with p99 under {TARGET_P99_MS / 1000:g} s is "
                      f"{best[0.0]:g} transactions/s" if 0.0 in best else
                      f"debounce 0: no rate tried kept p99 under {TARGET_P99_MS / 1000:g} s")
    for debounce_s in args.debounce:
        if debounce_s > 0 and debounce_s in best:
            recorder.note(f"debounce {debounce_s:g} s: every transaction waits its debounce; the highest rate "
                          f"sustained is {best[debounce_s]:g} transactions/s")
    print(f"saved {recorder.save()}")


if __name__ == "__main__":
    main()
