"""The execution engine: import directions, runs that never lose or corrupt a result, and
one run per results folder. (The Ray executor: tests/test_ray_executor.py.)"""
from __future__ import annotations

import ast
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gauntlet.benchmark.isolation import descendants
from gauntlet.benchmark.results import iter_results, read_result
from gauntlet.benchmark.runner import RunConfig, run

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
#: Folders of the repository → their installed names (pyproject.toml's package-dir).
PACKAGES = {"benchmark": "gauntlet.benchmark", "attacks": "gauntlet.attacks", "defenses": "gauntlet.defenses",
            "leaderboard": "gauntlet.leaderboard", "gauntlet": "gauntlet"}
DS = "mnist-embedded"


# -- import directions -------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    """Project modules imported anywhere in ``path`` (functions too), except under
    ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING") for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out.update(n for n in names if n.split(".")[0] == "gauntlet")
    return out


def _graph() -> dict[str, set[str]]:
    modules = {".".join((name, *p.relative_to(ROOT / pkg).with_suffix("").parts)): p
               for pkg, name in PACKAGES.items() for p in (ROOT / pkg).rglob("*.py")}
    modules = {m.removesuffix(".__init__"): p for m, p in modules.items()}
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_code_has_no_import_cycle():
    graph = _graph()
    assert len(graph) > 40  # the walk found the code
    assert _cycle(graph) is None, " → ".join(_cycle(graph))


@pytest.mark.parametrize("importer, forbidden", [
    ("gauntlet.leaderboard", ("gauntlet.defenses", "gauntlet.attacks")),  # the site never runs submitted or attack code
    ("gauntlet.defenses", ("gauntlet.leaderboard",)),
    ("gauntlet.attacks", ("gauntlet.leaderboard",)),
    ("gauntlet.benchmark.plan", ("gauntlet.defenses",)),  # planning is pure
    ("gauntlet.benchmark.runner", ("gauntlet.defenses", "gauntlet.benchmark.jobs")),
    # the Python API sits on top: no harness module imports it
    ("gauntlet.benchmark", ("gauntlet.api",)), ("gauntlet.attacks", ("gauntlet.api",)),
    ("gauntlet.defenses", ("gauntlet.api",)), ("gauntlet.leaderboard", ("gauntlet.api",)),
])
def test_allowed_import_directions(importer, forbidden):
    graph = _graph()
    bad = sorted((m, i) for m, deps in graph.items() if m == importer or m.startswith(importer + ".")
                 for i in deps if any(i == f or i.startswith(f + ".") for f in forbidden))
    assert bad == [], bad


#: Adversarial-training recipes craft their training examples through the attacks'
#: adaptive view (BPDA through the defense's own steps); they import it inside the recipe,
#: so building or scoring a defense never imports attack code.
TRAINING_RECIPES = {"gauntlet.defenses.adversarial", "gauntlet.defenses.cascade"}


def test_defenses_import_no_attack_code():
    graph = _graph()
    bad = sorted((m, i) for m, deps in graph.items() if m.startswith("gauntlet.defenses.") and m not in TRAINING_RECIPES
                 for i in deps if i.startswith("gauntlet.attacks"))
    assert bad == [], bad
    for m in TRAINING_RECIPES:  # only inside functions
        tree = ast.parse((ROOT / (m.removeprefix("gauntlet.").replace(".", "/") + ".py")).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not [ast.unparse(n) for n in top if "attacks" in ast.unparse(n)], m


def test_the_orchestrator_reaches_the_jobs_only_by_name():
    """The orchestrator side (runner, plan, executors) never imports the job code: the
    executors call ``gauntlet.benchmark.worker:execute`` by name in the worker."""
    graph = _graph()
    for m in ("gauntlet.benchmark.runner", "gauntlet.benchmark.plan", "gauntlet.benchmark.executors", "gauntlet.benchmark.ray_executor"):
        assert "gauntlet.benchmark.jobs" not in graph[m], (m, graph[m])


# -- runs that never lose or corrupt a result ------------------------------------------------

@pytest.fixture()
def subs(tmp_path):
    out = tmp_path / "submissions"
    shutil.copytree(FIXTURES / "submissions" / "dummy-linear", out / "dummy-linear")
    shutil.copytree(FIXTURES / "hostile" / "hostile-hang", out / "hostile-hang",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return out


def _cfg(subs: Path, results: Path, **kw) -> RunConfig:
    base = dict(submissions_dir=subs, defenses=("dummy-linear",), attacks=("fgsm", "pgd-bpda"),
                threats=("linf-0.1",), n_examples=10, results_dir=results, sweep=False, certify=False)
    base.update(kw)
    return RunConfig(**base)


def _files(results: Path) -> dict[str, dict]:
    return {str(p.relative_to(results)): r for p, r in iter_results(results)}


def test_a_failing_rerun_never_overwrites_a_valid_result(subs, tmp_path):
    """A transient build failure (here a memory limit below torch's own footprint) used to
    replace every valid file with an error record."""
    results = tmp_path / "results"
    first = run(_cfg(subs, results, isolate=False), progress=False)
    assert first.errors == [] and first.written
    before = {k: v["config_hash"] for k, v in _files(results).items()}
    assert {r["kind"] for r in _files(results).values()} == {"attack", "flags"}
    failing = run(_cfg(subs, results, job_memory_mb=64, workers=1), progress=False)
    assert failing.errors and "cannot build" in failing.errors[0], failing
    # fgsm's file is valid and kept; pgd-bpda (not applicable: no file) gets the build error
    assert failing.error_records == [f"{DS}/dummy-linear/linf-0.1/pgd-bpda"], failing
    after = _files(results)
    assert {k: v["config_hash"] for k, v in after.items() if v["kind"] != "error"} == before


def test_a_successful_run_clears_stale_error_records_of_jobs_that_do_not_apply(subs, tmp_path):
    """A failed build records an error at every planned attack, bpda included; once the
    build works, bpda does not apply to a differentiable model, and its old error record
    must not keep telling the site "build failed"."""
    results = tmp_path / "results"
    failing = run(_cfg(subs, results, job_memory_mb=64, workers=1), progress=False)
    stale = results / DS / "dummy-linear" / "linf-0.1" / "pgd-bpda.json"
    assert read_result(stale)["kind"] == "error" and len(failing.error_records) == 2
    ok = run(_cfg(subs, results, isolate=False), progress=False)
    assert ok.errors == []
    assert not stale.exists()
    assert {r["kind"] for r in _files(results).values()} == {"attack", "flags"}


def _gauntlet(*args: str) -> list[str]:
    return [sys.executable, "-m", "gauntlet.benchmark.cli", *args]


SLOW_STEP = '''
import sys
import time

from gauntlet.defenses.pipeline import Step


class Slow(Step):
    """Identity; at its fourth call (the first query of an attack job, after the build's
    randomness check and clean scores) it says so on stderr (the only way out of its
    sandbox) and then takes ``seconds`` to answer (a long job that finishes)."""

    differentiable = True

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.calls = seconds, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 4:
            print("slow step started", file=sys.stderr, flush=True)
            time.sleep(self.seconds)
        return x
'''


def test_sigkill_of_the_runner_leaves_no_worker_and_no_late_file(subs, tmp_path):
    """The runner is SIGKILLed while its worker (a fork server's child) is in the middle of
    a job that would finish seconds later: every process it started is gone within
    seconds, and no result file appears afterwards (the worker used to finish its job
    and write it)."""
    results, stderr = tmp_path / "results", tmp_path / "stderr.txt"
    slow = subs / "hostile-slow"
    shutil.copytree(subs / "hostile-hang", slow)
    (slow / "slow.py").write_text(SLOW_STEP)
    manifest = (slow / "manifest.yaml").read_text().replace("id: hostile-hang", "id: hostile-slow")
    manifest = manifest.replace('{factory: "hang:Hang", args: {}}',
                                '{factory: "slow:Slow", args: {seconds: 8}}')
    manifest = manifest.replace("hang:Prior", "slow_prior:Prior")
    (slow / "slow_prior.py").write_text((slow / "hang.py").read_text())
    (slow / "hang.py").unlink()
    (slow / "manifest.yaml").write_text(manifest)
    proc = subprocess.Popen(_gauntlet("run", "--submissions", str(subs), "--defense", "hostile-slow",
                                      "--attack", "fgsm", "--threat", "linf-0.1", "--n-examples", "10",
                                      "--no-sweep", "--no-certify", "--no-site", "--quiet",
                                      "--results", str(results)), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=(err := stderr.open("w")))
    err.close()  # the child has its own copy

    def started() -> bool:
        return "slow step started" in stderr.read_text()

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not started() and proc.poll() is None:
            time.sleep(0.1)
        assert started(), "the attack job never started"
        family = descendants(proc.pid)
        assert len(family) >= 2  # the fork server and its worker
        # ... and the worker's sandboxes: bubblewrap and the defense servers inside
        assert any(b"defense_server" in _cmdline(p) for p in family)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    listing = sorted(str(p.relative_to(results)) for p in results.rglob("*"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in family):
        time.sleep(0.1)
    assert [p for p in family if _alive(p)] == []
    time.sleep(9.0)  # past the moment the job would have finished
    assert sorted(str(p.relative_to(results)) for p in results.rglob("*")) == listing


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_second_run_on_the_same_results_folder_exits_2_naming_the_holder(subs, tmp_path):
    from gauntlet.benchmark.lock import results_lock

    results = tmp_path / "results"
    with results_lock(results):
        out = subprocess.run(_gauntlet("run", "--submissions", str(subs), "--defense", "dummy-linear",
                                       "--attack", "fgsm", "--threat", "linf-0.1", "--no-sweep", "--no-site",
                                       "--quiet", "--results", str(results)), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "in use by gauntlet run pid" in out.stderr and "Traceback" not in out.stderr
    assert list((results / DS).rglob("*.json")) == [] if (results / DS).exists() else True
    # released with its holder: the next run takes it
    assert run(_cfg(subs, results, isolate=False, attacks=("fgsm",)), progress=False).errors == []


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    from gauntlet.benchmark.lock import results_lock

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from gauntlet.benchmark.lock import results_lock\n"
        f"with results_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(600)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    holder.stdout.close()
    with results_lock(tmp_path) as path:
        assert f"pid {__import__('os').getpid()}" in path.read_text()


def test_the_plan_is_pure_and_names_inputs_by_run_id():
    """Planning reads manifests and the registry only: no defense module is imported, and
    every input of every spec is another spec's run id."""
    code = ("import sys\nfrom pathlib import Path\nfrom gauntlet.benchmark.registry import manifest_paths, validate\n"
            "from gauntlet.benchmark.plan import plan_run\n"
            "subs, _ = validate(manifest_paths([Path('submissions')]), check_weights=False)\n"
            "plan = plan_run(subs, ['fgsm', 'pgd', 'apgd-ce', 'square'], ['linf-0.031', 'l2-0.005'],\n"
            "                {'linf': (0.0, 0.031, 0.1)}, certify=True)\n"
            "ids = {s.run_id for s in plan}\n"
            "assert all(i in ids for s in plan for i in s.inputs)\n"
            "assert not [m for m in sys.modules if m.startswith('defenses.') or '/submissions/' in str(getattr(sys.modules[m], '__file__', ''))]\n"
            "print(len(plan.specs), len(plan.lanes()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    n_specs, n_lanes = map(int, out.stdout.split())
    assert n_lanes == len([p for p in (ROOT / "submissions").iterdir() if (p / "manifest.yaml").is_file()])
    assert n_specs > n_lanes * 10


def test_results_and_manifest_facts_are_written_by_the_orchestrator_only():
    """No worker-side module writes result files (they return records)."""
    for name in ("jobs", "worker"):
        text = (ROOT / "benchmark" / f"{name}.py").read_text()
        assert "write_result" not in text and "write_text" not in text, name


def test_ray_lanes_are_counted_per_node_and_a_lane_that_fits_nowhere_is_refused():
    """An actor whose memory fits on no node would wait forever: refused up front."""
    from gauntlet.benchmark.ray_executor import lane_slots

    gib = 2**30
    nodes = [{"Alive": True, "Resources": {"GPU": 4, "CPU": 8, "memory": 40 * gib}},  # memory-bound: 2
             {"Alive": True, "Resources": {"GPU": 1, "CPU": 8, "memory": 64 * gib}},  # GPU-bound: 1
             {"Alive": False, "Resources": {"GPU": 8, "memory": 512 * gib}},  # dead: none
             {"Alive": True, "Resources": {"CPU": 16, "memory": 512 * gib}}]  # no GPU: none
    assert lane_slots(nodes, "GPU", 16 * gib, 16384) == 3
    with pytest.raises(ValueError, match=r"--job-memory: no live Ray node has one GPU and 131072 MiB"):
        lane_slots(nodes, "GPU", 128 * gib, 131072)


def test_a_record_computed_by_other_code_is_not_written(subs, tmp_path, monkeypatch):
    """A node on another commit computes with another harness: its records are refused
    (an error record each), never mixed into this run's results."""
    import gauntlet.benchmark.runner as runner

    monkeypatch.setattr(runner, "code_hash", lambda: "0" * 16)  # the driver's checkout differs
    summary = run(_cfg(subs, tmp_path / "results", isolate=False, attacks=("fgsm",)), progress=False)
    assert summary.written == [] and summary.errors
    assert all("the worker ran other code" in e for e in summary.errors), summary.errors
    assert {r["kind"] for r in _files(tmp_path / "results").values()} == {"error"}
