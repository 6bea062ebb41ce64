"""The Ray executor against a real local Ray cluster on 127.0.0.1 (``ray start --head``
with two CPUs, started and stopped here): its result files equal the local executor's,
and killing a Ray worker mid-job yields a retried job, never a missing or partial file."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from gauntlet.benchmark.results import iter_results  # noqa: E402
from gauntlet.benchmark.runner import RunConfig, run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: Deterministic, randomized, certified.
THREE = ("standard-cnn-mnist", "dhillon2018-sap", "lipschitz-margin")
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A two-CPU Ray head on this machine, reached at 127.0.0.1; its address.

    Token authentication is off for this throw-away cluster (driver and head share the
    setting through the environment); docs/scale-out.md covers a real cluster's token."""
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env = dict(os.environ)
    start = [RAY, "start", "--head", "--port", str(port), "--num-cpus", "2",
             "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp)]
    out = subprocess.run(start, capture_output=True, text=True, env=env, timeout=180)
    if out.returncode != 0:
        pytest.fail(f"ray start failed: {out.stderr[-2000:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _cfg(results: Path, **kw) -> RunConfig:
    base = dict(submissions_dir=ROOT / "submissions", defenses=THREE, attacks=("fgsm", "pgd", "pgd-eot"),
                threats=("linf-0.031",), n_examples=8, results_dir=results, sweep=False, device="cpu",
                job_memory_mb=3000, workers=2)
    base.update(kw)
    return RunConfig(**base)


def _stable(results: Path) -> dict[str, dict]:
    """Every result file without what may differ between executors: wall time and the
    torch thread count of the process."""
    out = {}
    for p, r in iter_results(results):
        r = dict(r, timing=None, environment={k: v for k, v in r["environment"].items() if k != "threads"})
        out[str(p.relative_to(results))] = r
    return out


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    results = tmp_path_factory.mktemp("local") / "results"
    summary = run(_cfg(results), progress=False)
    assert summary.errors == [], summary.errors
    return results


def _ray_run(cluster: str, results: Path):
    if ray.is_initialized():
        ray.shutdown()
    return run(_cfg(results, executor="ray", ray_address=cluster), progress=False)


def test_ray_and_local_executors_write_the_same_result_files(cluster, local_results, tmp_path):
    summary = _ray_run(cluster, tmp_path / "ray")
    assert summary.errors == [], summary.errors
    got, want = _stable(tmp_path / "ray"), _stable(local_results)
    assert sorted(got) == sorted(want)
    kinds = {r["kind"] for r in want.values()}
    assert kinds == {"attack", "flags", "certify"} and len(want) >= 12
    assert {k for k in want if got[k] != want[k]} == set()
    # resume works as on one machine: nothing is recomputed
    again = _ray_run(cluster, tmp_path / "ray")
    assert again.written == [] and len(again.skipped) == len(want)


def _lane_hosts() -> list[int]:
    """Pids of live Ray actor processes hosting a lane (their title names the class)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ray::LaneHost" in cmd:
                out.append(int(entry.name))
    return out


def test_a_killed_ray_worker_is_retried_and_no_file_is_missing_or_partial(cluster, local_results, tmp_path):
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            busy = [p for p in _lane_hosts() if b"LaneHost.run" in Path(f"/proc/{p}/cmdline").read_bytes()] \
                if _lane_hosts() else []
            if busy:
                time.sleep(0.5)  # mid-job
                try:
                    os.kill(busy[0], signal.SIGKILL)
                    killed.append(busy[0])
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = _ray_run(cluster, tmp_path / "ray")
    thread.join(5)
    assert killed, "no Ray worker was seen running a job"
    got, want = _stable(tmp_path / "ray"), _stable(local_results)
    # every file is there and complete (iter_results parsed each one strictly); a job whose
    # retries all died would be an error record, here the retry succeeded
    assert sorted(got) == sorted(want)
    errors = {k for k, r in got.items() if r["kind"] == "error"}
    assert errors == set() and summary.errors == [], summary.errors
    assert {k for k in want if got[k] != want[k]} == set()
    assert not list((tmp_path / "ray").rglob("*.tmp"))
    shutil.rmtree(tmp_path / "ray")
