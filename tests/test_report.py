"""The README's Table 1 (benchmark/report.py) from the leaderboard fixtures."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from gauntlet.benchmark.intervals import clopper_pearson
from gauntlet.benchmark.report import END, START, ReportError, add_parser, cmd_report, render_table, update_readme
from gauntlet.benchmark.results import ResultError

FIXTURES = Path(__file__).parent / "fixtures" / "results"
DS = "mnist-embedded"


def rows(markdown: str) -> dict[str, list[str]]:
    """Table rows by defense name (first cell), split on unescaped pipes."""
    out = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip().replace("\0", "|") for c in
                     line.replace("\\|", "\0").strip().strip("|").split("|")]
            out[cells[0]] = cells
    return out


def sections(markdown: str) -> dict[str, str]:
    """The text of each dataset's table, by the dataset named in its bold heading."""
    out: dict[str, str] = {}
    current = None
    for line in markdown.splitlines():
        if line.startswith("**"):
            current = line[2:line.index("**", 2)]
            out[current] = ""
        if current is not None:
            out[current] += line + "\n"
    return out


@pytest.fixture(scope="module")
def table() -> str:
    return render_table(FIXTURES)


def _ci(k: int, n: int = 10) -> str:
    low, high = clopper_pearson(k, n)
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


def test_table_from_fixtures(table):
    assert list(sections(table)) == [DS, "cifar10"]  # one table per dataset, in registry order
    r = rows(sections(table)[DS])
    header = r["Defense"]
    assert header[:4] == ["Defense", "Dataset", "Examples", "Clean [95% interval]"]
    # Fixed threats, then the sweep points present in the results (l2-0.05: madry's sweep).
    assert [h.split(":")[0] for h in header[4:]] == ["ℓ∞ ε = 0.031", "ℓ2 ε = 0.005 (RMS)", "ℓ∞ ε = 0.1",
                                                     "ℓ∞ ε = 0.3", "ℓ2 ε = 0.05 (RMS)"]
    assert all("naive → worst case [95% interval] (strongest)" in h for h in header[4:])
    jpeg = r["JPEG compression"]
    assert jpeg[1:4] == [DS, "10", f"100.0% {_ci(10)}"]
    # Naive pgd leaves 80%; the per-example worst case 10% [0.3, 44.5], below its strongest single attack.
    assert jpeg[4] == f"80.0% → **10.0%** {_ci(1)} (pgd-bpda) †" and _ci(1) == "[0.3, 44.5]"
    assert jpeg[5] == f"80.0% → **40.0%** {_ci(4)} (pgd-bpda) †"
    assert jpeg[6:] == ["–", "–", "–"]
    undefended = r["Undefended CNN"]
    assert undefended[4:] == [f"10.0% → **0.0%** {_ci(0)} (pgd-bpda-eot)", f"40.0% → **30.0%** {_ci(3)} (pgd)",
                              f"0.0% → **0.0%** {_ci(0)} (pgd)", f"0.0% → **0.0%** {_ci(0)} (pgd)", "–"]
    madry = r["Adversarial training \\(PGD\\)"]
    assert madry[6] == f"90.0% → **90.0%** {_ci(9)} (pgd)" and madry[8] == f"20.0% → **20.0%** {_ci(2)} (pgd)"
    cifar = rows(sections(table)["cifar10"])
    assert cifar["Undefended ResNet"][1:5] == ["cifar10", "10", f"90.0% {_ci(9)}", f"10.0% → **10.0%** {_ci(1)} (pgd)"]
    assert len(cifar["Defense"]) == len(cifar["Undefended ResNet"])  # its own columns: the sweeps it has
    # Rows follow the leaderboard's ranking at linf-0.031 within each dataset.
    names = [n for n in r if n != "Defense"]
    assert names.index("Adversarial training \\(PGD\\)") < names.index("JPEG compression") < names.index(
        "Undefended CNN")
    assert f"**{DS}** · profile: quick profile, 10 examples." in table
    # The footnote: every ε runs the whole suite, and what the bracket is.
    assert "Sweep points run only" not in table and "every applicable attack runs there" in table
    assert "exact 95% interval of the worst case" in table and "`pgd` or `pgd-blind`" in table


def test_failed_jobs_are_marked_not_hidden(table):
    r = rows(table)
    fragile = r["Fragile preprocessing"]
    assert fragile[4] == f"70.0% → **60.0%** {_ci(6)} (pgd-bpda-eot) ⚠ incomplete: pgd-bpda, pgd-eot failed"
    assert fragile[5].endswith("⚠ incomplete: pgd-bpda-eot failed")
    built = r["Defense that cannot be built"]
    assert built[2:4] == ["–", "–"] and set(built[4:]) == {"build failed: exception"}
    assert "upper bound" in table and "could not be built" in table and "reduced budget" in table


def test_naive_of_a_detector_is_its_rejection_blind_record_by_trait(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", FIXTURES.parent / "make_leaderboard_results.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    root = tmp_path / "results"
    facts = {"rejects": True, "abstains": False, "randomized": False, "differentiable": True}
    clean = [1.0] * 10
    for attack, traits, survive in (("pgd", {"naive_baseline": True}, 7),
                                    ("pgd-blind", {"naive_baseline": True, "needs_rejection": True}, 9),
                                    ("pgd-bpda", {"adaptive": True}, 4)):
        gen.attack(root, DS, "det", "Detector", "linf-0.031", attack, clean, [1.0] * survive + [0.0] * (10 - survive),
                   traits=traits, facts=facts)
    (_, row) = rows(render_table(root)).values()
    assert row[4] == f"90.0% ‡ → **40.0%** {_ci(4)} (pgd-bpda)"
    assert "‡ the defense rejects inputs: naive = the rejection-blind baseline" in render_table(root)


def test_sweep_columns_only_when_present_and_submitter_strings_escaped(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(FIXTURES / DS / "jpeg", root / DS / "jpeg")
    facts = root / DS / "jpeg" / "manifest.json"
    evil = "<img src=x onerror=alert(1)> | [click](https://evil.example) *bold*\n# heading"
    facts.write_text(json.dumps({**json.loads(facts.read_text()), "name": evil}))
    text = render_table(root)
    assert "<img" not in text and "\n# heading" not in text and "[click](" not in text
    (header, row) = [cells for name, cells in rows(text).items()]
    assert len(header) == len(row) == 6  # no sweep columns; the escaped | splits nothing
    assert row[0].startswith("&lt;img src=x onerror=alert\\(1\\)&gt; | \\[click\\]") and "\\*bold\\*" in row[0]


def test_update_readme_replaces_only_between_markers(tmp_path, table):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nBefore.\n\n{START}\nold table\n{END}\n\nAfter.\n", encoding="utf-8")
    assert update_readme(readme, FIXTURES) is True
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\nBefore.\n\n" + START + "\n") and text.endswith(END + "\n\nAfter.\n")
    assert "old table" not in text and table in text
    assert update_readme(readme, FIXTURES) is False  # idempotent
    assert readme.read_text(encoding="utf-8") == text


@pytest.mark.parametrize("body", ["no markers here\n", f"{END}\n{START}\n", f"{START}\n{START}\n{END}\n"])
def test_update_readme_needs_markers_and_names_the_file(tmp_path, body):
    readme = tmp_path / "README.md"
    readme.write_text(body, encoding="utf-8")
    with pytest.raises(ReportError, match=str(readme)):
        update_readme(readme, FIXTURES)
    assert readme.read_text(encoding="utf-8") == body


def test_unreadable_result_raises_naming_the_file(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(FIXTURES / DS / "jpeg", root / DS / "jpeg")
    bad = root / DS / "jpeg" / "linf-0.031" / "pgd.json"
    bad.write_text("{")
    with pytest.raises(ResultError, match=str(bad)):
        render_table(root)


@pytest.mark.parametrize("token", ['"1"', "NaN", "5.0", "-3", "Infinity"])
def test_cmd_report_rejects_a_hostile_accuracy_naming_file_and_field(tmp_path, capsys, token):
    """A string, NaN, out-of-range or infinite accuracy is an error, not a 100%, 500% or blank cell."""
    root = tmp_path / "results"
    shutil.copytree(FIXTURES / DS / "jpeg", root / DS / "jpeg")
    bad = root / DS / "jpeg" / "linf-0.031" / "pgd.json"
    rec = json.loads(bad.read_text())
    rec["per_example"]["clean_correct"][0] = "@@"
    bad.write_text(json.dumps(rec).replace('"@@"', token))
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n", encoding="utf-8")
    assert cmd_report(argparse.Namespace(results=root, readme=readme)) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: per_example.clean_correct[0]: ")
    assert readme.read_text(encoding="utf-8") == f"{START}\n{END}\n"


def test_cmd_report(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="gauntlet")
    add_parser(parser.add_subparsers(dest="command"))
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n", encoding="utf-8")
    args = parser.parse_args(["report", "--results", str(FIXTURES), "--readme", str(readme)])
    assert cmd_report(args) == 0 and "updated" in capsys.readouterr().out
    assert cmd_report(args) == 0 and "already up to date" in capsys.readouterr().out
    assert cmd_report(argparse.Namespace(results=tmp_path / "none", readme=readme)) == 2
    assert "no result folder" in capsys.readouterr().err
    readme.write_text("no markers\n", encoding="utf-8")
    assert cmd_report(args) == 2 and str(readme) in capsys.readouterr().err
    assert cmd_report(argparse.Namespace(results=FIXTURES, readme=tmp_path / "missing.md")) == 2
    assert parser.parse_args(["report"]).readme == Path("README.md")
