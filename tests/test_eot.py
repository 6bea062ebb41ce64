"""EOT against a randomized defense (Athalye et al. 2018, §4.2).

The defense adds fresh Gaussian noise (σ = 0.5) to every input in front of the committed
σ = 0.5 noise-trained base model. A naive attacker differentiates one draw per step; EOT
averages k = 10 draws per gradient, and so finds points that fool the defense on average.
Slice: the first 40 examples of mnist-embedded's evaluation order, scored with 10 draws.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gauntlet.attacks.base import AttackContext
from gauntlet.attacks.registry import make_attack
from gauntlet.benchmark.datasets import get_dataset
from gauntlet.benchmark.registry import build_classifier, load_submission
from gauntlet.benchmark.scoring import score
from gauntlet.benchmark.threats import get_threat
from gauntlet.defenses.pipeline import Defense
from gauntlet.defenses.smoothing import GaussianNoise

pytestmark = pytest.mark.usefixtures("one_thread")
SUBMISSION = Path(__file__).resolve().parent.parent / "submissions" / "cohen2019-smoothing-s050" / "manifest.yaml"


def test_pgd_eot_beats_pgd_on_a_noise_defense():
    model = build_classifier(load_submission(SUBMISSION)).eval()
    defense = Defense(model, [GaussianNoise(0.5)]).eval()
    ds = get_dataset("mnist-embedded")
    x, y = ds.split("test")
    idx = ds.eval_indices(40)
    x, y = x[idx], y[idx]
    threat = get_threat("linf-0.1")
    accs = {}
    for attack_id in ("pgd", "pgd-eot"):
        torch.manual_seed(0)
        res = make_attack(attack_id).run(defense, x, y, threat, AttackContext(torch.Generator().manual_seed(0)))
        threat.verify(res.x_adv, x)
        clean = score(defense, x, y, draws=10).correct
        accs[attack_id] = float(torch.minimum(clean, score(defense, res.x_adv, y, draws=10).survives).mean())
    assert accs["pgd-eot"] <= accs["pgd"] - 0.05, accs
