"""The report in a real browser: headless Chromium loads the page, every image decodes, no text
overflows its box, and a screenshot is kept under the test's output for people to look at.

Chromium is Debian's ``chromium`` package. When it is missing the test installs it with
apt-get (as root, from the package registry), or skips saying why.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline import report
from tests.test_report import _stream_run

# What headless Chromium needs to render a local file and nothing else: no network of its own,
# no updates, no sync, a fresh profile each time.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
# Run in the page once it has loaded (images decoded): the broken images, and every element whose
# content is wider than its box (scrollWidth > clientWidth) except those meant to scroll.
CHECK = """<script>
window.addEventListener('load', () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  const overflow = [];
  for (const el of document.body.querySelectorAll('*')) {
    const style = getComputedStyle(el);
    if (['auto', 'scroll'].includes(style.overflowX) || style.display === 'inline' || el.tagName === 'SCRIPT') continue;
    if (el.scrollWidth > el.clientWidth + 1) overflow.push(el.tagName + ': ' + el.textContent.slice(0, 80));
  }
  const page = document.documentElement.scrollWidth > window.innerWidth + 1;
  const out = document.createElement('pre');
  out.id = 'browser-check';
  out.textContent = JSON.stringify({images: document.images.length, broken, overflow, page_overflow: page});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("needs Debian's chromium package (apt-get install chromium); not root or no apt-get to install it")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        install = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                                 capture_output=True, text=True, timeout=900)
        if install.returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
            install = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], env=env,
                                     capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("installing chromium with apt-get took over 15 minutes")
    found = shutil.which("chromium")
    if install.returncode != 0 or not found:
        last = (install.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"chromium is not installed and apt-get could not install it: {last}")
    return found


@pytest.fixture(scope="module")
def chromium() -> str:
    return _chromium()


def _browse(chromium: str, page: Path, *args: str, width: int = 1100) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900",
                               *args, page.as_uri()], capture_output=True, text=True, timeout=120)


def _check(chromium: str, folder: Path, width: int) -> dict:
    """Load a copy of the report with the checking script added; the result is in the dumped DOM."""
    page = (folder / report.REPORT_HTML).read_text(encoding="utf-8")
    checked = folder / "checked.html"
    checked.write_text(page.replace("</body>", CHECK + "</body>"), encoding="utf-8")
    try:
        done = _browse(chromium, checked, "--virtual-time-budget=10000", "--dump-dom", width=width)
    finally:
        checked.unlink()
    found = re.search(r"<pre id=\"browser-check\">(.*?)</pre>", done.stdout, re.S)
    assert found, f"the page did not finish loading in Chromium: {done.stderr[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                      .replace("&gt;", ">"))


def _with_long_raw_line(folder: Path) -> str:
    """Add a dead letter whose raw line is far wider than its cell: it must wrap between fields."""
    line = ",".join(f"field{i:03d}-{'x' * 12}" for i in range(40))
    dead = pq.read_table(folder / "dead_letter")
    extra = pa.Table.from_pylist([{"SOURCE": "export.csv", "RAW_LINE": line, "REASON": "WRONG_FIELD_COUNT",
                                   "DETAIL": "40 fields, expected 5"}], schema=dead.schema)
    pq.write_table(extra, folder / "dead_letter" / "extra.parquet")
    return line


@pytest.fixture(scope="module")
def pages(small_run, tmp_path_factory):
    """Reports as users get them: a batch run against a baseline, with a long raw line, and a stream."""
    _, _, output = small_run
    root = tmp_path_factory.mktemp("browser")
    batch = root / "batch"
    shutil.copytree(output, batch)
    for name in ("report.html", "comparison.json"):
        (batch / name).unlink(missing_ok=True)
    _with_long_raw_line(batch)
    assert report.main([str(batch), "--baseline", str(output)]) == 0
    stream = root / "stream"
    _stream_run(stream)
    assert report.main([str(stream)]) == 0
    return {"batch": batch, "stream": stream}


@pytest.mark.parametrize("kind, width", [("batch", 1300), ("batch", 900), ("stream", 900)])
def test_the_report_loads_in_chromium_with_no_broken_image_and_no_overflow(chromium, pages, kind, width):
    result = _check(chromium, pages[kind], width)
    assert result["images"] >= len(report.FIGURES) - 1
    assert result["broken"] == [], result["broken"]
    assert result["overflow"] == [] and not result["page_overflow"], result


def test_a_screenshot_is_kept(chromium, pages, tmp_path_factory):
    folder = pages["batch"]
    shot = folder / "report-screenshot.png"
    done = _browse(chromium, folder / report.REPORT_HTML, f"--screenshot={shot}", "--hide-scrollbars",
                   "--virtual-time-budget=10000", width=1300)
    assert shot.exists() and shot.stat().st_size > 20_000, done.stderr[-500:]
    assert shot.read_bytes().startswith(b"\x89PNG")
    print(f"screenshot: {shot}")
