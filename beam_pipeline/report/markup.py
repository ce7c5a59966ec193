"""HTML building blocks of the report: escaping, numbers, tables, embedded figures, the page's style.

Every number cell is right-aligned with tabular figures; units belong in the
header (``p50 (ms)``), never in the cells, so a column reads as one quantity.
"""
from __future__ import annotations

import base64
import html
import re

from beam_pipeline.report.charts import NONE

# Field delimiters of the exports a raw line may come from: a line wraps after one of them, not mid-value.
_DELIMITERS = re.compile(r"([,;|\t])")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1300px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em;overflow-wrap:anywhere} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.lead{font-size:1.2em;background:#f3f6fa;border-left:4px solid #1565c0;padding:.6em 1em;overflow-wrap:anywhere}
.notice{background:#fff8e1;border-left:4px solid #f9a825;padding:.6em 1em}
table{border-collapse:collapse;margin:.6em 1em .8em 0;font-size:.92em;max-width:100%}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f5f5f5} td.n{text-align:right;font-variant-numeric:tabular-nums;overflow-wrap:normal}
code{font-size:.9em;overflow-wrap:anywhere} code.raw{white-space:normal}
figure{margin:.5em 0;max-width:100%} img{max-width:100%;height:auto;border:1px solid #eee;box-sizing:border-box}
figcaption{color:#666;font-size:.85em} .row{display:flex;flex-wrap:wrap;gap:1.5em}
.row>div{min-width:0;max-width:100%}
details{margin:.5em 0} pre{background:#f7f7f7;padding:.6em;overflow:auto;white-space:pre-wrap;overflow-wrap:anywhere}
"""


def e(value) -> str:
    return html.escape("" if value is None else str(value))


def num(value, digits: int = 0) -> str:
    if value is None:
        return NONE
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{value:,.0f}" if isinstance(value, (int, float)) else e(value)


def raw_line(line: str | None) -> str:
    """An export line as code that wraps after a field delimiter, never inside a value
    (unless one value alone is wider than its cell)."""
    parts = _DELIMITERS.split(line or "")  # values at even positions, delimiters at odd ones
    wrapped = "".join(e(part) + ("<wbr>" if i % 2 else "") for i, part in enumerate(parts))
    return f"<code class='raw'>{wrapped}</code>"


def table(header: list[str], rows: list[list], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f"<td class='n'>{c}</td>" if i >= numeric_from else f"<td>{c}</td>" for i, c in enumerate(row)
        ) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(images: dict, titles: dict, name: str) -> str:
    data = base64.b64encode(images[name]).decode("ascii")
    title = titles[name]
    return f"<figure><img alt='{e(title)}' src='data:image/png;base64,{data}'><figcaption>{e(title)} " \
           f"(<a href='{e(name)}'>{e(name)}</a>)</figcaption></figure>"


def page(title: str, body: str) -> str:
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n")
