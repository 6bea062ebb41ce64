"""Named run profiles: how many examples and samples a run uses, in one place.

A profile changes sizes (examples, scoring draws, certification samples), never an
attack's strength: attack budgets are the registry's defaults unless a manifest
declares an override with a reason, and both are recorded in every result file and
shown on the site.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from gauntlet.benchmark.threats import SWEEPS


@dataclass(frozen=True)
class Profile:
    """Sizes of a run."""

    #: Profile name, recorded in every result file.
    name: str
    #: Test examples per dataset (None = the whole test split).
    n_examples: int | None
    #: Scoring draws R per final x_adv for randomized defenses (≥ 10, DESIGN.md).
    draws: int
    #: Noise samples n for CERTIFY (None = the manifest's, default 100,000).
    certify_n: int | None
    #: Run the accuracy-versus-ε sweeps.
    sweep: bool
    #: The sweeps' ε per norm (each includes 0 and the fixed threat's ε).
    sweeps: dict[str, tuple[float, ...]]
    #: Wall-clock limit per job, seconds.
    job_timeout_s: float
    #: Resident-memory limit per job, MiB.
    job_memory_mb: int
    #: One line for the site.
    description: str

    def describe(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


#: The quick profile's sweeps: the points the seed's pattern is read at (ℓ∞ 0.1 and 0.3),
#: the fixed threats, and enough others for the monotonicity flag.
QUICK_SWEEPS: dict[str, tuple[float, ...]] = {
    "linf": (0.0, 0.031, 0.1, 0.3),
    "l2": (0.0, 0.005, 0.05),
}

PROFILES: dict[str, Profile] = {
    p.name: p for p in (
        Profile("quick", 20, 10, 10_000, True, QUICK_SWEEPS, 3600.0, 8192,
                "Embedded default on a 2-core CPU: the first 20 test examples (class-balanced, "
                "so accuracies move in steps of 0.05), n = 10,000 noise samples per certificate, "
                "coarser ε sweeps (every attack at every ε)."),
        Profile("full", None, 10, None, True, SWEEPS, 12 * 3600.0, 16384,
                "Nightly: every test example, the manifests' n (default 100,000), the full ε sweeps "
                "(every attack at every ε)."),
    )
}


def get_profile(name: str) -> Profile:
    """Look up a profile.

    Raises:
        KeyError: naming the known profiles.
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; known: {sorted(PROFILES)}") from None
