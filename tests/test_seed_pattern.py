"""The finding Gauntlet exists for, on the committed reference submissions (issue 4):
defenses that obfuscate gradients look robust to naive PGD and fall to adaptive PGD
(BPDA + EOT), while PGD adversarial training holds (Athalye, Carlini & Wagner 2018).

MNIST models lose little at ℓ∞ 0.031 even undefended, so the pattern is asserted at
ℓ∞ 0.1 and 0.3. Slice: the first 40 examples of mnist-embedded's class-balanced
evaluation order; attacks: naive ``pgd`` and the adaptive PGD variants that apply to
each defense (``pgd-bpda``, ``pgd-eot``, ``pgd-bpda-eot``, k = 10), plus ``pgd`` at
ε = ∞ for the flags. "Adaptive" is the worst case over those and ``pgd``. The full suite
on every defense is ``gauntlet run``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.results import read_result
from benchmark.runner import RunConfig, run

ROOT = Path(__file__).resolve().parent.parent
SHATTERED = ("buckman2018-thermometer", "buckman2018-thermometer-at", "guo2018-bit-depth", "guo2018-jpeg",
             "guo2018-tv-min", "guo2018-quilting")
STOCHASTIC = ("guo2018-crop-rescale", "xie2018-randomization", "dhillon2018-sap")
DEFENSES = ("standard-cnn-mnist", "madry2018-pgd-at", *SHATTERED, *STOCHASTIC)
N = 40
ADAPTIVE = ("pgd-bpda", "pgd-eot", "pgd-bpda-eot")
#: Our quilting (non-overlapping 4×4 patches, 2,048-patch database) keeps 0.93 at ℓ∞ 0.1 and
#: 0.21 at 0.3 under PGD-BPDA-EOT on this slice: the seed's pattern is not reproduced for it
#: (Athalye et al. broke ImageNet quilting at ε = 0.05). Strict: a fix makes these fail loudly.
QUILTING_GAP = pytest.param("guo2018-quilting", marks=pytest.mark.xfail(
    strict=True, reason="quilting is not broken by PGD-BPDA-EOT on this slice (reported in the issue)"))


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


def acc(results: Path, defense: str, threat: str, attack: str) -> float:
    return read_result(results / "mnist-embedded" / defense / threat / f"{attack}.json")["summary"]["robust_accuracy"]


def adaptive(results: Path, defense: str, threat: str) -> float:
    """Worst case over naive PGD and the adaptive variants that ran against the defense."""
    folder = results / "mnist-embedded" / defense / threat
    return min(acc(results, defense, threat, a) for a in ("pgd", *ADAPTIVE) if (folder / f"{a}.json").exists())


def raised(results: Path, defense: str, threat: str) -> set[str]:
    flags = read_result(results / "mnist-embedded" / defense / threat / "flags.json")["flags"]
    return {f["id"] for f in flags if f["raised"]}


@pytest.mark.parametrize("defense", [d if d != "guo2018-quilting" else QUILTING_GAP for d in SHATTERED])
def test_shattered_gradients_look_robust_naively_and_fall_to_bpda(results, defense):
    naive = acc(results, defense, "linf-0.1", "pgd")
    worst = adaptive(results, defense, "linf-0.1")
    assert naive - worst >= 0.15 - 1e-9, (naive, worst)
    assert {"adaptive-beats-naive", "zero-gradients"} <= raised(results, defense, "linf-0.1")


@pytest.mark.parametrize("defense", [d if d != "guo2018-quilting" else QUILTING_GAP
                                     for d in SHATTERED + STOCHASTIC])
def test_adaptive_attack_reaches_the_undefended_level_at_large_eps(results, defense):
    standard = adaptive(results, "standard-cnn-mnist", "linf-0.3")
    worst = adaptive(results, defense, "linf-0.3")
    assert worst <= standard + 0.2, (worst, standard)


@pytest.mark.parametrize("defense", STOCHASTIC)
def test_eot_is_at_least_as_strong_as_naive_pgd_on_randomized_defenses(results, defense):
    for threat in ("linf-0.1", "linf-0.3"):
        assert acc(results, defense, threat, "pgd-eot") <= acc(results, defense, threat, "pgd") + 0.05
    assert "stochastic-gradients" in raised(results, defense, "linf-0.1")


def test_adversarial_training_holds_and_raises_no_flag(results):
    assert adaptive(results, "madry2018-pgd-at", "linf-0.1") >= 0.7
    assert adaptive(results, "madry2018-pgd-at", "linf-0.1") >= adaptive(results, "standard-cnn-mnist", "linf-0.1") + 0.25
    assert raised(results, "madry2018-pgd-at", "linf-0.1") == set()
