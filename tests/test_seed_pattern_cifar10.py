"""The seed's Table 1 pattern on CIFAR-10, at the fixed ℓ∞ threat it was made for
(issue 16), from the committed weights: defenses that obfuscate gradients look robust to
naive PGD and fall to adaptive PGD (BPDA, EOT) to within reach of the undefended model,
while adversarial training holds, and the thermometer code adds nothing to it.

Slice: the first 40 CIFAR-10 test images; attacks: naive ``pgd`` and the adaptive PGD
variants that apply (``pgd-bpda``, ``pgd-eot``, ``pgd-bpda-eot``); against the LID
detector, the rejection-blind ``pgd-blind`` (its naive baseline) and the rejection-aware
``pgd``; against the adversarially trained thermometer and fast AT, ``pgd``, ``pgd-bpda``,
``apgd-ce`` and ``square``. Every comparison is between exact 95% intervals, never between
point estimates. Needs the CIFAR-10 files (``$GAUNTLET_DATA``, ../shared/data); skipped
without them.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from gauntlet.benchmark.datasets import unavailable
from gauntlet.benchmark.intervals import accuracy_interval
from gauntlet.benchmark.results import read_result
from gauntlet.benchmark.runner import RunConfig, run
from tests import pattern
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parent.parent
#: Quilting is left out: on the CIFAR-10 quick run's 20 examples PGD-BPDA-EOT takes it from 61% to 21%
#: [6, 49], not to the undefended level (reported in the issue), and its 10-example quick limit is
#: too small a slice for the interval comparisons below.
SHATTERED = ("buckman2018-thermometer-cifar10", "guo2018-jpeg-cifar10", "guo2018-bit-depth-cifar10",
             "song2018-pixeldefend-cifar10")
STOCHASTIC = ("xie2018-randomization-cifar10", "dhillon2018-sap-cifar10", "guo2018-crop-rescale-cifar10")
DETECTOR = "ma2018-lid-cifar10"
#: Thermometer + adversarial training against adversarial training alone, both under the same
#: attacks where they apply: naive PGD, PGD-BPDA, APGD-CE (through BPDA) and Square, the
#: gradient-free attack that breaks what the BPDA gradient leaves.
THERMOMETER_AT, MADRY = "buckman2018-thermometer-at-cifar10", "madry2018-pgd-at-cifar10"
AT_ATTACKS = ("pgd", "pgd-bpda", "apgd-ce", "square")
DEFENSES = ("standard-cifar10", "madry2018-pgd-at-cifar10", *SHATTERED, *STOCHASTIC)
THREAT = "linf-0.031"
N = 40
DS = "cifar10"
#: "Within a few points of the undefended model": the defense's adaptive interval must
#: reach within this of the undefended model's.
LEVEL_SLACK = 0.1


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    if unavailable("cifar10", SHARED_DATA):
        pytest.skip(f"CIFAR-10 files not found in {SHARED_DATA}")
    out = tmp_path_factory.mktemp("pattern-cifar10")
    for defenses, attacks in ((STOCHASTIC, ("pgd-eot",)), (DEFENSES, ("pgd", "pgd-bpda", "pgd-bpda-eot")),
                              ((DETECTOR,), ("pgd-blind", "pgd")), ((THERMOMETER_AT, MADRY), AT_ATTACKS)):
        summary = run(RunConfig(submissions_dir=ROOT / "submissions", defenses=defenses, attacks=attacks,
                                threats=(THREAT,), n_examples=N, results_dir=out, data_dir=SHARED_DATA,
                                sweep=False, certify=False, isolate=False), progress=False)
        assert summary.errors == []
    for d in DEFENSES:  # the numbers behind the assertions, shown on failure and with -s
        print(d, f"clean {clean(out, d):.3f}, pgd {acc(out, d, 'pgd'):.3f}, adaptive {adaptive(out, d):.3f}",
              sorted(raised(out, d)))
    return out


def clean(results: Path, defense: str) -> float:
    c = read_result(results / DS / defense / THREAT / "pgd.json")["per_example"]["clean_correct"]
    return sum(c) / len(c)


def acc(results: Path, defense: str, attack: str) -> float:
    return pattern.acc(results, DS, defense, THREAT, attack)


def adaptive_scores(results: Path, defense: str) -> list[float]:
    return pattern.adaptive_scores(results, DS, defense, THREAT)


def adaptive(results: Path, defense: str) -> float:
    return pattern.adaptive(results, DS, defense, THREAT)


def raised(results: Path, defense: str) -> set[str]:
    return pattern.raised(results, DS, defense, THREAT)


@pytest.mark.parametrize("defense", SHATTERED)
def test_shattered_gradients_look_robust_naively_and_fall_to_bpda(results, defense):
    naive = acc(results, defense, "pgd")
    worst = accuracy_interval(adaptive_scores(results, defense))
    assert naive > worst[1], (naive, worst)  # naive PGD's figure lies above the worst case's upper bound
    assert "zero-gradients" in raised(results, defense)


@pytest.mark.parametrize("defense", SHATTERED + STOCHASTIC)
def test_adaptive_attack_reaches_the_undefended_level(results, defense):
    standard = accuracy_interval(adaptive_scores(results, "standard-cifar10"))
    worst = accuracy_interval(adaptive_scores(results, defense))
    assert worst[0] <= standard[1] + LEVEL_SLACK, (worst, standard)


def test_adversarial_training_holds(results):
    madry = accuracy_interval(adaptive_scores(results, "madry2018-pgd-at-cifar10"))
    standard = accuracy_interval(adaptive_scores(results, "standard-cifar10"))
    assert madry[1] >= 0.3, madry  # the aim: at least 30% (the paper: 47% with a WideResNet)
    assert madry[0] > standard[1], (madry, standard)  # significantly more robust than undefended


def test_lid_holds_against_the_blind_attack_and_falls_to_the_aware_one(results):
    blind = accuracy_interval(pattern.scores(results, DS, DETECTOR, THREAT, "pgd-blind"))
    aware = accuracy_interval(pattern.scores(results, DS, DETECTOR, THREAT, "pgd"))
    standard = accuracy_interval(adaptive_scores(results, "standard-cifar10"))
    print(DETECTOR, "blind", blind, "aware", aware)
    assert blind[0] > aware[1], (blind, aware)  # the naive figure lies above the aware one's interval
    assert aware[0] <= standard[1] + LEVEL_SLACK, (aware, standard)


def test_adversarially_trained_thermometer_is_no_more_robust_than_adversarial_training(results):
    """Athalye et al. (2018, §5.2.1): the adaptive attacks take the adversarially trained
    thermometer model far below its claim (79.16%), to no more than adversarial training alone."""
    from gauntlet.benchmark.registry import load_submission

    def worst(defense: str) -> tuple[float, float]:
        # pgd-bpda does not apply to fast AT (nothing to approximate): the attacks that ran
        return accuracy_interval(pattern.worst_scores(results, DS, defense, THREAT, AT_ATTACKS))

    claim = next(c.accuracy for c in load_submission(ROOT / "submissions" / THERMOMETER_AT / "manifest.yaml")
                 .manifest.claims if c.threat == THREAT)
    naive, thermometer, madry = acc(results, THERMOMETER_AT, "pgd"), worst(THERMOMETER_AT), worst(MADRY)
    print(THERMOMETER_AT, "naive", naive, "worst", thermometer, "fast AT", madry, "claim", claim)
    assert naive > thermometer[1], (naive, thermometer)  # the encoding masks the naive gradient
    assert thermometer[1] < claim, (thermometer, claim)
    assert thermometer[0] <= madry[1], (thermometer, madry)  # not significantly above AT alone
