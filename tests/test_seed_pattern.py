"""The finding Gauntlet exists for, on the committed reference submissions (issue 4):
defenses that obfuscate gradients look robust to naive PGD and fall to adaptive PGD
(BPDA + EOT), while PGD adversarial training holds (Athalye, Carlini & Wagner 2018).

MNIST models lose little at ℓ∞ 0.031 even undefended, so the pattern is asserted at
ℓ∞ 0.1 and 0.3. Slice: the first 40 examples of mnist-embedded's class-balanced
evaluation order; attacks: naive ``pgd`` and the adaptive PGD variants that apply to
each defense (``pgd-bpda``, ``pgd-eot``, ``pgd-bpda-eot``, k = 10), plus ``pgd`` at
ε = ∞ for the flags. "Adaptive" is the per-example worst case over those and ``pgd``. The
full suite on every defense is ``gauntlet run``.

Every comparison is between exact 95% intervals (:mod:`gauntlet.benchmark.intervals`), never
between point estimates: on 40 examples one example moves an accuracy by 2.5 points, and
a threshold on a point flips with it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from gauntlet.benchmark.intervals import accuracy_interval
from gauntlet.benchmark.runner import RunConfig, run
from tests import pattern

ROOT = Path(__file__).resolve().parent.parent
SHATTERED = ("buckman2018-thermometer", "buckman2018-thermometer-at", "guo2018-bit-depth", "guo2018-jpeg",
             "guo2018-tv-min", "guo2018-quilting")
STOCHASTIC = ("guo2018-crop-rescale", "xie2018-randomization", "dhillon2018-sap")
DEFENSES = ("standard-cnn-mnist", "madry2018-pgd-at", *SHATTERED, *STOCHASTIC)
N = 40
DS = "mnist-embedded"
#: Our quilting (non-overlapping 4×4 patches, 2,048-patch database) keeps ~0.93 at ℓ∞ 0.1
#: under PGD-BPDA-EOT on this slice, against ~0.97 for naive PGD: the two intervals overlap
#: widely, so the seed's drop at ε = 0.1 is not reproduced for it (Athalye et al. broke
#: ImageNet quilting at ε = 0.05). Strict: a fix makes this fail loudly. (At ε = 0.3 it falls
#: to ~0.2, whose interval reaches the undefended level: that test passes.)
QUILTING_GAP = pytest.param("guo2018-quilting", marks=pytest.mark.xfail(
    strict=True, reason="quilting is not broken at ℓ∞ 0.1 by PGD-BPDA-EOT on this slice (reported in the issue)"))
#: Slack for "reaches the undefended level" at ε = 0.3: the defense's interval must come
#: within this of the undefended model's.
LEVEL_SLACK = 0.1


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pattern")
    # Two runs, so that no defense pays for a variant that cannot help it: EOT on raw
    # gradients only where the gradients exist (the stochastic defenses). The flags are
    # those of the last run, the one with naive pgd.
    for defenses, attacks in ((STOCHASTIC, ("pgd-eot",)), (DEFENSES, ("pgd", "pgd-bpda", "pgd-bpda-eot"))):
        summary = run(RunConfig(submissions_dir=ROOT / "submissions", defenses=defenses, attacks=attacks,
                                threats=("linf-0.1", "linf-0.3"), n_examples=N, results_dir=out, sweep=False,
                                certify=False, isolate=False), progress=False)
        assert summary.errors == []
    for d in DEFENSES:  # the numbers behind the assertions, shown on failure and with -s
        print(d, *(f"{t}: pgd {acc(out, d, t, 'pgd'):.3f} / adaptive {adaptive(out, d, t):.3f}"
                   for t in ("linf-0.1", "linf-0.3")), sorted(raised(out, d, "linf-0.1")))
    return out


def scores(results: Path, defense: str, threat: str, attack: str) -> list[float]:
    return pattern.scores(results, DS, defense, threat, attack)


def acc(results: Path, defense: str, threat: str, attack: str) -> float:
    return pattern.acc(results, DS, defense, threat, attack)


def interval(values: list[float]) -> tuple[float, float]:
    return accuracy_interval(values)


def adaptive_scores(results: Path, defense: str, threat: str) -> list[float]:
    return pattern.adaptive_scores(results, DS, defense, threat)


def adaptive(results: Path, defense: str, threat: str) -> float:
    return pattern.adaptive(results, DS, defense, threat)


def raised(results: Path, defense: str, threat: str) -> set[str]:
    return pattern.raised(results, DS, defense, threat)


@pytest.mark.parametrize("defense", [d if d != "guo2018-quilting" else QUILTING_GAP for d in SHATTERED])
def test_shattered_gradients_look_robust_naively_and_fall_to_bpda(results, defense):
    naive = acc(results, defense, "linf-0.1", "pgd")
    worst = interval(adaptive_scores(results, defense, "linf-0.1"))
    # What naive PGD reports is not consistent with the adaptive measurement: it lies above
    # the worst case's 95% upper bound (on 40 examples the two intervals may still touch).
    assert naive > worst[1], (naive, worst)
    assert {"adaptive-beats-naive", "zero-gradients"} <= raised(results, defense, "linf-0.1")


@pytest.mark.parametrize("defense", SHATTERED + STOCHASTIC)
def test_adaptive_attack_reaches_the_undefended_level_at_large_eps(results, defense):
    standard = interval(adaptive_scores(results, "standard-cnn-mnist", "linf-0.3"))
    worst = interval(adaptive_scores(results, defense, "linf-0.3"))
    assert worst[0] <= standard[1] + LEVEL_SLACK, (worst, standard)


@pytest.mark.parametrize("defense", STOCHASTIC)
def test_eot_is_at_least_as_strong_as_naive_pgd_on_randomized_defenses(results, defense):
    for threat in ("linf-0.1", "linf-0.3"):
        eot, naive = interval(scores(results, defense, threat, "pgd-eot")), interval(scores(results, defense, threat, "pgd"))
        assert eot[0] <= naive[1], (threat, eot, naive)  # EOT is not significantly weaker
    assert "stochastic-gradients" in raised(results, defense, "linf-0.1")


def test_adversarial_training_holds_and_raises_no_flag(results):
    madry = interval(adaptive_scores(results, "madry2018-pgd-at", "linf-0.1"))
    standard = interval(adaptive_scores(results, "standard-cnn-mnist", "linf-0.1"))
    assert madry[0] >= 0.6, madry
    assert madry[0] > standard[1], (madry, standard)  # significantly more robust than undefended
    assert raised(results, "madry2018-pgd-at", "linf-0.1") == set()
