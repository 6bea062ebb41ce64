"""Check a Ray cluster before ``gauntlet run --executor ray`` (docs/scale-out.md).

The Ray executor hands every node the driver's absolute paths (the submissions folder,
``$GAUNTLET_DATA``) and each node imports the harness from its own checkout, so every
node must hold the same code, submissions and data at the same paths as the driver, with
the same Python, Ray and torch. For every alive node this prints its versions, whether
CUDA works, the hash of the harness source (:func:`gauntlet.benchmark.code_hash.code_hash`), of
every submission folder and of the data folder's file list, all found at the driver's
paths, and exits 1 when any of them differs from the driver's::

    python deploy/ray/preflight.py --address ray://127.0.0.1:10001 --device cuda \\
        [--sync-to COMMIT] [--gpus N [--wait-minutes M]]
    python deploy/ray/preflight.py --address ray://127.0.0.1:10001 --release

``--sync-to COMMIT`` first moves each node's checkout to COMMIT (``git fetch origin``,
``git checkout --detach``; ``pip install -e .[ray]`` again when ``pyproject.toml``
changed). ``--gpus N`` asks the autoscaler for N one-GPU bundles of the lane memory
(``ray.autoscaler.sdk.request_resources``) and waits until the cluster has N GPUs: the
executor sizes its lanes from the cluster's resources when the run starts, so GPU nodes
that the autoscaler would add later would not be used. ``--release`` withdraws that
request, so idle nodes scale down. Exit codes: 0 fine, 1 a node differs or the GPUs did
not come, 2 bad usage or no cluster.

Imports only Ray and the standard library at the top; what it imports of the harness it
imports on each node after any sync (and on the driver, from the driver's checkout).
Without ``--address`` it starts a local one-node Ray instance (temp folder
``$PREFLIGHT_RAY_TEMP`` if set), which is how it was tried.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Facts that must be equal on every node and the driver.
COMPARED = ("python", "ray", "torch", "harness", "code", "submissions", "data")
#: The full profile's job memory limit (benchmark/profiles.py), the memory of one lane.
LANE_MEMORY_MIB = 16384


def _git(root: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=600)


def _sync(root: str, commit: str) -> str:
    """Check out ``commit`` in the checkout at ``root``; reinstall when the packaging changed."""
    if not Path(root, ".git").exists():
        return f"no git checkout at {root}"
    before = _git(root, "rev-parse", "HEAD").stdout.strip()
    if before == commit:
        return "already at the commit"
    for args in (("fetch", "--quiet", "origin"), ("checkout", "--quiet", "--detach", commit)):
        out = _git(root, *args)
        if out.returncode != 0:
            return f"git {args[0]} failed: {out.stderr.strip()[-300:]}"
    if _git(root, "diff", "--quiet", before, commit, "--", "pyproject.toml").returncode != 0:
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{root}[ray]"],
                             capture_output=True, text=True, timeout=3600)
        if pip.returncode != 0:
            return f"pip install failed: {pip.stderr.strip()[-300:]}"
        return f"moved from {before[:12]}, reinstalled (pyproject.toml changed)"
    return f"moved from {before[:12]}"


def _data_digest(data: str | None) -> str:
    """Names and sizes of every file under ``data`` (cheap; the setup checks the md5s)."""
    if not data:
        return "unset"
    root = Path(data)
    if not root.is_dir():
        return f"missing: {data}"
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        h.update(f"{p.relative_to(root).as_posix()}\0{p.stat().st_size}\0".encode())
    return f"{len(files)} files {h.hexdigest()[:12]}"


def facts(root: str, data: str | None, submissions: list[str], commit: str | None) -> dict[str, Any]:
    """What a node would run with. Runs on every node (and on the driver, with no commit)."""
    out: dict[str, Any] = {"node": socket.gethostname(), "sync": _sync(root, commit) if commit else "-"}
    out["python"] = ".".join(platform.python_version_tuple()[:2])  # Ray Client: same minor version
    import ray

    out["ray"] = ray.__version__
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as e:  # noqa: BLE001 - reported, not raised
        out["torch"], out["cuda"] = f"unusable: {type(e).__name__}: {e}", 0
    try:
        from gauntlet.benchmark import code_hash as ch

        ch.clear_cache()
        out["harness"] = str(ch.package_folders(("gauntlet.benchmark",))[0].parent)
        out["code"] = ch.code_hash()
        subs = Path(root, "submissions")
        digest = hashlib.sha256()
        for name in submissions:
            folder = subs / name
            digest.update(f"{name}:{ch.submission_files_hash(folder) if folder.is_dir() else 'missing'};".encode())
        out["submissions"] = f"{len(submissions)} folders {digest.hexdigest()[:12]}"
    except Exception as e:  # noqa: BLE001 - a node whose checkout is broken is reported
        out["harness"] = out["code"] = out["submissions"] = f"unusable: {type(e).__name__}: {e}"
    out["data"] = _data_digest(data)
    try:  # every process that imports submitted code runs in bubblewrap (benchmark/sandbox.py)
        from gauntlet.benchmark.sandbox import check_bwrap

        out["sandbox"] = f"ok ({check_bwrap()})"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        out["sandbox"] = f"unusable: {e}"
    head = _git(root, "rev-parse", "HEAD") if Path(root, ".git").exists() else None
    out["commit"] = head.stdout.strip()[:12] if head is not None and head.returncode == 0 else "?"
    return out


def _request(bundles: list[dict]) -> None:
    """Runs on the cluster: the request is a cluster process's call."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


def _submit(ray: Any, fn: Any, *args: Any, node_id: str | None = None) -> Any:
    """``fn(*args)`` as a zero-CPU task (it also runs on the head), on ``node_id`` if given."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    opts: dict[str, Any] = {"num_cpus": 0}
    if node_id is not None:
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    return ray.remote(fn).options(**opts).remote(*args)


def _wait_for_gpus(ray: Any, n: int, minutes: float) -> bool:
    deadline = time.monotonic() + 60 * minutes
    while True:
        have = int(ray.cluster_resources().get("GPU", 0))
        if have >= n:
            return True
        if time.monotonic() > deadline:
            print(f"error: {have} of {n} GPUs after {minutes:g} minutes", file=sys.stderr)
            return False
        print(f"waiting for GPUs: {have} of {n}", flush=True)
        time.sleep(15)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="preflight.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default=None, help="the cluster (ray://host:10001, host:6379, auto); "
                                                   "default: a local one, for trying this script")
    p.add_argument("--device", default="auto", help="cuda: every GPU node must see a GPU from torch")
    p.add_argument("--sync-to", default=None, metavar="COMMIT", help="check out COMMIT on every node first")
    p.add_argument("--gpus", type=int, default=0, help="ask the autoscaler for N GPUs and wait for them")
    p.add_argument("--wait-minutes", type=float, default=30.0)
    p.add_argument("--lane-memory-mib", type=int, default=LANE_MEMORY_MIB,
                   help="memory of one lane (the job memory limit; default: the full profile's)")
    p.add_argument("--release", action="store_true", help="withdraw the --gpus request and exit")
    args = p.parse_args(argv)
    if args.sync_to is not None and not re.fullmatch(r"[0-9a-f]{40}", args.sync_to):
        p.error("--sync-to: expected a full 40-hex commit id")

    import ray

    try:
        if args.address:
            ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                     _temp_dir=os.environ.get("PREFLIGHT_RAY_TEMP"))
    except Exception as e:  # noqa: BLE001 - one line, exit 2
        print(f"error: cannot connect to the Ray cluster {args.address!r}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    try:
        if args.release:
            ray.get(_submit(ray, _request, []), timeout=300)
            print("released the GPU request")
            return 0
        if args.gpus > 0:
            bundle = {"GPU": 1, "CPU": 1, "memory": args.lane_memory_mib * 2**20}
            ray.get(_submit(ray, _request, [bundle] * args.gpus), timeout=300)
            if not _wait_for_gpus(ray, args.gpus, args.wait_minutes):
                return 1
        return _check(ray, args)
    finally:
        ray.shutdown()


def _check(ray: Any, args: argparse.Namespace) -> int:
    from gauntlet.benchmark.code_hash import package_folders

    root = str(package_folders(("gauntlet.benchmark",))[0].parent)
    data = os.environ.get("GAUNTLET_DATA")
    subs = sorted(d.name for d in Path(root, "submissions").iterdir() if (d / "manifest.yaml").is_file())
    mine = facts(root, data, subs, None)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [_submit(ray, facts, root, data, subs, args.sync_to, node_id=n["NodeID"]) for n in nodes]
    # All nodes at once; a sync may reinstall (torch is several GB), hence the long wait.
    theirs = list(zip(nodes, ray.get(refs, timeout=3600 if args.sync_to else 900)))
    problems = []
    print(f"driver: {' '.join(f'{k}={mine[k]}' for k in ('python', 'ray', 'torch', 'commit'))}")
    print(f"        harness {mine['harness']} code {mine['code']}, {mine['submissions']}, data {mine['data']}")
    cuda = args.device.startswith("cuda")
    for node, f in theirs:
        res = node.get("Resources", {})
        gpus, mem = int(res.get("GPU", 0)), res.get("memory", 0) / 2**30
        hosts = (gpus if cuda else int(res.get("CPU", 0))) >= 1  # can this node run a lane at all?
        print(f"{f['node']}: GPU {gpus} (torch sees {f['cuda']}), memory {mem:.1f} GiB, commit {f['commit']}, "
              f"sync: {f['sync']}{'' if hosts else ' (hosts no lane: not compared)'}")
        if any(word in f["sync"] for word in ("failed", "no git checkout")):
            problems.append(f"{f['node']}: sync to {args.sync_to[:12]}: {f['sync']}")
        if not hosts:
            continue
        for key in COMPARED:
            if f[key] != mine[key]:
                problems.append(f"{f['node']}: {key} is {f[key]!r}, the driver's is {mine[key]!r}")
        if not str(f.get("sandbox", "")).startswith("ok"):
            problems.append(f"{f['node']}: sandbox: {f.get('sandbox')}")
        if cuda and not f["cuda"]:
            problems.append(f"{f['node']}: Ray counts {gpus} GPU(s) but torch sees none")
        if mem * 2**10 < args.lane_memory_mib:
            problems.append(f"{f['node']}: {mem:.1f} GiB of Ray memory holds no lane of "
                            f"{args.lane_memory_mib} MiB")
    total = ray.cluster_resources()
    if cuda and total.get("GPU", 0) < 1:
        problems.append("the cluster has no GPU (start the GPU nodes first, or pass --gpus N)")
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if not problems:
        print(f"ok: {len(theirs)} nodes, {int(total.get('GPU', 0))} GPUs, "
              f"{total.get('memory', 0) / 2**30:.1f} GiB of Ray memory")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
