"""The report's sections for a run's own numbers: headline, members and offers, time, endpoints,
rejected rows, features, details. Every share names its denominator; every unit is in a header."""
from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from beam_pipeline.report import charts
from beam_pipeline.report.charts import KINDS, NONE, feature_names, rows_read, share, status_counts, unit
from beam_pipeline.report.folder import Run
from beam_pipeline.report.markup import e, num, raw_line, table

EXAMPLES_PER_REASON = 5
FAILED_EXAMPLES = 20
# The newest transaction this many days or more before the as-of date earns a notice: every
# DAYS_SINCE_LAST_TRANSACTION is then large, and the as-of date may be wrong or the export old.
STALE_DAYS = 30


def headline(summary: dict) -> str:
    """The sentence a reader needs first, in plain words (a batch, retry or incremental run)."""
    acc = summary["accounting"]
    offers = summary.get("offers") or {}
    offer_text = ", ".join(f"{n:,} got {o}" for o, n in offers.items()) or "none got an offer"
    if acc.get("members_features_only"):
        offer_text += f", {acc['members_features_only']:,} got features only (no endpoint calls)"
    return (
        f"{acc['members']:,} members: {offer_text}; {acc['members_no_transactions']:,} had no transactions "
        f"and {acc['members_failed']:,} failed. {acc['rows_read']:,} rows read, "
        f"{acc['dead_letter_rows']:,} rejected. Run took {summary['wall_seconds']:.1f}s."
    )


def stale_notice(run: Run) -> str:
    """A notice when the newest transaction is far older than the as-of date; '' otherwise."""
    column = "DAYS_SINCE_LAST_TRANSACTION"
    if column not in run.results.column_names:
        return ""
    newest = pc.min(run.results.column(column)).as_py()
    if newest is None or newest < STALE_DAYS:
        return ""
    years = f" (about {newest / 365.25:.1f} years)" if newest >= 365 else ""
    return (f"<p class='notice'><b>Note:</b> the newest transaction in this run is {newest:,} days{years} "
            f"before the as-of date {e(run.summary.get('as_of'))}. Every DAYS_SINCE_LAST_TRANSACTION counts "
            "from that date: check that the export is current and the as-of date is the one meant "
            "(<code>--as-of</code>).</p>")


def section_members(run: Run, img) -> str:
    acc = run.summary["accounting"]
    members = run.results.num_rows
    offers = charts.offer_counts(run.results)
    with_offer = sum(offers.values())
    offer_rows = [[e(o), num(n), share(n, members)] for o, n in offers.items()]
    offer_rows.append(["any offer", num(with_offer), share(with_offer, members)])
    status_rows = [[e(s), num(n), share(n, members)] for s, n in status_counts(run.results).items()]
    parts = ["<h2>Members and offers</h2><div class='row'><div>",
             f"<p>Shares are of all {members:,} members.</p>",
             table(["offer", "members", "share of all members"], offer_rows),
             table(["status", "members", "share of all members"], status_rows)]
    if "rows_read" in acc:
        closes = acc["rows_read"] == acc["transactions"] + acc["member_only_rows"] + acc["dead_letter_rows"]
        parts.append(table(["rows", "count"], [
            ["rows read (header lines excluded)", num(acc["rows_read"])],
            ["transactions", num(acc["transactions"])],
            ["member-only rows", num(acc["member_only_rows"])],
            ["rejected rows (dead letters)", num(acc["dead_letter_rows"])],
            ["accounting closes (read = transactions + member-only + rejected)", "yes" if closes else "<b>NO</b>"],
        ]))
    parts.append(f"</div><div>{img('offers.png')}{img('statuses.png')}</div></div>{img('ats_resp.png')}")
    return "".join(parts)


ENDPOINT_COLUMNS = ["endpoint", "calls", "p50 (ms)", "p95 (ms)", "p99 (ms)", "max (ms)", "ok", "errors",
                    "retries", "throttled", "limit (calls in flight)"]
# run.json latency_ms entries per part of a call: "" the whole call, "_wait" and "_wire" its parts.
LATENCY_PARTS = (("", "total per call"), ("_wait", "waiting for a slot"), ("_wire", "on the wire"))


def endpoint_table(summary: dict) -> str:
    latency = summary.get("latency_ms") or {}
    requests = summary.get("requests") or {}
    limits = summary.get("concurrency_limit") or {}
    rows = []
    for kind in KINDS:
        lat, req, lim = latency.get(kind) or {}, requests.get(kind) or {}, limits.get(kind)
        errors = sum(v for k, v in req.items() if k not in ("ok", "retries", "throttled")) if req else None
        limit = f"{lim['mean']:,.1f} ({lim['min']:,}\u2013{lim['max']:,})" if lim else NONE
        rows.append([e(kind), num(lat.get("count")), num(lat.get("p50"), 1), num(lat.get("p95"), 1),
                     num(lat.get("p99"), 1), num(lat.get("max"), 1), num(req.get("ok")),
                     num(errors), num(req.get("retries", 0) if req else None),
                     num(req.get("throttled", 0) if req else None), e(limit)])
    return table(ENDPOINT_COLUMNS, rows)


def latency_parts_table(summary: dict) -> str:
    """Per endpoint, the percentiles of each part of a call the run measured (total, wait, wire)."""
    latency = summary.get("latency_ms") or {}
    if not any(latency.get(f"{kind}{suffix}") for kind in KINDS for suffix, _ in LATENCY_PARTS[1:]):
        return ""
    rows = []
    for kind in KINDS:
        for suffix, label in LATENCY_PARTS:
            lat = latency.get(f"{kind}{suffix}") or {}
            if lat:
                rows.append([e(kind), e(label), num(lat.get("count")), num(lat.get("p50"), 1),
                             num(lat.get("p95"), 1), num(lat.get("p99"), 1), num(lat.get("max"), 1)])
    return ("<p>Each call's latency in its parts (the rest of the total is back-off between attempts "
            "and the client's own work):</p>"
            + table(["endpoint", "part", "calls", "p50 (ms)", "p95 (ms)", "p99 (ms)", "max (ms)"], rows,
                    numeric_from=2))


def section_steps(run: Run, img) -> str:
    summary = run.summary
    steps = summary.get("steps") or []
    step_rows = [[e(s["name"]), num(s["elements"]), e(s["unit"]),
                  num(s["seconds"], 3) if s.get("seconds") is not None else e(charts.untimed_reason(summary)),
                  num(s.get("per_second"))] for s in steps]
    source = next((s.get("seconds_source") for s in steps if s.get("seconds_source")), None)
    note = {"execution_time": "Seconds are Beam's execution time of each step, excluding the steps after it.",
            "bundle_ms": "Seconds are bundle wall times of each step's DoFn, including steps fused after it "
                         "(the read step: time spent reading only)."}.get(source, "")
    longest = max((s for s in steps if s.get("seconds") is not None), key=lambda s: s["seconds"], default=None)
    took = (f" The longest step is <b>{e(longest['name'])}</b> ({longest['seconds']:.3f} s)."
            if longest is not None else "")
    return (
        f"<h2>Time per step</h2><p>Wall time of the whole run: <b>{summary['wall_seconds']:.1f} s</b>.{took} {note}</p>"
        f"{table(['step', 'elements', 'unit', 'seconds', 'rate (elements/s)'], step_rows)}{img('steps.png')}"
    )


def section_endpoints(run: Run, img) -> str:
    summary = run.summary
    return (
        "<h2>Endpoints</h2><p>Latency per call in milliseconds, over the calls made. <i>Total per call</i> is "
        "from the first attempt's start to the last attempt's answer, retries and back-off included. "
        "Where the run measured them: <i>waiting for a slot</i> is client-side queueing for a free place "
        "under the adaptive limit; <i>on the wire</i> is from the request sent to the response read, "
        "which is what the server and network cost (the server latency). The limit is the number of calls "
        "each worker let be in flight at once, learnt from latency and errors (mean over the run, and its range).</p>"
        f"{endpoint_table(summary)}{latency_parts_table(summary)}{img('latency.png')}"
    )


def dead_letter_examples(dead: pa.Table | None) -> list[dict]:
    examples, seen = [], Counter()
    for row in (dead.to_pylist() if dead is not None else []):
        if seen[row["REASON"]] < EXAMPLES_PER_REASON:
            seen[row["REASON"]] += 1
            examples.append(row)
    return sorted(examples, key=lambda r: r["REASON"])


def section_rejected(run: Run, img) -> str:
    reasons = run.summary.get("dead_letter_reasons") or (
        dict(Counter(run.dead.column("REASON").to_pylist())) if run.dead is not None else {})
    total = rows_read(run.summary)
    parts = ["<h2>Rejected rows</h2>"]
    if not reasons:
        parts.append("<p>No input row was rejected.</p>")
        parts.append(img("dead_letters.png"))
    else:
        parts.append(f"<p>Shares are of all {total:,} rows read.</p>")
        parts.append(table(["reason", "rows", "share of rows read"], [
            [e(r), num(n), share(n, total)] for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])]))
        parts.append(img("dead_letters.png"))
        parts.append(f"<h3>Examples (up to {EXAMPLES_PER_REASON} per reason; all in dead_letter/)</h3>")
        parts.append(table(["reason", "detail", "raw line", "file"], [
            [e(r["REASON"]), e(r["DETAIL"]), raw_line(r["RAW_LINE"]), e(r["SOURCE"])]
            for r in dead_letter_examples(run.dead)], numeric_from=99))
    failed = run.results.filter(pc.equal(run.results.column("STATUS"), "FAILED"))
    parts.append("<h2>Failed members</h2>")
    if failed.num_rows == 0:
        parts.append("<p>No member failed.</p>")
    else:
        rows = failed.select(["MEMBER_ID", "ERROR", "ATTEMPTS"]).to_pylist()[:FAILED_EXAMPLES]
        parts.append(f"<p>{failed.num_rows:,} members failed after retries (first {len(rows)} shown; "
                     "all in results/ with STATUS = FAILED).</p>")
        parts.append(table(["member", "error", "attempts"],
                           [[e(r["MEMBER_ID"]), e(r["ERROR"]), num(r["ATTEMPTS"])] for r in rows], numeric_from=2))
    return "".join(parts)


def section_features(run: Run, img) -> str:
    rows = []
    for name in feature_names(run.results):
        column = run.results.column(name).drop_null()
        if len(column) == 0:
            rows.append([e(name), e(unit(name)), "0", NONE, NONE, NONE, NONE])
            continue
        column = column.cast(pa.float64())
        median = pc.quantile(column, q=[0.5]).to_pylist()[0]
        rows.append([e(name), e(unit(name)), num(len(column)), num(pc.min(column).as_py(), 3), num(median, 3),
                     num(pc.mean(column).as_py(), 3), num(pc.max(column).as_py(), 3)])
    return ("<h2>Features</h2><p>Members with transactions only (the others have no features); "
            "each value is in the feature's unit.</p>"
            f"{table(['feature', 'unit', 'members', 'min', 'median', 'mean', 'max'], rows, numeric_from=2)}"
            f"{img('features.png')}")


def section_details(run: Run) -> str:
    summary = run.summary
    inputs = table(["input file", "size (bytes)"],
                   [[e(i.get("path")), num(i.get("size_bytes"))] for i in summary.get("inputs") or []])
    versions = table(["package", "version"], [[e(k), e(v)] for k, v in (summary.get("versions") or {}).items()],
                     numeric_from=99)
    options = f"<pre>{e(json.dumps(summary.get('options') or {}, indent=2, default=str))}</pre>"
    everything = f"<pre>{e(json.dumps(summary, indent=2, default=str))}</pre>"
    metric_rows = []
    if run.metrics is not None and "NAMESPACE" in run.metrics.column_names:
        for r in run.metrics.to_pylist():
            value = r.get("VALUE") if r.get("KIND") != "distribution" else (
                f"n={r['COUNT']:,} mean={r['MEAN'] or 0:,.1f} min={r['MIN'] or 0:,.0f} max={r['MAX'] or 0:,.0f}"
                if r.get("COUNT") is not None else None)
            metric_rows.append([e(r.get("NAMESPACE")), e(r.get("NAME")), e(r.get("STEP")), e(r.get("KIND")),
                                num(value) if isinstance(value, float) else e(value)])
    metrics_table = table(["namespace", "name", "step", "kind", "value"], metric_rows, numeric_from=4)
    retry = ""
    if summary.get("retry_of"):
        retry = (f" A retry of run <code>{e(summary['retry_of'])}</code> "
                 f"(<code>{e(summary.get('retry_of_output'))}</code>).")
    if summary.get("incremental_from"):
        retry += (f" Today's rows folded into the member state of run <code>{e(summary['incremental_from'])}</code> "
                  f"(<code>{e(summary.get('incremental_from_output'))}</code>).")
    state = summary.get("state")
    state_table = ""
    if isinstance(state, dict) and state:
        state_table = ("<h3>Member state (state/)</h3>"
                       + table(["state", "count"], [[e(k.replace("_", " ")), num(v)] for k, v in state.items()]))
    return (
        "<h2>Run details</h2>"
        f"<p>Run <code>{e(summary['run_id'])}</code> ({e(run.kind)}), partner <b>{e(summary['partner'])}</b>, "
        f"as of {e(summary.get('as_of'))}, runner {e(summary.get('runner'))}, started {e(summary.get('started_at'))}, "
        f"finished {e(summary.get('finished_at'))}, exit code {e(summary.get('exit_code'))}.{retry}</p>"
        f"{inputs}{state_table}<details><summary>Options</summary>{options}</details>"
        f"<details><summary>Package versions</summary>{versions}</details>"
        f"<details><summary>All Beam metrics ({len(metric_rows)})</summary>{metrics_table}</details>"
        f"<details><summary>run.json</summary>{everything}</details>"
    )
