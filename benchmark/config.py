"""What a run is asked to do (:class:`RunConfig`), what it did (:class:`RunSummary`), and
the two pure helpers every job shares: the device and the per-job seed.

Imported by the planner, the executors, the workers and the command line; imports
nothing of the benchmark's own but torch (for the device).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmark.threats import FIXED_THREATS


@dataclass(frozen=True)
class RunConfig:
    """What ``gauntlet run`` does."""

    #: Folder of submission folders.
    submissions_dir: Path = Path("submissions")
    #: Defense ids to run (empty = all valid submissions).
    defenses: tuple[str, ...] = ()
    #: Attack ids to run (empty = every registered attack).
    attacks: tuple[str, ...] = ()
    #: Threat ids (default: the two fixed threat models).
    threats: tuple[str, ...] = FIXED_THREATS
    #: Run profile (sizes): "quick" or "full".
    profile: str = "quick"
    #: Examples per dataset; None = the profile's.
    n_examples: int | None = None
    #: "auto", "cpu", "cuda" or "cuda:N".
    device: str = "auto"
    #: Master seed; every job derives its own from it and its run id.
    seed: int = 0
    #: Where result files go.
    results_dir: Path = Path("results")
    #: Dataset folder (``--data-dir``); None = ``$GAUNTLET_DATA``.
    data_dir: Path | None = None
    #: Let torchvision download a missing dataset (needs a network).
    download: bool = False
    #: Examples per attack batch.
    batch_size: int = 100
    #: Run the ε sweeps; None = the profile's choice.
    sweep: bool | None = None
    #: Certify submissions that claim a certificate.
    certify: bool = True
    #: Run each job in a child process with time and memory limits (False: in-process).
    isolate: bool = True
    #: Wall-clock limit per job in seconds (None: the profile's).
    job_timeout_s: float | None = None
    #: Resident-memory limit per job in MiB (None: the profile's).
    job_memory_mb: int | None = None
    #: Submissions attacked at once, each in its own worker (None: one per CPU core on
    #: CPU with isolation, else 1). Results do not depend on it: every job seeds itself.
    workers: int | None = None
    #: Run each attack after the baselines only on the examples still robust
    #: (:mod:`benchmark.cascade`); False: every attack on every example.
    cascade: bool = True
    #: Where jobs run (:mod:`benchmark.executors`): "local" (worker processes with time
    #: and memory limits), "in-process" (debugging; same as ``isolate=False``) or "ray".
    executor: str = "local"
    #: The Ray cluster to join (``ray.init(address=...)``); None: start a local one.
    ray_address: str | None = None


@dataclass
class RunSummary:
    """What a run did."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Run ids whose ``kind: "error"`` record was written (a failed job with no valid
    #: result to keep); a failed job whose previous valid result is kept is only in ``errors``.
    error_records: list[str] = field(default_factory=list)
    #: One line per submission not run because its dataset's files are not available.
    unavailable: list[str] = field(default_factory=list)


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU.

    Raises:
        ValueError: CUDA was asked for and is not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def job_seed(seed: int, run_id: str) -> int:
    """A 63-bit seed derived from the master seed and a run id."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{run_id}".encode()).digest()[:8], "big") >> 1
