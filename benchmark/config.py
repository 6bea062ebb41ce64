"""What a run is asked to do (:class:`RunConfig`), what it did (:class:`RunSummary`), and
the two pure helpers every job shares: the device and the per-job seed.

Imported by the planner, the executors, the workers and the command line; imports
nothing of the benchmark's own but the threat and profile tables (no runner, no torch
code beyond the device).

:class:`RunConfig` checks every field when it is built (the Python API builds it
directly, so the checks live here, not in the command line) and raises
:class:`ConfigError`, one line ``"<field>: <reason>"``.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gauntlet.benchmark.profiles import PROFILES
from gauntlet.benchmark.sandbox import SANDBOX_MODES
from gauntlet.benchmark.threats import FIXED_THREATS, get_threat

#: Where jobs can run (:attr:`RunConfig.executor`).
EXECUTORS = ("local", "in-process", "ray")
#: Seeds are hashed into per-job seeds, but ``gauntlet train`` hands one to
#: ``torch.manual_seed``, which takes at most 64 bits.
MAX_SEED = 2**63 - 1
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


class ConfigError(ValueError):
    """A :class:`RunConfig` field (or a device string) is invalid.

    Attributes:
        field: the field's name, e.g. ``"n_examples"``.
        reason: why, e.g. ``"must be an integer >= 1, got -1"``.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple:
        return type(self), (self.field, self.reason)


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
    #: (:mod:`gauntlet.benchmark.cascade`); False: every attack on every example.
    cascade: bool = True
    #: Where jobs run (:mod:`gauntlet.benchmark.executors`): "local" (worker processes with time
    #: and memory limits), "in-process" (debugging; same as ``isolate=False``) or "ray".
    executor: str = "local"
    #: Where submitted code runs (:mod:`gauntlet.benchmark.sandbox`): "bwrap" (bubblewrap, one
    #: sandbox per submission, reached through logits and VJPs) or "none" (built in the
    #: worker with the runner's privileges: ``--unsafe-no-sandbox``).
    sandbox: str = "bwrap"
    #: The Ray cluster to join (``ray.init(address=...)``); None: start a local one.
    #: Only with ``executor="ray"``.
    ray_address: str | None = None

    def __post_init__(self) -> None:
        """Check every field; coerce path strings to :class:`Path` and id lists to tuples.

        ``isolate=False`` and ``executor="in-process"`` mean the same and are made to
        agree (either implies the other).

        Raises:
            ConfigError: ``"<field>: <reason>"`` for the first invalid field.
        """
        for name in ("submissions_dir", "results_dir", "data_dir"):
            self._set(name, _path(name, getattr(self, name), optional=name == "data_dir"))
        for name in ("defenses", "attacks", "threats"):
            self._set(name, _ids(name, getattr(self, name)))
        if not self.threats:
            raise ConfigError("threats", "at least one threat id is needed, e.g. 'linf-0.031'")
        for t in self.threats:
            try:
                get_threat(t)
            except ValueError as e:
                raise ConfigError("threats", str(e)) from None
        if self.profile not in PROFILES:
            raise ConfigError("profile", f"unknown profile {self.profile!r}; known: {', '.join(sorted(PROFILES))}")
        _count("n_examples", self.n_examples, optional=True)
        validate_device(self.device)
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", f"must be an integer from 0 to 2**63 - 1, got {self.seed!r}")
        for name in ("download", "certify", "isolate", "cascade"):
            _flag(name, getattr(self, name))
        if self.sweep is not None:
            _flag("sweep", self.sweep)
        _count("batch_size", self.batch_size)
        t = self.job_timeout_s
        if t is not None and (not isinstance(t, numbers.Real) or isinstance(t, bool)
                              or not math.isfinite(t) or t <= 0):
            raise ConfigError("job_timeout_s", f"must be a finite number of seconds > 0, got {t!r}")
        _count("job_memory_mb", self.job_memory_mb, optional=True)
        _count("workers", self.workers, optional=True)
        if self.sandbox not in SANDBOX_MODES:
            raise ConfigError("sandbox", f"unknown sandbox {self.sandbox!r}; known: {', '.join(SANDBOX_MODES)}")
        self._check_executor()

    def _check_executor(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError("executor", f"unknown executor {self.executor!r}; known: {', '.join(EXECUTORS)}")
        if not self.isolate and self.executor == "ray":
            raise ConfigError("executor", "'ray' contradicts isolate=False (in-process)")
        if self.ray_address is not None:
            if not isinstance(self.ray_address, str) or not self.ray_address.strip():
                raise ConfigError("ray_address", f"expected an address such as 'ray://host:10001', "
                                                 f"got {self.ray_address!r}")
            if self.executor != "ray":
                raise ConfigError("ray_address", f"only used by executor 'ray', not {self.executor!r}")
        if self.executor == "in-process" or not self.isolate:
            self._set("executor", "in-process")
            self._set("isolate", False)
            # In-process jobs share this process: no limit can be enforced, one at a time.
            for name in ("job_timeout_s", "job_memory_mb"):
                if getattr(self, name) is not None:
                    raise ConfigError(name, "no limit can be enforced on in-process jobs "
                                            "(executor 'in-process', isolate=False)")
            if self.workers is not None and self.workers > 1:
                raise ConfigError("workers", f"in-process jobs run one at a time, got {self.workers}")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: only __post_init__ normalizes


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


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _count(name: str, value: Any, optional: bool = False) -> None:
    """A positive integer (or None when ``optional``)."""
    if optional and value is None:
        return
    if not _is_int(value) or value < 1:
        raise ConfigError(name, f"must be an integer >= 1, got {value!r}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(name, f"must be True or False, got {value!r}")


def _path(name: str, value: Any, optional: bool = False) -> Path | None:
    """``value`` as a Path; an empty string is refused (``Path("")`` would be the cwd)."""
    if optional and value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ConfigError(name, f"expected a non-empty path, got {value!r}")
    return Path(value)


def _ids(name: str, value: Any) -> tuple[str, ...]:
    """A tuple of id strings (a bare string would be read one character at a time)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) \
            or not all(isinstance(v, str) for v in value):
        raise ConfigError(name, f"expected a tuple of id strings, got {value!r}")
    return tuple(value)


def validate_device(device: Any) -> None:
    """Check a device string: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Whether CUDA is present is :func:`resolve_device`'s question (the machine that runs
    the jobs may not be the one that builds the config).

    Raises:
        ConfigError: ``"device: <reason>"``.
    """
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError("device", f"expected auto, cpu, cuda or cuda:N, got {device!r}")


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU.

    Raises:
        ConfigError: not a device string (:func:`validate_device`), or CUDA was asked
            for and is not available.
    """
    validate_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{device!r} requested but CUDA is not available")
    return torch.device(device)


def job_seed(seed: int, run_id: str) -> int:
    """A 63-bit seed derived from the master seed and a run id."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{run_id}".encode()).digest()[:8], "big") >> 1
