"""Lipschitz network: the bound is an upper bound, and certified points survive PGD."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from gauntlet.attacks.adaptive import AdaptiveView, evaluate
from gauntlet.attacks.pgd import pgd
from gauntlet.benchmark.certify import certify_submission
from gauntlet.benchmark.manifest import LipschitzCertificate
from gauntlet.benchmark.threats import ThreatModel
from gauntlet.defenses.lipschitz import LipschitzCNN, NormalizedConv2d, margin_certificate
from gauntlet.defenses.pipeline import Defense

SUBMISSION = Path(__file__).resolve().parents[1] / "submissions" / "lipschitz-margin" / "manifest.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


def _small_net(seed: int = 0) -> LipschitzCNN:
    torch.manual_seed(seed)
    net = LipschitzCNN(width=4, image_size=8, hidden=16)
    net.train()
    for _ in range(5):  # a few σ updates, as in training
        net(torch.rand(2, 1, 8, 8))
    return net.eval()


def test_conv_bound_is_above_the_exact_operator_norm_and_close_to_it():
    torch.manual_seed(0)
    conv = NormalizedConv2d(2, 3, 3, image_size=6).eval()
    n = 2 * 6 * 6
    basis = torch.eye(n).view(n, 2, 6, 6)
    with torch.no_grad():
        matrix = F.conv2d(basis, conv.weight / conv.sigma, padding=1).reshape(n, -1)
    exact = float(torch.linalg.matrix_norm(matrix.double(), ord=2))
    bound = conv.norm_bound()
    assert exact <= bound <= 1.3 * exact


def test_bound_dominates_gradient_norms_and_difference_quotients():
    net = _small_net()
    lip = net.lipschitz_bound()
    assert net.lipschitz_power_estimate(50) <= lip
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 8, 8, generator=g, requires_grad=True)
    z = net(x)
    # ‖J‖₂ ≥ ‖Jᵀv‖ for unit v: random output directions and the top-logit direction
    worst = 0.0
    for _ in range(8):
        v = torch.randn(z.shape, generator=g)
        v = v / v.norm(dim=1, keepdim=True)
        grad, = torch.autograd.grad((z * v).sum(), x, retain_graph=True)
        worst = max(worst, float(grad.flatten(1).norm(dim=1).max()))
    assert worst <= lip
    with torch.no_grad():
        a, b = torch.rand(512, 1, 8, 8, generator=g), torch.rand(512, 1, 8, 8, generator=g)
        b = a + 0.01 * (b - a)
        quotient = (net(a) - net(b)).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert float(quotient.max()) <= lip


def _certified_survive_pgd(defense, x, y, lip):
    with torch.no_grad():
        pred, radius = margin_certificate(defense(x), lip)
    d = x[0].numel()
    checked = 0
    for i in range(len(x)):
        if pred[i] != y[i] or radius[i] <= 1e-4:
            continue
        threat = ThreatModel("l2", float(radius[i]) / math.sqrt(d))
        x_adv, _ = pgd(AdaptiveView(defense), x[i:i + 1], y[i:i + 1], threat, steps=25,
                       step_size=2.5 / 25, restarts=1, random_start=True, loss="margin",
                       generator=torch.Generator().manual_seed(i))
        threat.verify(x_adv, x[i:i + 1])
        with torch.no_grad():
            assert int(defense(x_adv).argmax(1)) == int(y[i])
        checked += 1
    return checked


def test_certified_points_survive_pgd_at_their_radius_small_net():
    net = _small_net(1)
    defense = Defense(net).eval()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = defense(x).argmax(1)  # the net's own labels: every point is "correct"
    assert _certified_survive_pgd(defense, x, y, net.lipschitz_bound()) >= 4


def test_certified_points_of_the_submission_survive_pgd():
    if not SUBMISSION.is_file():
        pytest.skip("lipschitz-margin submission not present")
    from gauntlet.benchmark.datasets import get_dataset
    from gauntlet.benchmark.registry import build_defense, load_submission

    sub = load_submission(SUBMISSION)
    defense = build_defense(sub)
    x, y = get_dataset("mnist-embedded").split("test")
    idx = torch.arange(0, 1000, 125)
    lip = defense.classifier.lipschitz_bound()
    assert _certified_survive_pgd(defense, x[idx], y[idx], lip) >= 3
    rec = certify_submission(sub, defense, x[idx], y[idx], indices=idx.tolist(),
                             threats=[ThreatModel("l2", 0.005)], device="cpu", seed=0)
    assert rec["info"]["lipschitz_constant"] == pytest.approx(lip)
    assert rec["params"] == {} and rec["method"] == "lipschitz"


def test_certify_submission_lipschitz_record_matches_margins():
    net = _small_net(2)
    defense = Defense(net).eval()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        z = defense(x)
    y = z.argmax(1)
    y[0] = (y[0] + 1) % 10
    sub = SimpleNamespace(manifest=SimpleNamespace(certify=LipschitzCertificate(method="lipschitz")),
                          path=Path("m.yaml"))
    rec = certify_submission(sub, defense, x, y, indices=list(range(5)), threats=[ThreatModel("l2", 0.0)],
                             device="cpu", seed=0)
    top2 = z.topk(2, dim=1).values
    expected = (top2[:, 0] - top2[:, 1]) / (math.sqrt(2) * net.lipschitz_bound())
    assert rec["per_example"]["radius"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert rec["per_example"]["correct"] == [0, 1, 1, 1, 1]
    assert rec["summary"]["certified_accuracy"] == {"l2-0": 0.8}
