"""The HTML reports as a reader sees them, in headless Chromium: results written by `tandem bench`
against the load-test target (every 5th request failing), a run's report and `tandem bench compare`
reports opened in the browser. Each page must draw its figures (SVG elements and coloured pixels
in a screenshot of every panel), answer hover and legend clicks, print without tooltips, and make
no request at all: the DevTools Network domain sees every request a page starts (even one its CSP
blocks) and the HTML names no external resource. A control page that does fetch proves the
check fails when it should."""

import asyncio
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loadgen.report.figure import PALETTE
from tests.helpers.headless_chromium import Chromium, chromium_binary
from tests.loadgen_target.process import REPO_ROOT, TargetProcess

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    chromium_binary() is None,
    reason="chromium is not installed: `apt-get install -y chromium` (Debian); .ci/run installs it")]

SERIES_RGB = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in PALETTE if c not in ("#000000", "#F0E442")]


def tandem(*argv: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "bench", *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    """short.* and long.* (two sweeps that differ in prompt length), compare-self/ and compare-diff/."""
    out = tmp_path_factory.mktemp("reports")
    with TargetProcess(ttft_ms=20, itl_ms=4, error_every=5) as target:
        for name, input_len in (("short", 16), ("long", 64)):
            tandem("--base-url", target.http_url, "--sweep", "concurrency:1,4", "--num-prompts", "15",
                   "--random-input-len", str(input_len), "--random-output-len", "6", "--ignore-eos",
                   "--goodput", "ttft:1000", "--no-progress", "--save-result", "--result-dir", str(out),
                   "--result-filename", name)
    tandem("compare", str(out / "short.json"), str(out / "short.json"), "--out", str(out / "compare-self"),
           "--label", "first", "second")
    printed = tandem("compare", str(out / "short.json"), str(out / "long.json"), "--out", str(out / "compare-diff"))
    assert "WARNING: the runs differ in workload" in printed and "mean prompt tokens" in printed
    return out


class _References(HTMLParser):
    """Every URL-like attribute value and CSS url()/@import of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "poster", "data", "xlink:href", "background") and value:
                self.found.append(f"<{tag} {name}={value}>")
            if name == "style" and value and "url(" in value:
                self.found.append(f"<{tag} style={value}>")

    def handle_data(self, data):
        self.found += [m.group(0) for m in re.finditer(r"url\((?!\s*['\"]?#)[^)]*\)|@import[^;]*", data)]


def external_references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    return [ref for ref in parser.found if not re.search(r"=#|url\(#", ref)]


async def requests_beyond(page, path: Path) -> list[str]:
    """Requests other than loading the page itself, seen by DevTools and by resource timing."""
    await asyncio.sleep(0.5)                   # anything the page starts after load, too
    timing = await page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    own = path.resolve().as_uri()
    return [u for u in page.requests if u != own] + timing


PANELS_JS = """Array.from(document.querySelectorAll('svg.panel')).map(s => { const r = s.getBoundingClientRect();
  return {x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height, title: s.querySelector('title').textContent,
          paths: Array.from(s.querySelectorAll('g.series path')).filter(p => p.getAttribute('d').length > 4).length,
          empty: !!s.querySelector('.nodata')}; })"""


def coloured_pixels(image: Image.Image, box) -> int:
    """Pixels of the box within a small distance of a series colour (never axis grey or text black)."""
    pixels = np.asarray(image.crop(tuple(int(v) for v in box)).convert("RGB"), dtype=int).reshape(-1, 1, 3)
    distance = np.abs(pixels - np.asarray(SERIES_RGB)[None, :, :]).sum(axis=2)
    return int((distance.min(axis=1) < 60).sum())


async def check_drawn(page, shot_path: Path) -> list[dict]:
    """Every panel with data has drawn series paths and coloured pixels on screen."""
    panels = await page.evaluate(PANELS_JS)
    png = await page.screenshot()
    shot_path.write_bytes(png)
    image = Image.open(io.BytesIO(png))
    assert image.size[0] >= 1000 and image.size[1] > 1000
    drawn = [p for p in panels if not p["empty"]]
    assert drawn, "no panel has data"
    for p in drawn:
        assert p["w"] > 200 and p["h"] > 100, p
        assert p["paths"] >= 1, f"{p['title']}: no series drawn"
        pixels = coloured_pixels(image, (p["x"], p["y"], p["x"] + p["w"], p["y"] + p["h"]))
        assert pixels > 30, f"{p['title']}: only {pixels} coloured pixels in the screenshot"
    return panels


async def open_checked(browser, path: Path, tmp_path: Path):
    html = path.read_text(encoding="utf-8")
    assert external_references(html) == []
    page = await browser.open(path)
    assert await requests_beyond(page, path) == []
    assert page.problems == []
    panels = await check_drawn(page, tmp_path / f"{path.stem}.png")
    return page, panels


async def test_run_report_draws_and_shows_failures(reports, tmp_path):
    async with Chromium(tmp_path) as browser:
        page, panels = await open_checked(browser, reports / "short.html", tmp_path)
        titles = [p["title"] for p in panels]
        for title in ("TTFT (ms)", "Output throughput", "Request throughput", "Goodput fraction", "Failed requests",
                      "TTFT CDF", "E2E latency CDF", "Requests in flight", "Output tokens/s", "Errors/s"):
            assert title in titles
        errors = await page.evaluate("""Array.from(document.querySelectorAll('g.series[data-series="errors/s"]'))
            .map(g => JSON.parse(g.getAttribute('data-points')).reduce((a, q) => a + q[3], 0))""")
        assert len(errors) == 2 and all(e > 0 for e in errors)           # failures show in each time series
        fraction = await page.evaluate("""JSON.parse(document.querySelector(
            'g.series[data-series="goodput fraction"]').getAttribute('data-points')).map(q => q[3])""")
        assert fraction and all(f <= 0.81 for f in fraction)            # 1 in 5 failed: at most 4/5 good
    doc = json.loads((reports / "short.json").read_text())
    assert all(r["failed"] == 3 and r["goodput_fraction"] == pytest.approx(0.8) for r in doc["runs"])
    for png in ("short.png", "short.cdf.png", "short.timeline-1-concurrency-1.png"):
        assert (reports / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_compare_with_itself_hover_legend_print(reports, tmp_path):
    path = reports / "compare-self" / "compare.html"
    async with Chromium(tmp_path) as browser:
        page, _ = await open_checked(browser, path, tmp_path)
        ratios = await page.evaluate("Array.from(document.querySelectorAll('td')).map(t => t.textContent)"
                                     ".filter(t => /^[0-9.]+x$/.test(t))")
        assert len(ratios) == 2 * 12 and set(ratios) == {"1.00x"}
        assert await page.evaluate("document.querySelector('.warn')") is None

        # Hover: the tooltip shows the nearest point's run and value.
        x, y, name, value = await page.evaluate("""(() => { const svg = document.querySelector('svg.panel');
            svg.scrollIntoView({block: 'center'}); const g = svg.querySelector('g.series');
            const q = JSON.parse(g.getAttribute('data-points'))[0]; const m = svg.getScreenCTM();
            return [m.a * q[0] + m.e, m.d * q[1] + m.f, g.getAttribute('data-series'), q[3]]; })()""")
        await page.mouse("mouseMoved", x + 2, y + 1)
        tip = await page.evaluate("[getComputedStyle(document.querySelector('.tip')).display, "
                                  "document.querySelector('.tip').textContent]")
        assert tip == ["block", f"{name}: {value:.4g} ms at concurrency 1"]

        # Legend: a click hides that run in every panel of the figure; a second shows it again.
        visible = """Array.from(document.querySelector('figure.chart').querySelectorAll('g.series'))
            .filter(g => g.getAttribute('data-series') === 'second' && getComputedStyle(g).display !== 'none').length"""
        shown = await page.evaluate(visible)
        assert shown >= 8
        bx, by = await page.evaluate("""(() => { const b = document.querySelector('figure.chart .legend ' +
            'button[data-series="second"]'); b.scrollIntoView({block: 'center'}); const r = b.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2]; })()""")
        await page.click(bx, by)
        assert await page.evaluate(visible) == 0
        await page.click(bx, by)
        assert await page.evaluate(visible) == shown

        # Printed: no tooltip, figures still laid out, one figure never split across pages.
        await page.send("Emulation.setEmulatedMedia", media="print")
        printed = await page.evaluate("""[getComputedStyle(document.querySelector('.tip')).display,
            document.querySelector('svg.panel').getBoundingClientRect().width,
            getComputedStyle(document.querySelector('figure.chart')).breakInside]""")
        assert printed[0] == "none" and printed[1] > 200 and printed[2] == "avoid"
        pdf = await page.send("Page.printToPDF")
        assert len(pdf["data"]) > 10_000
        assert page.problems == []


async def test_compare_of_different_workloads_warns(reports, tmp_path):
    path = reports / "compare-diff" / "compare.html"
    async with Chromium(tmp_path) as browser:
        page, _ = await open_checked(browser, path, tmp_path)
        warning = await page.evaluate("""(() => { const w = document.querySelector('.warn');
            const r = w.getBoundingClientRect(); return [w.textContent, r.width, r.height]; })()""")
        assert "differ in workload" in warning[0] and "mean prompt tokens" in warning[0]
        assert warning[1] > 300 and warning[2] > 30
    doc = json.loads((reports / "compare-diff" / "compare.json").read_text())
    assert doc["workload_differences"]["mean prompt tokens"][0] < doc["workload_differences"]["mean prompt tokens"][1]


async def test_the_check_catches_a_page_that_fetches(reports, tmp_path):
    """Control: the same checks on a report that loads a script (blocked by the page's CSP, still
    requested), fetches, and a bare page without CSP whose script reaches the loopback proxy."""
    async with Chromium(tmp_path) as browser:
        port = browser.proxy.port
        report = (reports / "compare-self" / "compare.html").read_text(encoding="utf-8")
        tampered = tmp_path / "tampered.html"
        tampered.write_text(report.replace("</body>", f"<script src='http://127.0.0.1:{port}/lib.js'></script>"
                                                      f"<script>fetch('http://127.0.0.1:{port}/data')</script></body>"))
        assert external_references(tampered.read_text()) == [f"<script src=http://127.0.0.1:{port}/lib.js>"]
        page = await browser.open(tampered)
        assert set(await requests_beyond(page, tampered)) >= {f"http://127.0.0.1:{port}/lib.js"}
        assert any("Content Security Policy" in p for p in page.problems)
        bare = tmp_path / "bare.html"
        bare.write_text(f"<!doctype html><script src='http://127.0.0.1:{port}/bare.js'></script>")
        page = await browser.open(bare)
        assert await requests_beyond(page, bare)
        assert f"GET http://127.0.0.1:{port}/bare.js HTTP/1.1" in browser.proxy.requests
