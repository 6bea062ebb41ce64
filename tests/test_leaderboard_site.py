"""The static site: files, self-containment, escaping of submitter strings, downloads,
intervals, overlap markers, claim verdicts, naive baseline and abstention."""
from __future__ import annotations

import importlib.util
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from markupsafe import escape

from gauntlet.benchmark.intervals import clopper_pearson
from gauntlet.benchmark.results import ResultError
from gauntlet.leaderboard.aggregate import CLAIM_RULE, OVERLAP_TOOLTIP
from gauntlet.leaderboard.site import build_site, ci, http_url

FIXTURES = Path(__file__).parent / "fixtures" / "results"
DS = "mnist-embedded"
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(1)>"


class Links(HTMLParser):
    """Collects every URL-valued attribute and the text of table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        self.tags.append((tag, d))
        for attr in ("src", "href", "action", "srcset", "data", "poster"):
            if d.get(attr) is not None:
                self.refs.append((tag, attr, d[attr]))


def parse(path: Path) -> Links:
    p = Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def paper_urls() -> set[str]:
    urls = set()
    for m in FIXTURES.rglob("manifest.json"):
        paper = json.loads(m.read_text()).get("paper") or {}
        if paper.get("url"):
            urls.add(paper["url"])
    return urls


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    index = build_site(FIXTURES, out)
    assert index == out / "index.html"
    return out


@pytest.fixture(scope="module")
def xss_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("xss") / "results"
    shutil.copytree(FIXTURES, root)
    path = root / DS / "jpeg" / "manifest.json"
    m = json.loads(path.read_text())
    m.update(name=XSS_SCRIPT, authors=[XSS_IMG, "A. \"Quote\" O'Brien"], notes=XSS_IMG + "\nline two",
             paper={"title": XSS_IMG, "url": "javascript:alert(1)", "venue": XSS_SCRIPT, "year": 2018},
             claims=[{"threat": "linf-0.031", "accuracy": 0.75, "source": XSS_SCRIPT, "dataset": None},
                     {"threat": "l2-0.005", "accuracy": 0.5, "source": XSS_IMG, "dataset": XSS_SCRIPT,
                      "same_model": False}])
    path.write_text(json.dumps(m))
    # The detector has no manifest.json: its name comes from the result files.
    for f in (root / DS / "detector").rglob("*.json"):
        rec = json.loads(f.read_text())
        rec["defense"]["name"] = XSS_IMG
        f.write_text(json.dumps(rec))
    # Error messages and tracebacks come from submitted code; so may an override reason.
    for f in [root / DS / "fragile" / "l2-0.005" / "pgd-bpda-eot.json",
              *(root / DS / "unbuildable" / "linf-0.031").glob("*.json")]:
        rec = json.loads(f.read_text())
        rec["error"].update(message=f"RuntimeError: {XSS_SCRIPT}", traceback=f"Traceback\n{XSS_IMG}\n")
        f.write_text(json.dumps(rec))
    f = root / DS / "jpeg" / "linf-0.031" / "pgd-eot.json"
    rec = json.loads(f.read_text())
    rec["attack"]["override_reason"] = XSS_IMG + " slow"
    f.write_text(json.dumps(rec))
    out = root.parent / "site"
    build_site(root, out)
    return out


def test_pages_and_assets_exist(site):
    for rel in ("index.html", "claims.html", "methodology.html", "leaderboard.csv", "leaderboard.json",
                "static/style.css", "static/table.js"):
        assert (site / rel).is_file(), rel
    for defense in ("undefended", "jpeg", "smoothing", "madry", "detector", "fragile", "unbuildable"):
        assert (site / "defenses" / DS / f"{defense}.html").is_file()
    assert (site / "defenses" / "cifar10" / "cifar-undefended.html").is_file()
    for svg in ("madry/eps-linf.svg", "madry/eps-l2.svg", "smoothing/certified-randomized-smoothing.svg"):
        text = (site / "plots" / DS / svg).read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text
    # Every result file and manifest is copied so the links work from file://.
    copied = {p.relative_to(site / "results") for p in (site / "results").rglob("*.json")}
    assert copied == {p.relative_to(FIXTURES) for p in FIXTURES.rglob("*.json")}


def test_no_remote_assets_and_every_local_link_resolves(site):
    papers = paper_urls()
    pages = list(site.rglob("*.html"))
    assert len(pages) == 11
    for page in pages:
        for tag, attr, value in parse(page).refs:
            if value.startswith(("http://", "https://", "//")):
                assert (tag, attr) == ("a", "href") and value in papers, (page, tag, value)
                continue
            assert ":" not in value.split("/")[0], (page, value)  # no other scheme
            target = (page.parent / value.split("#")[0]).resolve()
            assert value.startswith("#") or target.is_file(), (page, value)
    css = (site / "static" / "style.css").read_text() + (site / "static" / "table.js").read_text()
    assert "http" not in css and "@import" not in css and "url(" not in css


def test_index_is_ranked_without_javascript(site):
    html = (site / "index.html").read_text()
    section = html.split(f'id="{DS}-linf-0.031"')[1].split("</table>")[0]
    order = [section.index(f'href="defenses/{DS}/{d}.html"') for d in
             ("madry", "detector", "smoothing", "jpeg", "undefended")]
    assert order == sorted(order)
    assert 'scope="col"' in html and 'scope="row"' in html
    assert "not reproduced" in section and "zero-gradients" in section
    assert 'title="zero-gradients: threshold = 0.5, zero_grad_fraction = 0.9"' in section
    assert "Sort key" in html


def test_defense_page_shows_details(site):
    html = (site / "defenses" / DS / "jpeg.html").read_text()
    assert "JPEG on CPU is slow" in html  # override reason
    assert "pgd-bpda-eot" in html.split("Missing attacks")[-1].split("</p>")[0]  # at l2
    assert "../../results/mnist-embedded/jpeg/linf-0.031/pgd.json" in html
    assert "../../plots/mnist-embedded/jpeg/eps-linf.svg" not in html  # one ε only: no curve
    smoothing = (site / "defenses" / DS / "smoothing.html").read_text()
    assert "R = 10" in smoothing and "Worst of R" in smoothing
    assert "certified-randomized-smoothing.svg" in smoothing
    detector = (site / "defenses" / DS / "detector.html").read_text()
    assert "Adversarial rejected" in detector and "30.0%" in detector
    methodology = (site / "methodology.html").read_text()
    assert "Clopper" in methodology and "0.14" in methodology and "undeclared-randomness" in methodology


def test_downloads(site):
    csv = pd.read_csv(site / "leaderboard.csv")
    data = json.loads((site / "leaderboard.json").read_text())
    assert len(csv) == len(data) == 16
    top = [r for r in data if r["dataset"] == DS and r["threat"] == "linf-0.031" and r["rank"] == 1]
    assert [r["defense"] for r in top] == ["madry"]
    assert top[0]["robust_accuracy"] == pytest.approx(0.8)
    # Every figure with its exact 95% interval, in both downloads.
    low, high = clopper_pearson(8, 10)
    assert (top[0]["robust_accuracy_ci_low"], top[0]["robust_accuracy_ci_high"]) == pytest.approx((low, high))
    assert top[0]["clean_accuracy_ci_low"] == pytest.approx(clopper_pearson(10, 10)[0])
    assert top[0]["naive_attack"] == "pgd" and top[0]["overlaps_next"] is True
    row = csv[(csv.dataset == DS) & (csv.threat == "linf-0.031") & (csv.defense == "madry")].iloc[0]
    assert (row.robust_accuracy_ci_low, row.robust_accuracy_ci_high) == pytest.approx((low, high))
    cert = csv[(csv.dataset == DS) & (csv.threat == "l2-0.005") & (csv.defense == "smoothing")].iloc[0]
    assert (cert.certified_accuracy_ci_low, cert.certified_accuracy_ci_high) == pytest.approx(clopper_pearson(5, 10))
    assert set(csv.columns) >= {"naive_accuracy_ci_low", "naive_accuracy_ci_high", "claim_verdict", "overlaps_next",
                                "robust_accuracy_worst_of_draws_ci_low", "claim_measured_ci_high"}
    assert set(csv.columns) >= {"rank", "defense", "clean_accuracy", "robust_accuracy", "claim_gap",
                                "certified_accuracy", "flags_raised", "missing_attacks", "failed_attacks",
                                "incomplete", "build_error", "job_errors", "reduced_budget", "profile"}
    fragile = [r for r in data if r["defense"] == "fragile" and r["threat"] == "linf-0.031"]
    assert fragile[0]["incomplete"] and fragile[0]["rank"] is None
    assert fragile[0]["failed_attacks"] == "pgd-bpda;pgd-eot"


def test_submitter_strings_are_escaped(xss_site):
    for page in xss_site.rglob("*.html"):
        html = page.read_text()
        assert XSS_SCRIPT not in html and XSS_IMG not in html, page
        assert "javascript:" not in html, page
        for tag, attrs in parse(page).tags:
            assert not any(a.startswith("on") for a in attrs), (page, tag, attrs)
            assert tag != "script" or attrs.get("src", "").endswith("static/table.js")
    index = (xss_site / "index.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert "&lt;img src=x onerror=alert(1)&gt;" in index
    page = (xss_site / "defenses" / DS / "jpeg.html").read_text()
    assert "O&#39;Brien" in page and "&#34;Quote&#34;" in page
    assert "&lt;img src=x onerror=alert(1)&gt; slow" in page  # override reason
    assert "context: claim on &lt;script&gt;alert(1)&lt;/script&gt;" in index  # a claim's dataset
    fragile = (xss_site / "defenses" / DS / "fragile.html").read_text()
    assert "RuntimeError: &lt;script&gt;alert(1)&lt;/script&gt;" in fragile  # error message and traceback
    assert "Traceback\n&lt;img src=x onerror=alert(1)&gt;" in fragile
    assert ("build failed (exception): RuntimeError: &lt;script&gt;alert(1)&lt;/script&gt; "
            "(recorded at 5 planned jobs)") in index


def test_csv_guards_against_spreadsheet_formulas(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(FIXTURES, root)
    path = root / DS / "jpeg" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "name": "=HYPERLINK(\"x\")"}))
    build_site(root, tmp_path / "site")
    names = pd.read_csv(tmp_path / "site" / "leaderboard.csv")["name"]
    assert "'=HYPERLINK(\"x\")" in set(names)


def test_only_http_urls_become_links():
    assert http_url("https://arxiv.org/abs/1") == "https://arxiv.org/abs/1"
    for bad in ("javascript:alert(1)", "data:text/html,x", "file:///etc/passwd", "//evil", "", None, 3):
        assert http_url(bad) is None


def test_rebuild_is_deterministic_and_removes_stale_files(site, tmp_path):
    before = {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}
    (site / "defenses" / DS / "stale.html").write_text("old")
    build_site(FIXTURES, site)
    after = {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}
    assert after == before


def test_unreadable_result_fails_the_build(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(FIXTURES, root)
    bad = root / DS / "madry" / "l2-0.005" / "fgsm.json"
    bad.write_text("")
    with pytest.raises(ResultError, match=str(bad)):
        build_site(root, tmp_path / "site")


def _row(html: str, section: str, defense: str) -> str:
    """The index table row of ``defense`` in the table ``section``."""
    table = html.split(f'id="{section}"')[1].split("</table>")[0]
    return next(r for r in table.split("<tr>") if f'href="defenses/{DS}/{defense}.html"' in r)


def test_index_shows_failed_jobs(site):
    html = (site / "index.html").read_text()
    fragile = _row(html, f"{DS}-linf-0.031", "fragile")
    assert ">incomplete<" in fragile and "2 failed: pgd-bpda, pgd-eot" in fragile and "unranked" in fragile
    assert "60.0%" in fragile  # the worst case over the attacks that finished, marked incomplete
    # The errors badge is text, with every failed job of the defense in its tooltip.
    badge = fragile.split('class="badge bad errors" title="')[1].split('"')[0]
    assert fragile.split(badge)[1].startswith('">⚠ errors (5)<')
    assert "linf-0.031/pgd-bpda: timeout: no result within the wall-clock limit of 900 s" in badge
    assert "certify/randomized-smoothing: timeout" in badge and "linf-0.031/flags: crash" in badge
    assert "flags job failed" in fragile
    unbuildable = _row(html, f"{DS}-linf-0.031", "unbuildable")
    assert "build failed" in unbuildable and "could not be built: exception: ModuleNotFoundError" in unbuildable
    assert "%" not in unbuildable.split('class="num strong"')[1].split("</td>")[0]  # the error, not numbers
    assert "recorded at 10 planned jobs" in unbuildable and "⚠ errors (10)" in unbuildable
    # Unranked rows come after the ranked ones.
    table = html.split(f'id="{DS}-linf-0.031"')[1]
    assert table.index("defenses/mnist-embedded/undefended.html") < table.index("defenses/mnist-embedded/fragile.html")
    assert "errors" not in _row(html, f"{DS}-linf-0.031", "madry")


def test_index_shows_reduced_budget_and_profile(site):
    html = (site / "index.html").read_text()
    jpeg = _row(html, f"{DS}-l2-0.005", "jpeg")
    assert ">reduced budget<" in jpeg and "pgd-eot (eot 10 → 4): JPEG on CPU is slow" in jpeg
    assert "quick profile, 10 examples" in jpeg
    assert "reduced budget" not in _row(html, f"{DS}-l2-0.005", "madry")


def test_defense_page_shows_failed_attacks_in_place(site):
    html = (site / "defenses" / DS / "fragile.html").read_text()
    linf = html.split('<section id="linf-0.031">')[1].split("</section>")[0]
    row = next(r for r in linf.split("<tr") if "<code>pgd-bpda</code>" in r)
    assert "error: timeout" in row and "no result within the wall-clock limit of 900 s" in row and "15.0 min" in row
    assert "error: memory" in linf and "Failed attacks" in linf
    assert "pgd-bpda" not in linf.split("Missing attacks")[1].split("</p>")[0]  # failed, not missing
    assert "over the 3 attacks above that finished" in linf and ">incomplete<" in linf
    assert "The flags job failed" in linf and "worker died with signal SIGSEGV" in linf
    l2 = html.split('<section id="l2-0.005">')[1].split("</section>")[0]
    assert "shape &lt;1, 784&gt; &amp; &#39;x&#39; mismatch" in l2 and "<summary>traceback</summary>" in l2
    assert "Certification (<code>randomized-smoothing</code>) failed" in html
    assert "quick profile, 10 examples" in html and "⚠ errors (5)" in html
    built = (site / "defenses" / DS / "unbuildable.html").read_text()
    assert "This defense could not be built" in built and "No module named &#39;missing_dep&#39;" in built
    summary = built.split("<h2>Summary</h2>")[1].split("<tbody>")[1].split("</tbody>")[0]
    assert summary.count("build failed") == 2 and "%" not in summary.replace("90.0%", "")  # only the claim
    jpeg = (site / "defenses" / DS / "jpeg.html").read_text()
    assert "eot 10 → 4: JPEG on CPU is slow" in jpeg and ">reduced budget<" in jpeg
    claims = (site / "claims.html").read_text()
    assert "build failed" in claims and ">incomplete<" in claims


# -- intervals, overlaps, claims, naive baseline, abstention ----------------------------------------

def _generator():
    spec = importlib.util.spec_from_file_location("make_leaderboard_results",
                                                  FIXTURES.parent / "make_leaderboard_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_index_shows_intervals_and_overlap_markers(site):
    html = (site / "index.html").read_text()
    madry = _row(html, f"{DS}-linf-0.031", "madry")
    interval = ci(clopper_pearson(8, 10))
    assert interval == "[44.4, 97.5]" and f'>{interval}</span>' in madry
    assert 'title="95% interval (exact Clopper–Pearson): 44.4% to 97.5%"' in madry
    assert ci(clopper_pearson(10, 10)) in madry  # clean
    # Ten examples per defense: madry's interval overlaps the detector's, so the order is marked.
    assert 'class="overlap"' in madry and OVERLAP_TOOLTIP in madry and "≈" in madry
    assert 'class="overlap"' not in _row(html, f"{DS}-linf-0.031", "undefended")  # last ranked row
    assert 'class="overlap"' not in _row(html, f"{DS}-linf-0.031", "fragile")  # unranked
    smoothing = _row(html, f"{DS}-l2-0.005", "smoothing")
    assert ci(clopper_pearson(5, 10)) in smoothing  # certified accuracy's interval


def test_claims_are_judged_on_their_own_terms_and_the_rule_is_stated(site):
    html = (site / "index.html").read_text()
    jpeg = _row(html, f"{DS}-linf-0.031", "jpeg")
    assert ">not reproduced<" in jpeg and "above the upper end of the measured worst case" in jpeg
    madry = _row(html, f"{DS}-linf-0.031", "madry")
    assert ">consistent<" in madry and "measured at linf-0.3: 90.0%" in madry and ci(clopper_pearson(9, 10)) in madry
    smoothing = _row(html, f"{DS}-l2-0.005", "smoothing")
    assert "context: claim on cifar10" in smoothing
    assert ">consistent<" not in smoothing and ">not reproduced<" not in smoothing
    for page in ("index.html", "claims.html", "methodology.html"):
        text = (site / page).read_text()
        assert str(escape(CLAIM_RULE)) in text, page
        assert "percentage points" not in text and "gap above" not in text, page
    claims = (site / "claims.html").read_text()
    assert "context: claim on cifar10" in claims and ">not reproduced<" in claims


def test_methodology_states_intervals_sweeps_naive_and_abstention(site):
    html = (site / "methodology.html").read_text()
    assert "Every ε of a sweep is a full threat model" in html and "strongest attack at the fixed threat" not in html
    assert "Clopper–Pearson" in html and OVERLAP_TOOLTIP.lower() in html
    assert "<strong>naive baseline</strong> against a detector" in html  # pgd-blind, from the catalog's traits
    assert "abstains" in html and "robust_accuracy_reject_as_win" in html


def test_defense_page_intervals_and_plots(site):
    jpeg = (site / "defenses" / DS / "jpeg.html").read_text()
    linf = jpeg.split('<section id="linf-0.031">')[1].split("</section>")[0]
    row = next(r for r in linf.split("<tr") if "<code>pgd-bpda</code>" in r)
    assert ci(clopper_pearson(2, 10)) in row  # per attack
    naive = next(r for r in linf.split("<tr") if "<code>pgd</code>" in r)
    assert ">naive baseline<" in naive and ">naive baseline<" not in row
    assert ci(clopper_pearson(1, 10)) in linf.split("<tfoot>")[1]  # worst-case footer
    madry = (site / "defenses" / DS / "madry.html").read_text()
    data = madry.split("<h2>Accuracy versus ε</h2>")[1].split("<h2>")[0]
    assert ci(clopper_pearson(9, 10)) in data and "<th scope=\"col\" class=\"num\">naive</th>" in data
    svg = (site / "plots" / DS / "madry" / "eps-linf.svg").read_text()
    assert "band: 95% interval" in svg and "bars: 95% interval" in svg
    smoothing = (site / "defenses" / DS / "smoothing.html").read_text()
    assert ci(clopper_pearson(5, 10)) in smoothing.split("<h2>Certification</h2>")[1]
    cert = (site / "plots" / DS / "smoothing" / "certified-randomized-smoothing.svg").read_text()
    assert "certified accuracy (band: 95% interval)" in cert


@pytest.fixture(scope="module")
def schema2_site(tmp_path_factory) -> Path:
    """The fixtures plus schema-2 records: a detector with a rejection-blind baseline, an
    abstaining smoothed classifier, a claim about another model and far-apart rows."""
    gen = _generator()
    root = tmp_path_factory.mktemp("schema2") / "results"
    shutil.copytree(FIXTURES, root)
    ds, n = "cifar10", 10
    clean = [1.0] * n
    naive, blind = {"naive_baseline": True}, {"naive_baseline": True, "needs_rejection": True}
    det = {"rejects": True, "abstains": False, "randomized": False, "differentiable": True}
    ones, zeros, win8, err5 = [1.0] * n, [0.0] * n, [1.0] * 8 + [0.0] * 2, [1.0] * 5 + [0.0] * 5
    rejected = [0.0] * 5 + [1.0] * 3 + [0.0] * 2
    # The detector survives everything when a rejection is a win (1.0), half when an error.
    gen.manifest(root, ds, {"id": "det2", "name": "Schema-2 detector"})
    for a, traits in (("pgd", naive), ("pgd-blind", blind), ("fgsm", {})):
        gen.attack(root, ds, "det2", "Schema-2 detector", "linf-0.031", a, clean, ones, traits=traits, facts=det,
                   readings=(ones, err5), adv_rej=rejected)
    smooth = {**det, "abstains": True, "randomized": True}
    gen.manifest(root, ds, {"id": "abstainer", "name": "Schema-2 smoothed classifier", "claims": [
        {"threat": "linf-0.031", "accuracy": 0.99, "source": "Table 9", "dataset": None, "same_model": False}]})
    # The smoothed classifier: 0.0 when an abstention is an error (its headline), 0.8 as a win.
    for a, traits in (("pgd", naive), ("fgsm", {})):
        gen.attack(root, ds, "abstainer", "Schema-2 smoothed classifier", "linf-0.031", a, clean, zeros,
                   traits=traits, facts=smooth, readings=(win8, zeros), adv_rej=rejected)
    out = root.parent / "site"
    build_site(root, out)
    return out


def test_schema2_detector_naive_baseline_and_other_reading(schema2_site):
    html = (schema2_site / "defenses" / "cifar10" / "det2.html").read_text()
    linf = html.split('<section id="linf-0.031">')[1].split("</section>")[0]
    blind = next(r for r in linf.split("<tr") if "<code>pgd-blind</code>" in r)
    assert ">naive baseline<" in blind and "blind to the reject option" in blind
    assert ">naive baseline<" not in next(r for r in linf.split("<tr") if "<code>pgd</code>" in r)
    assert ">Rejection as error<" in linf and ci(clopper_pearson(5, 10)) in linf.split("<tfoot>")[1]
    assert "counts it as a defense win" in linf
    data = json.loads((schema2_site / "leaderboard.json").read_text())
    row = next(r for r in data if r["defense"] == "det2" and r["threat"] == "linf-0.031")
    assert row["naive_attack"] == "pgd-blind" and row["naive_blind"] is True


def test_schema2_abstaining_defense_and_claim_about_another_model(schema2_site):
    html = (schema2_site / "defenses" / "cifar10" / "abstainer.html").read_text()
    linf = html.split('<section id="linf-0.031">')[1].split("</section>")[0]
    assert ">Rejection as win<" in linf and "counts an abstention on an adversarial input as not robust" in linf
    assert ci(clopper_pearson(8, 10)) in linf.split("<tfoot>")[1]  # the other figure: abstention as a win
    index = (schema2_site / "index.html").read_text()
    table = index.split('id="cifar10-linf-0.031"')[1].split("</table>")[0]
    row = next(r for r in table.split("<tr>") if 'href="defenses/cifar10/abstainer.html"' in r)
    assert "context: another model" in row and ">not reproduced<" not in row and ">consistent<" not in row
    # det2's 1.0 [69.2, 100] and the ResNet's 0.1 [0.3, 44.5] are far apart: no marker; the
    # ResNet's and the abstainer's 0.0 [0, 30.8] overlap: marked.
    data = json.loads((schema2_site / "leaderboard.json").read_text())
    rows = [r for r in data if r["dataset"] == "cifar10" and r["threat"] == "linf-0.031"]
    assert [r["defense"] for r in rows] == ["det2", "cifar-undefended", "abstainer"]
    assert [r["overlaps_next"] for r in rows] == [False, True, False]
    assert 'class="overlap"' not in next(r for r in table.split("<tr>") if 'href="defenses/cifar10/det2.html"' in r)
    assert 'class="overlap"' in next(r for r in table.split("<tr>")
                                     if 'href="defenses/cifar10/cifar-undefended.html"' in r)


# -- values, not only structure ------------------------------------------------------------------

#: Raw JSON tokens the site used to coerce or drop: "1" showed 100%, NaN dropped the row,
#: 5.0 showed 500%, −3 −300%, Infinity a blank, true 100%.
HOSTILE_TOKENS = {"string": '"1"', "nan": "NaN", "five": "5.0", "negative": "-3", "infinity": "Infinity",
                  "bool": "true"}


def _plant(root: Path, rel: str, field: list, token: str) -> Path:
    """Put the raw JSON ``token`` at ``field`` (a key path) of the result file ``rel``."""
    path = root / rel
    rec = json.loads(path.read_text())
    target = rec
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = "@@hostile@@"
    path.write_text(json.dumps(rec).replace('"@@hostile@@"', token))
    return path


@pytest.mark.parametrize("token", list(HOSTILE_TOKENS.values()), ids=list(HOSTILE_TOKENS))
@pytest.mark.parametrize("rel, field, shown", [
    (f"{DS}/jpeg/linf-0.031/pgd.json", ["summary", "robust_accuracy"], "summary.robust_accuracy"),
    (f"{DS}/jpeg/linf-0.031/pgd.json", ["per_example", "robust_correct", 3], "per_example.robust_correct[3]"),
    (f"{DS}/jpeg/linf-0.031/pgd.json", ["per_example", "adv_rejected", 2], "per_example.adv_rejected[2]"),
    (f"{DS}/smoothing/certify/randomized-smoothing.json", ["summary", "certified_accuracy", "l2-0.005"],
     'summary.certified_accuracy["l2-0.005"]'),
    (f"{DS}/jpeg/manifest.json", ["claims", 0, "accuracy"], "claims[0].accuracy"),
], ids=["summary", "per-example", "per-example-rate", "certified", "manifest-claim"])
def test_gauntlet_leaderboard_rejects_a_hostile_value_naming_file_and_field(tmp_path, capsys, rel, field, shown,
                                                                               token):
    from gauntlet.benchmark.cli import main

    root = tmp_path / "results"
    shutil.copytree(FIXTURES, root)
    path = _plant(root, rel, field, token)
    argv = ["leaderboard", "--results", str(root), "--site", str(tmp_path / "site"),
            "--submissions", str(FIXTURES.parent / "submissions")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {path}: {shown}: "), err
    assert not (tmp_path / "site" / "index.html").exists()


def test_old_schema_results_still_render(tmp_path):
    """The frozen schema-1 files build a site with the numbers their arrays give."""
    from gauntlet.benchmark.catalog import fallback_catalog

    old = FIXTURES.parent / "results-v1"  # predates attacks.json: the CLI supplies the registry's
    build_site(old, tmp_path / "site", catalog=fallback_catalog(old))
    data = json.loads((tmp_path / "site" / "leaderboard.json").read_text())
    jpeg = next(r for r in data if (r["defense"], r["threat"]) == ("jpeg", "linf-0.031"))
    assert jpeg["robust_accuracy"] == pytest.approx(0.1) and jpeg["naive_accuracy"] == pytest.approx(0.8)
    assert (tmp_path / "site" / "defenses" / DS / "smoothing.html").is_file()
