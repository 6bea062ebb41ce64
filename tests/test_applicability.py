"""Which attacks run against which defense: the rule the runner and the site share."""
from __future__ import annotations

import torch

from gauntlet.attacks.base import defense_facts
from gauntlet.attacks.registry import attack_ids, make_attack
from gauntlet.defenses.models import LinearClassifier
from gauntlet.defenses.pipeline import Defense
from gauntlet.defenses.preprocess import Quantize
from gauntlet.defenses.randomized import RandomCropRescale
from gauntlet.leaderboard import aggregate as agg


class Detector(Defense):
    """A defense with a reject logit (its value is irrelevant here)."""

    def __init__(self) -> None:
        super().__init__(LinearClassifier(784, 10), rejects=True)


def _runs_against(defense) -> set[str]:
    return {a for a in attack_ids() if make_attack(a).applies_to(defense)}


def test_deterministic_differentiable_defense_gets_no_eot_or_bpda_variant():
    runs = _runs_against(Defense(LinearClassifier(784, 10)))
    assert {"pgd", "fgsm", "apgd-ce", "apgd-dlr", "square", "random", "transfer"} <= runs
    assert not runs & {"pgd-bpda", "pgd-eot", "pgd-bpda-eot", "reparam", "pgd-blind"}


def test_shattered_defense_gets_bpda_and_square_but_no_eot():
    runs = _runs_against(Defense(LinearClassifier(784, 10), [Quantize(4)]))
    assert {"pgd-bpda", "square"} <= runs and not runs & {"pgd-eot", "pgd-bpda-eot"}


def test_randomized_defense_gets_eot_and_no_square():
    runs = _runs_against(Defense(LinearClassifier(576, 10),
                                 [RandomCropRescale(24)]))
    assert {"pgd-eot"} <= runs and "square" not in runs


def test_observed_randomness_overrides_the_declaration():
    """A defense that hides its randomness still gets EOT: the runner marks it randomized."""
    quiet = Defense(LinearClassifier(784, 10))
    assert not make_attack("pgd-eot").applies_to(quiet)
    quiet.randomized = True
    assert make_attack("pgd-eot").applies_to(quiet)
    assert not make_attack("square").applies_to(quiet)


def test_every_skip_has_a_reason_and_unknown_facts_skip_only_dependent_attacks():
    facts = defense_facts(Defense(LinearClassifier(784, 10), [Quantize(4)]))
    assert facts == {"randomized": False, "differentiable": False, "rejects": False, "abstains": False,
                     "zero_gradients": False, "reparameterization": False}
    reasons = {a: make_attack(a).not_applicable(facts) for a in attack_ids()}
    assert reasons["pgd-eot"] and "deterministic" in reasons["pgd-eot"]
    assert reasons["pgd-bpda"] is None and reasons["square"] is None
    unknown = {a: make_attack(a).not_applicable({}) for a in attack_ids()}
    assert unknown["pgd"] is None and unknown["fgsm"] is None
    assert unknown["pgd-eot"] and unknown["square"] and unknown["reparam"]


def test_site_does_not_call_an_inapplicable_attack_missing(submissions, tmp_path):
    """A run records the defense's facts: against the deterministic, differentiable
    dummy-linear the EOT and BPDA variants are 'not applicable', not 'missing'."""
    from gauntlet.benchmark.runner import RunConfig, run

    run(RunConfig(submissions_dir=submissions, defenses=("dummy-linear",), attacks=("fgsm", "pgd-eot"),
                  threats=("linf-0.031",), n_examples=10, results_dir=tmp_path, sweep=False, isolate=False),
        progress=False)
    assert not list(tmp_path.rglob("pgd-eot.json"))
    board = agg.load_board(tmp_path)
    skipped = agg.not_applicable_attacks(board, "mnist-embedded", "dummy-linear")
    assert {"pgd-bpda", "pgd-eot", "pgd-bpda-eot", "reparam", "pgd-blind", "spsa"} == set(skipped)
    missing = agg.missing_attacks(board, "mnist-embedded", "dummy-linear", "linf-0.031")
    assert "pgd-eot" not in missing and {"square", "apgd-ce"} <= set(missing)


def test_progress_bar_total_drops_an_attack_that_does_not_apply(submissions, tmp_path, capsys):
    """Two planned jobs, one of which (EOT against a deterministic defense) does not
    apply: the bar ends at 1/1, not at 2/2 with a job that never ran."""
    from gauntlet.benchmark.runner import RunConfig, run

    run(RunConfig(submissions_dir=submissions, defenses=("dummy-linear",), attacks=("fgsm", "pgd-eot"),
                  threats=("linf-0.031",), n_examples=10, results_dir=tmp_path, sweep=False, isolate=False,
                  certify=False), progress=True)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert " 1/1 " in last and "100%" in last, last


class DistanceDetector(Defense):
    """A linear classifier with a detector that rejects inputs far from every reference
    (clean) input. The class logits are shifted to a maximum of 0 and the reject logit is
    500·(RMS distance to the nearest reference − threshold): argmax is "reject" exactly
    when the distance exceeds the threshold, and the two parts have separate gradients."""

    def __init__(self, classifier: torch.nn.Module, reference: torch.Tensor, threshold: float) -> None:
        super().__init__(classifier, rejects=True)
        self.reference, self.threshold = reference.flatten(1), threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(x)
        dist = torch.cdist(x.flatten(1), self.reference).amin(1) / self.reference.shape[1] ** 0.5
        shifted = logits - logits.amax(1, keepdim=True)
        return torch.cat([shifted, (500.0 * (dist - self.threshold)).unsqueeze(1)], 1)


def test_rejection_aware_pgd_evades_a_detector_the_blind_one_trips(one_thread):
    """pgd-blind ignores the reject logit and moves every pixel by ε, which the detector
    sees; pgd folds the reject logit into its loss and stays under the threshold."""
    from gauntlet.attacks.base import AttackContext
    from gauntlet.benchmark.scoring import score
    from gauntlet.benchmark.threats import ThreatModel

    torch.manual_seed(0)
    clf = LinearClassifier(784, 10)
    x = torch.rand(32, 1, 28, 28) * 0.8 + 0.1
    y = clf(x).argmax(1)
    threat = ThreatModel("linf", 0.1)
    defense = DistanceDetector(clf, x, threshold=0.04).eval()
    out = {}
    for a in ("pgd", "pgd-blind"):
        x_adv = make_attack(a).run(defense, x, y, threat, AttackContext(torch.Generator().manual_seed(0))).x_adv
        s = score(defense, x_adv, y, 1)
        out[a] = (float(s.survives.mean()), float(s.rejected.mean()))
    assert score(defense, x, y, 1).rejected.sum() == 0
    assert out["pgd-blind"][1] > 0.5, out  # blind: most adversarial inputs are rejected
    assert out["pgd"][0] < out["pgd-blind"][0] - 0.3, out
