"""What the report shows of a streaming output: updates over time, the transaction-to-offer
latency, and counts per result window (one Parquet file per window pane)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.compute as pc

from beam_pipeline.report.charts import NONE, STATUS_COLORS, empty, figure, share
from beam_pipeline.report.folder import Run
from beam_pipeline.report.markup import e, num, table

UPDATE_BINS = 40


def headline(run: Run) -> str:
    s, acc = run.summary, run.summary["accounting"]
    offers = Counter(o for o in run.results.column("OFFER").to_pylist() if o is not None)
    offer_text = ", ".join(f"{n:,} got {o}" for o, n in sorted(offers.items())) or "none got an offer"
    lat = s.get("txn_to_offer_ms") or {}
    latency = (f" Transaction to offer: p50 {lat['p50']:,.0f} ms, p95 {lat['p95']:,.0f} ms."
               if lat.get("p50") is not None else "")
    return (f"{acc.get('updates', run.updates.num_rows):,} updates for {run.results.num_rows:,} members "
            f"({acc.get('updates_failed', 0):,} failed); at each member's latest update {offer_text}. "
            f"{acc.get('rows_replayed', 0):,} rows replayed, {acc.get('dead_letter_rows', 0):,} rejected.{latency} "
            f"Run took {s['wall_seconds']:.1f}s.")


def fig_updates(run: Run):
    """Updates per interval of decision time, stacked by status."""
    fig, (ax,) = figure(12, 3.8)
    decided = run.updates.column("DECIDED_AT").cast("int64").to_numpy(zero_copy_only=False)
    if len(decided) == 0:
        empty(ax, "no updates")
        return fig
    seconds = (decided - decided.min()) / 1e6
    edges = np.linspace(0, max(seconds.max(), 1.0), UPDATE_BINS + 1)
    statuses = np.asarray(run.updates.column("STATUS").to_pylist(), dtype=object)
    bottom = np.zeros(UPDATE_BINS)
    width = edges[1] - edges[0]
    for status in [s for s in STATUS_COLORS if s in set(statuses)] + sorted(set(statuses) - set(STATUS_COLORS)):
        counts, _ = np.histogram(seconds[statuses == status], bins=edges)
        ax.bar(edges[:-1], counts, width=width, bottom=bottom, align="edge", label=status,
               color=STATUS_COLORS.get(status, "#1565c0"))
        bottom += counts
    ax.set_xlabel(f"seconds since the first decision ({width:,.1f} s per bar)")
    ax.set_ylabel("updates")
    ax.set_title(f"Member updates over time ({len(decided):,} updates)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def fig_txn_to_offer(run: Run):
    fig, (ax,) = figure(10, 3.8)
    values = run.updates.column("TXN_TO_OFFER_MS").drop_null().to_numpy()
    if len(values) == 0:
        empty(ax, "no update got an offer")
        return fig
    ax.hist(values, bins=40, color="#00838f", histtype="stepfilled")
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        value = float(np.percentile(values, q))
        ax.axvline(value, color="#d84315", linestyle=style, label=f"p{q} {value:,.0f} ms")
    ax.legend(fontsize=9)
    ax.set_xlabel("milliseconds from the update's first transaction reaching state to its offer")
    ax.set_ylabel("updates")
    ax.set_title(f"Transaction to offer ({len(values):,} updates with an offer)")
    ax.grid(alpha=0.3)
    return fig


def window_rows(run: Run) -> list[dict]:
    """Per result window (its files' shards together), in window order: updates, members, OK, FAILED."""
    grouped: dict[tuple, list] = {}
    for w in run.windows:
        key = (w["start"], w["end"]) if w["start"] else (w["file"], None)
        grouped.setdefault(key, []).append(w["table"])
    rows = []
    for (start, end), tables in sorted(grouped.items(), key=lambda kv: str(kv[0])):
        statuses = Counter(s for t in tables for s in t.column("STATUS").to_pylist())
        members = {m for t in tables for m in t.column("MEMBER_ID").to_pylist()}
        rows.append({"start": start, "end": end, "files": len(tables), "updates": sum(t.num_rows for t in tables),
                     "members": len(members), "ok": statuses.get("OK", 0), "failed": statuses.get("FAILED", 0)})
    return rows


def fig_windows(run: Run):
    rows = window_rows(run)
    fig, (ax,) = figure(12, max(2.6, 0.32 * len(rows) + 1.4))
    if not rows:
        empty(ax, "no result window")
        return fig
    drawn = ax.barh([str(r["start"]) for r in rows], [r["updates"] for r in rows], color="#1565c0")
    ax.bar_label(drawn, [f"{r['updates']:,}" for r in rows], padding=3, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, max(r["updates"] for r in rows) * 1.2)
    ax.set_xlabel("updates written in the window")
    ax.set_ylabel("window start (UTC)")
    ax.set_title(f"Updates per result window ({len(rows)} windows)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def section(run: Run, img) -> str:
    acc = run.summary["accounting"]
    replay = run.summary.get("replay") or {}
    lat = run.summary.get("txn_to_offer_ms") or {}
    updates = run.updates.num_rows
    statuses = Counter(run.updates.column("STATUS").to_pylist())
    per_member = pc.value_counts(run.updates.column("MEMBER_ID")).field("counts").to_numpy()
    parts = [
        "<h2>Stream</h2>",
        f"<p>A streaming run: one results row per member update. Replay at {num(replay.get('rate_per_s'))} "
        f"rows per second of simulated time, debounce {num(replay.get('debounce_s'))} s, idle timeout "
        f"{num(replay.get('idle_days'))} days. The sections below describe each member's latest update; "
        "this one, every update.</p>" if replay else
        "<p>A streaming run: one results row per member update. The sections below describe each member's "
        "latest update; this one, every update.</p>",
        table(["updates", "members", "updates per member (mean)", "updates per member (max)", "OK",
               "NO_TRANSACTIONS", "FAILED"],
              [[num(updates), num(run.results.num_rows), num(float(per_member.mean()) if len(per_member) else None, 2),
                num(int(per_member.max()) if len(per_member) else None), num(statuses.get("OK", 0)),
                num(statuses.get("NO_TRANSACTIONS", 0)), num(statuses.get("FAILED", 0))]], numeric_from=0),
        img("stream_updates.png"),
        "<h3>Transaction to offer</h3><p>TXN_TO_OFFER_MS: from the update's first transaction reaching its "
        "member's state to the offer coming back, on the worker's clock, over the updates that got an offer. "
        + ("In a replay the debounce passes in simulated time, so this is the pipeline's own time, not what a "
           "member would see on a live stream." if replay else
           "On a live stream it includes the debounce as it elapsed.") + "</p>",
        table(["p50 (ms)", "p95 (ms)", "p99 (ms)"], [[num(lat.get("p50"), 1), num(lat.get("p95"), 1),
                                                       num(lat.get("p99"), 1)]], numeric_from=0),
        img("stream_latency.png"),
        "<h3>Result windows</h3><p>The Parquet files in results/ are named by their window (decision "
        "time, UTC) and shard; a window's shards are counted together.</p>",
        table(["window start (UTC)", "window end (UTC)", "files", "updates", "members", "OK", "FAILED"],
              [[e(r["start"] or NONE), e(r["end"] or NONE), num(r["files"]), num(r["updates"]), num(r["members"]),
                num(r["ok"]), num(r["failed"])] for r in window_rows(run)], numeric_from=2),
        img("stream_windows.png"),
        "<h3>Rows</h3>",
        table(["rows", "count", "share of rows replayed"], [
            [e(k.replace("_", " ")), num(acc.get(k)), share(acc.get(k) or 0, acc.get("rows_replayed") or 0)]
            for k in ("rows_replayed", "transactions", "member_only_rows", "dead_letter_rows") if k in acc]),
    ]
    return "".join(parts)
