"""Jobs in a child process: hangs, memory hogs, exceptions and crashes become error
outcomes within their limits, and the next job runs in a fresh worker."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gauntlet.benchmark.isolation import JobRunner, WorkerStartError, descendants

JOBS = "tests.fixtures.hostile.jobs"
HOSTILE = Path(__file__).resolve().parent / "fixtures" / "hostile"
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT, MEMORY = 3.0, 400


@pytest.fixture(scope="module")
def runner():
    """A light worker (no torch): starts in a fraction of a second."""
    with JobRunner(TIMEOUT, MEMORY, "cpu", preload=()) as r:
        yield r


def _pid(runner: JobRunner) -> int:
    out = runner.call(f"{JOBS}:pid")
    assert out.ok, out
    return out.value


def test_a_job_returns_its_value_and_the_worker_is_reused(runner):
    out = runner.call(f"{JOBS}:add", 2, b=3)
    assert (out.ok, out.kind, out.value, out.error) == (True, "ok", 5, None)
    assert runner.run(f"{JOBS}:add", (1,), {"b": 1}).value == 2
    assert _pid(runner) == _pid(runner)


@pytest.mark.parametrize("job", ["sleep_forever", "spin_forever"])
def test_a_hang_times_out_and_the_next_job_gets_a_fresh_worker(runner, job):
    before = _pid(runner)
    out = runner.call(f"{JOBS}:{job}")
    assert (out.ok, out.kind) == (False, "timeout"), out
    assert TIMEOUT <= out.seconds < TIMEOUT + 2, out.seconds
    assert "wall-clock limit" in out.error
    assert _pid(runner) != before


def test_per_job_timeout_overrides_the_runner_default(runner):
    out = runner.run(f"{JOBS}:sleep_forever", timeout_s=0.5)
    assert out.kind == "timeout" and out.seconds < TIMEOUT, out


@pytest.mark.parametrize("job", ["hog", "hog_in_child"])
def test_unbounded_allocation_is_stopped_at_the_memory_limit(runner, job):
    before = _pid(runner)
    out = runner.call(f"{JOBS}:{job}")
    assert (out.ok, out.kind) == (False, "memory"), out
    assert out.seconds < TIMEOUT and f"limit of {MEMORY} MiB" in out.error
    after = _pid(runner)
    assert after != before
    # the hog's own child process went down with the worker
    leftovers = [p for p in Path("/proc").glob("[0-9]*")
                 if "hostile.jobs import hog" in _cmdline(p)]
    assert leftovers == []


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_a_huge_single_allocation_is_a_memory_error(runner):
    out = runner.call(f"{JOBS}:big_alloc")
    assert (out.ok, out.kind) == (False, "memory"), out
    assert "MemoryError" in out.error
    assert runner.call(f"{JOBS}:add", 1).ok


def test_an_exception_is_reported_and_the_worker_survives(runner):
    before = _pid(runner)
    out = runner.call(f"{JOBS}:boom", "no gradients for you")
    assert (out.ok, out.kind, out.error) == (False, "exception", "ValueError: no gradients for you")
    assert "def boom" in out.traceback or "boom" in out.traceback
    assert _pid(runner) == before


def test_an_unpicklable_result_is_an_exception(runner):
    out = runner.call(f"{JOBS}:unpicklable")
    assert out.kind == "exception" and "could not be sent" in out.error
    assert runner.call(f"{JOBS}:add", 1).ok


def test_an_unknown_job_name_is_an_exception(runner):
    assert runner.call(f"{JOBS}:no_such_job").kind == "exception"
    assert "module:function" in runner.call("not-a-job-name").error


@pytest.mark.parametrize("job, message", [("exit_hard", "exited with code 3"),
                                          ("segfault", "killed by SIGSEGV")])
def test_a_worker_that_dies_is_a_crash_and_is_replaced(runner, job, message):
    before = _pid(runner)
    out = runner.call(f"{JOBS}:{job}")
    assert (out.ok, out.kind) == (False, "crash"), out
    assert message in out.error
    assert _pid(runner) != before


def test_address_space_cap_only_on_cpu():
    import resource

    with JobRunner(TIMEOUT, MEMORY, "cpu", preload=()) as cpu:
        assert cpu.call(f"{JOBS}:address_space_limit").value != resource.RLIM_INFINITY
    with JobRunner(TIMEOUT, MEMORY, "cuda", preload=()) as cuda:
        assert cuda.call(f"{JOBS}:address_space_limit").value == resource.RLIM_INFINITY


def test_bad_arguments_and_closed_runner():
    with pytest.raises(ValueError):
        JobRunner(0, MEMORY)
    with pytest.raises(ValueError):
        JobRunner(TIMEOUT, -1)
    with pytest.raises(ValueError):
        JobRunner(TIMEOUT, MEMORY, start_method="fork")
    with pytest.raises(WorkerStartError, match="died while starting"):
        JobRunner(TIMEOUT, MEMORY, preload=("no_such_module_anywhere",)).call(f"{JOBS}:add", 1)
    r = JobRunner(TIMEOUT, MEMORY, preload=())
    r.close()
    with pytest.raises(RuntimeError):
        r.call(f"{JOBS}:add", 1)


def test_the_worker_dies_with_a_killed_parent(tmp_path):
    """SIGKILL the process that owns the runner mid-job: its hung worker must not survive."""
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from gauntlet.benchmark.isolation import JobRunner

        if __name__ == "__main__":
            r = JobRunner(600, 400, "cpu", preload=())
            print(r.call("{JOBS}:pid").value, flush=True)
            r.call("{JOBS}:sleep_forever")
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    worker = int(owner.stdout.readline())
    assert worker in descendants(owner.pid)
    owner.send_signal(signal.SIGKILL)
    owner.wait(10)
    owner.stdout.close()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists() and _state(worker) != "Z" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{worker}").exists() or _state(worker) == "Z"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "gone"


# -- hostile submissions end to end -------------------------------------------------------

ATTACK_TIMEOUT, ATTACK_MEMORY = 8.0, 1500  # room for the hog to reach the limit on a loaded machine


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Hostile submissions beside dummy-linear, and a one-slot local executor whose workers
    fork from a fork server that has imported the jobs and loaded mnist-embedded once."""
    from gauntlet.benchmark.executors import LocalExecutor
    from gauntlet.benchmark.runner import RunConfig

    root = tmp_path_factory.mktemp("hostile")
    subs = root / "submissions"
    for sub in HOSTILE.glob("hostile-*"):
        shutil.copytree(sub, subs / sub.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(HOSTILE.parent / "submissions" / "dummy-linear", subs / "dummy-linear")
    cfg = RunConfig(submissions_dir=subs, attacks=("fgsm",), threats=("linf-0.1",), n_examples=10,
                    results_dir=root / "results", sweep=False, certify=False, device="cpu",
                    job_timeout_s=ATTACK_TIMEOUT, job_memory_mb=ATTACK_MEMORY)
    with LocalExecutor(1, ATTACK_TIMEOUT, ATTACK_MEMORY, "cpu", threads=1,
                       preload=("gauntlet.benchmark.jobs", "tests.fixtures.hostile.warm")) as executor:
        yield cfg, executor


@pytest.mark.parametrize("sub_id, kind", [("hostile-hang", "timeout"), ("hostile-hog", "memory"),
                                          ("hostile-boom", "exception"), ("hostile-crash", "crash")])
def test_hostile_submission_becomes_an_error_row_and_the_run_goes_on(hostile, sub_id, kind):
    """Through the real orchestrator and local executor: the hostile attack job leaves an
    error record of its kind (a crash after its retries), and the next submission runs."""
    from dataclasses import replace

    from gauntlet.benchmark.error_records import error_job_config
    from gauntlet.benchmark.registry import load_submission
    from gauntlet.benchmark.results import config_hash, iter_results, read_result
    from gauntlet.benchmark.runner import run

    cfg, executor = hostile
    summary = run(replace(cfg, defenses=(sub_id, "dummy-linear")), progress=False, executor=executor)
    run_id = f"mnist-embedded/{sub_id}/linf-0.1/fgsm"
    # (its flags job may fail too: it measures gradients through the same defense)
    assert summary.error_records[0] == run_id and not any("dummy-linear" in e for e in summary.errors), summary
    assert summary.errors[0].startswith(f"{run_id}: {kind}"), summary.errors
    sub = load_submission(cfg.submissions_dir / sub_id / "manifest.yaml")
    config = error_job_config(cfg, sub, "attack", attack_id="fgsm", threat_id="linf-0.1",
                              timeout_s=ATTACK_TIMEOUT, memory_mb=ATTACK_MEMORY)
    rec = read_result(cfg.results_dir / f"{run_id}.json")
    assert (rec["kind"], rec["run_id"], rec["error"]["kind"]) == ("error", run_id, kind)
    assert rec["error"]["seconds"] < ATTACK_TIMEOUT + 2
    assert rec["config_hash"] == config_hash(config) and rec["dataset"]["n"] == 10
    assert rec["job"] == {"kind": "attack", "attack": "fgsm", "threat": "linf-0.1"}
    assert rec["threat"]["id"] == "linf-0.1" and rec["attack"]["id"] == "fgsm"
    good = read_result(cfg.results_dir / "mnist-embedded/dummy-linear/linf-0.1/fgsm.json")
    assert good["kind"] == "attack" and good["summary"]["n"] == 10
    assert {r["kind"] for _, r in iter_results(cfg.results_dir)} >= {"attack", "error", "flags"}
