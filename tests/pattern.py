"""What the seed-pattern tests read from a run's result files (tests/test_seed_pattern*.py)."""
from __future__ import annotations

from pathlib import Path

from gauntlet.benchmark.results import read_result

#: The adaptive PGD variants whose per-example worst case (with naive ``pgd``) is "adaptive".
ADAPTIVE = ("pgd-bpda", "pgd-eot", "pgd-bpda-eot")


def scores(results: Path, dataset: str, defense: str, threat: str, attack: str) -> list[float]:
    """The attack's per-example ``robust_correct`` (None: the cascade did not hand it the example)."""
    return read_result(results / dataset / defense / threat / f"{attack}.json")["per_example"]["robust_correct"]


def acc(results: Path, dataset: str, defense: str, threat: str, attack: str) -> float:
    s = scores(results, dataset, defense, threat, attack)
    return sum(s) / len(s)


def worst_scores(results: Path, dataset: str, defense: str, threat: str, attacks: tuple[str, ...]) -> list[float]:
    """Per-example worst case over those of ``attacks`` that ran against the defense (an
    attack that does not apply has no file; a null score: the cascade did not hand the
    example to that attack, an earlier one broke it)."""
    folder = results / dataset / defense / threat
    rows = [scores(results, dataset, defense, threat, a) for a in attacks if (folder / f"{a}.json").exists()]
    return [min(v for v in col if v is not None) for col in zip(*rows)]


def adaptive_scores(results: Path, dataset: str, defense: str, threat: str) -> list[float]:
    """Per-example worst case over naive PGD and the adaptive variants that ran against it."""
    return worst_scores(results, dataset, defense, threat, ("pgd", *ADAPTIVE))


def adaptive(results: Path, dataset: str, defense: str, threat: str) -> float:
    s = adaptive_scores(results, dataset, defense, threat)
    return sum(s) / len(s)


def flags(results: Path, dataset: str, defense: str, threat: str) -> dict[str, dict]:
    """The flags job's flags at one threat, by id (each with ``raised`` and ``numbers``)."""
    return {f["id"]: f for f in read_result(results / dataset / defense / threat / "flags.json")["flags"]}


def raised(results: Path, dataset: str, defense: str, threat: str) -> set[str]:
    return {i for i, f in flags(results, dataset, defense, threat).items() if f["raised"]}
