"""Cascade adversarial training (Na, Ko & Mukhopadhyay, ICLR 2018) — training code.

Network B (the one trained here) sees, in every minibatch (paper §3, Figure 1):

* the clean images (adversarial images are *added*, not substituted);
* one-step least-likely-class ("step-ll", Kurakin et al. 2017) adversarial images of
  half of them, crafted on the fly against B itself;
* iterative adversarial images of the other half, crafted once, before training, against
  an already defended network A (the "cascade": the paper saves A's iter-FGSM images of
  the training set at every ε level and reads them during B's training).

The loss (paper Eq. 1 and the pivot loss of §2; the authors' code: λ = 0.3, λ2 = 1e-4,
squared ℓ2 distance halved and summed over the batch) is

    (Σ_clean CE + λ Σ_adv CE) / (n_clean + λ n_adv) + λ2 · ½ Σ_i ‖E(x_i^adv) − sg(E(x_i))‖²

where E is the embedding fed to the last linear layer and sg stops the gradient: the
clean embedding is the "pivot" the adversarial one is pulled towards (low-level
similarity learning with a unified embedding). ``pivot_stop_gradient=False`` drops sg, as
the authors' code does when embeddings are not normalized (the committed SmallCNN needs
it: with sg its unnormalized embeddings diverged under Adam).

ε of each adversarial image is drawn from |N(0, ε_max/2)| clipped to [0, ε_max]
(Kurakin et al. 2017's truncated normal, the authors' default); A's iterative images
exist at ``levels`` equally spaced ε, and each example picks the level its draw falls in.

Attack code is imported inside the recipe (a defense never imports an attack; DESIGN.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gauntlet.defenses.recipes import batches, cross_entropy_epochs, load_source

if TYPE_CHECKING:
    from gauntlet.benchmark.training import TrainingJob

EPS_SAMPLING = ("truncated-normal", "max")


def cascade_at(job: TrainingJob, eps: float = 0.1, source: str = "madry2018-pgd-at", source_steps: int = 10,
               source_step_size: float | None = None, levels: int = 4, eps_sampling: str = "truncated-normal",
               epochs: int = 6, pretrain_epochs: int = 1, lr: float = 1e-3, batch_size: int = 64,
               adv_weight: float = 0.3, pivot_weight: float = 1e-4, pivot_stop_gradient: bool = True) -> nn.Module:
    """Cascade adversarial training with the pivot (unified-embedding) loss, with Adam.

    Args:
        eps: largest ℓ∞ radius of the training adversarial images (inputs in [0, 1]).
        source: id of the already defended submission A, a folder of ``job.submissions_dir``
            on the same dataset; its weights are sha256-checked by the registry.
        source_steps: PGD iterations of A's iterative images (from a random start).
        source_step_size: their α as a fraction of ε; default 2.5/steps.
        levels: ε levels at which A's images are pre-generated (ε·l/levels, l = 1..levels).
        eps_sampling: ``"truncated-normal"`` (ε ~ |N(0, eps/2)| clipped to eps, the
            paper's) or ``"max"`` (every adversarial image at ``eps``).
        epochs: cascade passes over the training split.
        pretrain_epochs: clean epochs first (the authors start adversarial training from
            a briefly trained clean network).
        lr: Adam learning rate.
        batch_size: clean images per step; as many adversarial images are added
            (half step-ll, half from A), so each step sees 2·batch_size rows.
        adv_weight: λ, the weight of the adversarial cross-entropy terms.
        pivot_weight: λ2, the weight of the pivot loss (0 disables it).
        pivot_stop_gradient: treat the clean embedding as a constant (the paper's pivot);
            False lets the gradient reach both embeddings, as the authors' code does when
            embeddings are not normalized.

    Returns:
        The trained classifier, in eval mode.

    Raises:
        ValueError: parameters out of range, an unknown ``source`` or one on another dataset,
            or a pivot loss on a model without a final linear layer.
    """
    if (eps <= 0 or source_steps < 1 or levels < 1 or epochs < 0 or pretrain_epochs < 0 or batch_size < 2
            or adv_weight < 0 or pivot_weight < 0 or eps_sampling not in EPS_SAMPLING):
        raise ValueError(f"cascade_at: need eps > 0, source_steps >= 1, levels >= 1, epochs >= 0, "
                         f"pretrain_epochs >= 0, batch_size >= 2, adv_weight >= 0, pivot_weight >= 0 and "
                         f"eps_sampling in {EPS_SAMPLING}")
    model, defense = job.model, job.defense
    x, y = job.x_train.to(job.device), job.y_train.to(job.device)
    source_defense = load_source(job.submissions_dir, source, job.submission.manifest.dataset, job.device)
    step_size = 2.5 / source_steps if source_step_size is None else source_step_size
    # Generated once, before B's training: the paper crafts them from the already trained A.
    transferred = source_examples(source_defense, x, y, eps, levels, source_steps, step_size, job.generator)
    del source_defense

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    cross_entropy_epochs(opt, model, defense, x, y, pretrain_epochs, batch_size, job.generator)

    last_linear = _last_linear(model) if pivot_weight > 0 else None
    for _ in range(epochs):
        for idx in batches(len(x), batch_size, job.generator):
            xb, yb = x[idx], y[idx]
            half = len(idx) // 2
            e = sample_eps(len(idx), eps, eps_sampling, job.generator).to(xb)
            model.eval()  # the one-step attack runs on the frozen current model
            x_ll = step_ll(defense, xb[:half], e[:half])
            model.train()
            level = level_index(e[half:], eps, levels)
            x_a = transferred[level, idx[half:]]
            x_adv = torch.cat([x_ll, x_a])
            loss = cascade_loss(defense, last_linear, xb, yb, x_adv, adv_weight, pivot_weight,
                                pivot_stop_gradient)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


def source_examples(source: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, levels: int, steps: int,
                    step_size: float, generator: torch.Generator) -> torch.Tensor:
    """A's iterative images of every training image at ε·l/levels, shape (levels, N, ...).

    PGD on A's adaptive view (BPDA through any non-differentiable step) from a uniform
    random start; the paper's iter-FGSM without the random start.
    """
    from gauntlet.attacks.adaptive import AdaptiveView, evaluate
    from gauntlet.benchmark.threats import ThreatModel
    from gauntlet.defenses.adversarial import pgd_last_iterate

    view = AdaptiveView(source, bpda=True)
    out = [pgd_last_iterate(view, evaluate, x, y, ThreatModel("linf", eps * (l + 1) / levels), steps, step_size,
                            generator)
           for l in range(levels)]
    return torch.stack(out)


def sample_eps(n: int, eps: float, sampling: str, generator: torch.Generator) -> torch.Tensor:
    """Per-example ε: |N(0, eps/2)| clipped to [0, eps] (Kurakin et al. 2017), or ``eps``."""
    if sampling == "max":
        return torch.full((n,), float(eps))
    return (torch.randn(n, generator=generator) * eps / 2).abs().clamp(max=eps)


def level_index(e: torch.Tensor, eps: float, levels: int) -> torch.Tensor:
    """Level l ∈ {0..levels−1} of A's image for a drawn ε: ⌊e/eps·levels⌋ capped (authors' rule)."""
    return (e / eps * levels).floor().long().clamp(0, levels - 1).cpu()


def step_ll(defense: nn.Module, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """One step towards the least-likely class: x − ε·sign(∇ₓ CE(f(x), y_LL)) (Kurakin et al. 2017)."""
    from gauntlet.attacks.adaptive import AdaptiveView, evaluate

    if len(x) == 0:
        return x
    view = AdaptiveView(defense, bpda=True)
    with torch.no_grad():
        y_ll = defense(x).argmin(dim=1)
    g = torch.nan_to_num(evaluate(view, x, y_ll, "ce").grad)
    return (x - eps.view(-1, *([1] * (x.dim() - 1))) * g.sign()).clamp(0.0, 1.0).detach()


def cascade_loss(defense: nn.Module, last_linear: nn.Linear | None, x: torch.Tensor, y: torch.Tensor,
                 x_adv: torch.Tensor, adv_weight: float, pivot_weight: float,
                 stop_gradient: bool = True) -> torch.Tensor:
    """Weighted clean + adversarial cross-entropy plus the pivot loss (module docstring).

    ``x_adv[i]`` is an adversarial version of ``x[i]``; ``last_linear`` is the classifier's
    final linear layer, whose input is the embedding (None: no pivot loss);
    ``stop_gradient`` makes the clean embedding a constant target (the paper's pivot).
    """
    captured: list[torch.Tensor] = []
    hook = None
    if last_linear is not None and pivot_weight > 0:
        hook = last_linear.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        logits = defense(torch.cat([x, x_adv]))
    finally:
        if hook is not None:
            hook.remove()
    n = len(x)
    ce = F.cross_entropy(logits, torch.cat([y, y]), reduction="none")
    # Paper Eq. 1: (Σ_clean + λ Σ_adv) / ((m − k) + λ k)
    loss = (ce[:n].sum() + adv_weight * ce[n:].sum()) / (n + adv_weight * len(x_adv))
    if captured:
        emb = captured[0].flatten(1)
        clean = emb[:n].detach() if stop_gradient else emb[:n]
        loss = loss + pivot_weight * 0.5 * (emb[n:] - clean).pow(2).sum()
    return loss


def _last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model`` (its input is the embedding).

    Raises:
        ValueError: the model has no linear layer.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("cascade_at: the pivot loss needs a final nn.Linear layer (set pivot_weight: 0)")
    return linears[-1]
