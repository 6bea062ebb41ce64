"""The built site in a real browser (Debian's chromium driven by Playwright), from file://.

Runs in the default test run when ``/usr/bin/chromium`` exists; Playwright's own browser
builds are never downloaded.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gauntlet.leaderboard import aggregate as agg
from gauntlet.leaderboard.site import build_site, ci, pct

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                                "(apt-get install chromium)")]
FIXTURES = Path(__file__).parent / "fixtures" / "results"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DS = "mnist-embedded"
XSS_IMG = "<img src=x onerror=alert(1)>"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("browser") / "results"
    shutil.copytree(FIXTURES, root)
    for f in (root / DS / "detector").rglob("*.json"):  # no manifest.json: name from the results
        rec = json.loads(f.read_text())
        rec["defense"]["name"] = XSS_IMG
        f.write_text(json.dumps(rec))
    site = root.parent / "site"
    build_site(root, site)
    return root, site


def test_site_in_chromium(built):
    sync_api = pytest.importorskip("playwright.sync_api")
    root, site = built
    expected = agg.leaderboard(agg.load_board(root)).query("dataset == @DS and threat == 'linf-0.031'")
    prefix = site.resolve().as_uri() + "/"
    requests, outside, console_errors, dialogs = [], [], [], []

    def route(r):
        if r.request.url.startswith(prefix):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.route("**/*", route)
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(prefix + "index.html")

            table = page.locator(f'section[id="{DS}-linf-0.031"] table')
            rows = table.locator("tbody tr")
            # Rows match the result files, in ranked order.
            assert rows.count() == len(expected)
            names = rows.locator("th a.defense").all_inner_texts()
            assert names == list(expected.name)
            assert XSS_IMG in names  # rendered as text
            scores = rows.locator("td.strong").all_inner_texts()
            assert [s.split("\n")[0].strip() for s in scores] == [pct(v) for v in expected.robust_accuracy]
            # The interval is the cell's second line, with its tooltip; ≈ marks overlapping neighbours.
            ranked = expected[expected["rank"].notna()]
            assert [s.split("\n")[1].strip() for s in scores[:len(ranked)]] == [
                ci((lo, hi)) for lo, hi in zip(ranked.robust_accuracy_ci_low, ranked.robust_accuracy_ci_high)]
            marks = table.locator("span.overlap")
            assert marks.count() == int(expected.overlaps_next.sum()) > 0
            assert marks.first.get_attribute("title").startswith(agg.OVERLAP_TOOLTIP)

            # Sorting by a column header.
            table.locator("thead th", has_text="Defense").locator("button").click()
            assert rows.locator("th a.defense").all_inner_texts() == sorted(names, key=str.lower)
            worst = table.locator("thead th", has_text="Gauntlet").locator("button")
            worst.click()
            ascending = [float(v) for v in rows.evaluate_all(
                "rs => rs.map(r => r.querySelector('td.strong').dataset.sort)") if v]  # "": build failed
            assert ascending == sorted(ascending)
            worst.click()
            assert table.locator("thead th", has_text="Gauntlet").get_attribute("aria-sort") == "descending"

            # Search filters rows across tables.
            page.fill("#search", "madry")
            visible = page.locator("table.searchable tbody tr:visible")
            assert visible.count() == 2
            assert all("Adversarial training" in t for t in visible.all_inner_texts())
            page.fill("#search", "")
            assert page.locator("table.searchable tbody tr:visible").count() == len(expected) * 2 + 2

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "index.png"), full_page=True)

            # Follow a defense link and find its SVG plots.
            table.locator("a.defense", has_text="Adversarial training").click()
            page.wait_for_load_state("load")
            assert page.url == prefix + f"defenses/{DS}/madry.html"
            svgs = page.locator('img[src$=".svg"]')
            assert svgs.count() == 2
            widths = svgs.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert all(w > 0 for w in widths), widths
            page.goto(prefix + f"defenses/{DS}/smoothing.html")
            assert page.locator('img[src$="certified-randomized-smoothing.svg"]').evaluate(
                "i => i.naturalWidth") > 0
            page.goto(prefix + f"defenses/{DS}/detector.html")
            assert page.locator("h1").inner_text() == XSS_IMG
            assert page.locator('img[src="x"]').count() == 0
            for extra in ("claims.html", "methodology.html"):
                page.goto(prefix + extra)
        finally:
            browser.close()

    assert outside == [], outside
    assert requests and all(u.startswith(prefix) for u in requests)
    assert console_errors == []
    assert dialogs == []
