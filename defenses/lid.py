"""Detection by local intrinsic dimensionality (Ma et al., ICLR 2018).

Ma, Li, Wang, Erfani, Wijewickrema, Schoenebeck, Song, Houle & Bailey characterize
adversarial regions by their local intrinsic dimensionality (LID), estimated at every
layer of the classifier by the maximum-likelihood estimator of Amsaleg et al. (2015)
(Ma et al., Eq. 4):

    LID(a) = −( (1/k) Σ_{i=1..k} log(r_i(a) / r_k(a)) )⁻¹,

r_i(a) the distance from the activation vector a to its i-th nearest neighbour among
the activations of a batch of clean images. A logistic regression on the per-layer LID
values separates adversarial inputs (positives) from clean and Gaussian-noisy ones
(negatives) (Ma et al. §4–5; their code: k = 20 neighbours, minibatches of 100,
every layer's output including the input and the logits, noise scaled so that the
noisy inputs' ℓ2 distortion matches the adversarial ones').

Differences from the paper, because a deployed detector cannot see the attacker's batch:

* the neighbours come from a FIXED reference set of ``n_reference`` clean training
  images stored in the weights as 8-bit pixels (the datasets' own precision; 500 in
  the submission: a 100-image set, the size of the paper's minibatches, gave held-out
  AUCs about 0.1 lower); their activations are recomputed from the stored classifier
  and cached;
* one detector on a mix of attacks (FGSM, and PGD stopped at its first success
  "BIM-a" or run to the end "BIM-b", at several ℓ∞ ε) instead of one per attack.

:class:`LIDDetector` returns C + 1 logits: the classifier's C shifted to a maximum of 0
and a last "reject" logit ``s·(score(x) − τ)``, so that argmax = reject exactly when the detector's
logistic score exceeds its threshold τ (chosen on clean training images for a stated
false-positive rate). The k-NN distances, hence the LID features and the reject logit,
are differentiable in x almost everywhere: a rejection-aware gradient attack (the
reject logit folded into the loss, :func:`gauntlet.attacks.losses.fold_reject`) sees the
detector. Carlini & Wagner (2017, "Adversarial Examples Are Not Easily Detected") and
Athalye, Carlini & Wagner (2018, §5.1) show that such an attack evades LID.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gauntlet.defenses.models import make_classifier
from gauntlet.defenses.recipes import copy_classifier, cross_entropy_epochs

if TYPE_CHECKING:
    from gauntlet.benchmark.training import TrainingJob

log = logging.getLogger(__name__)

#: Floor of distances and of −mean log-ratio (a degenerate neighbourhood gives LID 1e4).
_TINY = 1e-4


# -- the estimator ------------------------------------------------------------------------

def pairwise_distances(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distances between the rows of ``a`` (N, D) and ``b`` (M, D), shape (N, M).

    Computed as √(‖a‖² + ‖b‖² − 2a·b) (one matrix product), floored at 1e-6 so that the
    square root keeps a finite gradient.

    Args:
        b_sq: ‖b_j‖², when precomputed.
    """
    if b_sq is None:
        b_sq = b.pow(2).sum(1)
    d2 = a.pow(2).sum(1, keepdim=True) + b_sq.unsqueeze(0) - 2.0 * a @ b.T
    return d2.clamp_min(1e-12).sqrt()


def lid_mle(distances: torch.Tensor, k: int) -> torch.Tensor:
    """Maximum-likelihood LID of each row from its distances to the reference points.

    Ma et al. (2018), Eq. 4 (Amsaleg et al. 2015): LID = −((1/k) Σ_i log(r_i/r_k))⁻¹
    over the k smallest distances r_1 ≤ … ≤ r_k.

    Args:
        distances: (N, M) distances, M ≥ k.
        k: neighbours used.

    Returns:
        (N,) LID estimates, differentiable in the distances almost everywhere.

    Raises:
        ValueError: k out of range.
    """
    if not 1 <= k <= distances.shape[1]:
        raise ValueError(f"k must be in [1, {distances.shape[1]}], got {k}")
    r = distances.topk(k, dim=1, largest=False).values.clamp_min(1e-6)  # ascending
    mean_log = torch.log(r / r[:, -1:]).mean(1)  # ≤ 0
    return -1.0 / mean_log.clamp_max(-_TINY)


def layer_outputs(classifier: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The input and every layer's output, flattened to (N, D_l); the last is the logits.

    "Every layer" is every leaf module in the order the forward pass calls it (forward
    hooks; ``nn.Flatten`` skipped, its output equals its input's), so a residual network
    is tapped inside its blocks as a plain stack is. Each output is copied when it is
    produced, before an in-place activation can overwrite it. When the classifier's
    output is not its last leaf's (ResNet-9 scales its head), it is appended. Ma et al.
    take every layer's output, the input included (their ``get_layer_wise_activations``).
    """
    taps: list[torch.Tensor] = [x.flatten(1)]
    last: list[torch.Tensor] = []  # the latest leaf output itself, to recognise the logits

    def tap(_module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        last[:] = [out]
        taps.append(out.flatten(1).clone())

    hooks = [m.register_forward_hook(tap) for m in _leaves(classifier) if not isinstance(m, nn.Flatten)]
    try:
        logits = classifier(x)
    finally:
        for h in hooks:
            h.remove()
    if not last or last[0] is not logits:
        taps.append(logits.flatten(1))
    return taps


def _leaves(module: nn.Module) -> list[nn.Module]:
    kids = list(module.children())
    if not kids:
        return [module]
    return [leaf for kid in kids for leaf in _leaves(kid)]


# -- the container ------------------------------------------------------------------------

class LIDDetector(nn.Module):
    """Classifier + fixed clean reference set + logistic regression on LID features.

    The manifest's ``model``: everything the defense needs in one state dict.

    Args:
        in_channels: input channels of the classifier.
        image_size: input height = width.
        num_classes: classes (logits before the reject logit).
        n_reference: clean reference images whose activations are the neighbours.
        k: nearest neighbours of the LID estimate (Ma et al.'s code: 20).
        reject_scale: s > 0 in the reject logit ``s·(score − τ)``.
        arch: the classifier, a name of :data:`gauntlet.defenses.models.ARCHITECTURES`.
        width: the classifier's first-layer channels.

    Raises:
        ValueError: parameters out of range.
    """

    #: Its last logit is "reject": :class:`gauntlet.defenses.pipeline.Defense` around it rejects.
    rejects = True

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 n_reference: int = 500, k: int = 20, reject_scale: float = 1.0,
                 arch: str = "small-cnn", width: int = 16) -> None:
        super().__init__()
        if not 1 <= k <= n_reference:
            raise ValueError(f"need 1 <= k <= n_reference, got k={k}, n_reference={n_reference}")
        if reject_scale <= 0:
            raise ValueError(f"reject_scale must be > 0, got {reject_scale}")
        self.classifier = make_classifier(arch, in_channels, num_classes, width, image_size)
        self.k = k
        self.reject_scale = reject_scale
        with torch.no_grad():
            probe = torch.zeros(1, in_channels, image_size, image_size)
            was = self.classifier.training
            taps = layer_outputs(self.classifier.eval(), probe)
            self.classifier.train(was)
        n_layers = len(taps)
        #: Clean training images whose activations are the LID neighbours, as 8-bit pixels.
        self.register_buffer("reference", torch.zeros(n_reference, in_channels, image_size, image_size,
                                                      dtype=torch.uint8))
        self.register_buffer("feature_mean", torch.zeros(n_layers))
        self.register_buffer("feature_std", torch.ones(n_layers))
        self.register_buffer("weight", torch.zeros(n_layers))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("threshold", torch.zeros(()))
        self._cache: tuple[tuple, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def set_reference(self, images: torch.Tensor) -> None:
        """Store clean images in [0, 1] as the reference set (rounded to 8 bits).

        Raises:
            ValueError: wrong shape.
        """
        if images.shape != self.reference.shape:
            raise ValueError(f"reference images must have shape {tuple(self.reference.shape)}, "
                             f"got {tuple(images.shape)}")
        self.reference.copy_((images.clamp(0.0, 1.0) * 255).round().to(torch.uint8))

    def reference_images(self) -> torch.Tensor:
        """The reference set in [0, 1], in the classifier's dtype."""
        dtype = next(self.classifier.parameters()).dtype
        return self.reference.to(dtype) / 255.0

    @property
    def n_layers(self) -> int:
        """LID features per input (layers tapped, input and logits included)."""
        return self.weight.numel()

    def reference_activations(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer: the reference set's activations (M, D_l) and their squared norms.

        Constants with respect to the input (computed without gradients), cached until
        the classifier's parameters or the reference images change (tensor versions
        count in-place updates: optimizer steps, ``load_state_dict``), or move.
        """
        tensors = [self.reference, *self.classifier.parameters()]
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                acts = layer_outputs(self.classifier, self.reference_images())
            self._cache = (key, [(a, a.pow(2).sum(1)) for a in acts])
        return self._cache[1]

    def lid_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L) LID features of ``x`` at every layer, and the classifier's logits."""
        outs = layer_outputs(self.classifier, x)
        refs = self.reference_activations()
        lids = [lid_mle(pairwise_distances(a, r, r_sq), self.k) for a, (r, r_sq) in zip(outs, refs)]
        return torch.stack(lids, 1), outs[-1]

    def score_features(self, lids: torch.Tensor) -> torch.Tensor:
        """The logistic regression's logit on standardized LID features (N,)."""
        return ((lids - self.feature_mean) / self.feature_std) @ self.weight + self.bias

    def detector_score(self, x: torch.Tensor) -> torch.Tensor:
        """Detector logit of ``x`` (N,): positive = more likely adversarial."""
        return self.score_features(self.lid_and_logits(x)[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """C + 1 logits: the classifier's shifted to a maximum of 0, then ``s·(score − τ)``
        for reject. Argmax is "reject" exactly when the detector fires; the shift changes no
        class probability, and it keeps the reject logit's gradient the detector's alone
        (tied to ``max_j z_j``, it would tell a rejection-aware attacker to lower the very
        class logit it must raise)."""
        lids, logits = self.lid_and_logits(x)
        score = self.score_features(lids)
        shifted = logits - logits.amax(1, keepdim=True)
        return torch.cat([shifted, (self.reject_scale * (score - self.threshold)).unsqueeze(1)], 1)


# -- training -----------------------------------------------------------------------------

def _input_grad(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇_x cross-entropy, logits) of the classifier at ``x``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = classifier(x)
        g = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)[0]
    return g, logits.detach()


def craft(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, eps: float,
          steps: int, generator: torch.Generator) -> torch.Tensor:
    """ℓ∞ adversarial examples against ``classifier`` (Ma et al.'s training attacks).

    Args:
        kind: ``"fgsm"`` (one step of ε, Goodfellow et al. 2015), ``"bim-a"`` (PGD from a
            uniform random start, each example frozen at its first misclassified
            iterate) or ``"bim-b"`` (PGD, last iterate); Ma et al. §5.1, after Kurakin
            et al. 2017. PGD step α = 2.5·ε/steps (Madry et al.'s rule).
        eps: ℓ∞ radius in [0, 1] input units.
        steps: PGD iterations.

    Raises:
        ValueError: unknown kind.
    """
    lo, hi = (x - eps).clamp_min(0.0), (x + eps).clamp_max(1.0)
    if kind == "fgsm":
        g, _ = _input_grad(classifier, x, y)
        return torch.clamp(x + eps * g.sign(), lo, hi)
    if kind not in ("bim-a", "bim-b"):
        raise ValueError(f"unknown attack kind {kind!r}")
    u = torch.rand(x.shape, generator=generator).to(x)
    xa = torch.clamp(x + (2 * u - 1) * eps, lo, hi)
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    alpha = 2.5 * eps / steps
    for _ in range(steps):
        g, logits = _input_grad(classifier, xa, y)
        if kind == "bim-a":
            done |= logits.argmax(1) != y
        step = torch.where(done.view(-1, 1, 1, 1), torch.zeros_like(g), g.sign())
        xa = torch.clamp(xa + alpha * step, lo, hi)
    return xa.detach()


def _fit_logistic(feats: torch.Tensor, labels: torch.Tensor, l2: float,
                  iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularized logistic regression by L-BFGS; returns (weight, bias)."""
    w = torch.zeros(feats.shape[1], dtype=feats.dtype, device=feats.device, requires_grad=True)
    b = torch.zeros((), dtype=feats.dtype, device=feats.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(feats @ w + b, labels) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """ROC AUC = P(score_pos > score_neg) + ½·P(equal) (Mann–Whitney)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos.view(-1, 1) - neg.view(1, -1)
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


def _lids(model: LIDDetector, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.lid_and_logits(x[i:i + batch])[0] for i in range(0, len(x), batch)])


def lid_recipe(job: TrainingJob, epochs: int = 8, lr: float = 1e-3, batch_size: int = 64,
               n_detector: int = 2000, eps: Sequence[float] = (0.1, 0.3),
               kinds: Sequence[str] = ("fgsm", "bim-a", "bim-b"), pgd_steps: int = 20,
               holdout: float = 0.2, fpr: float = 0.05, l2: float = 1e-3, lbfgs_iters: int = 200,
               classifier_source: str | None = None) -> nn.Module:
    """Train the classifier, craft the detector's training set, fit it, set its threshold.

    1. The classifier is trained with plain cross-entropy (Adam), like
       :func:`gauntlet.defenses.recipes.standard`, or, with ``classifier_source``, is a
       committed submission's classifier (its weights copied, sha256-checked).
    2. ``n_reference`` random training images become the reference set; up to
       ``n_detector`` of the others, correctly classified, are the detector's images.
    3. Each detector image gets one adversarial example (attack kind and ε cycled over
       ``kinds`` × ``eps``) and one noisy copy x + N(0, σ²) with σ = ‖δ‖₂/√d of its
       adversarial perturbation δ (Ma et al.: noise matched to the adversarial ℓ2).
       Positives: the adversarial examples that fool the classifier; negatives: clean
       and noisy images (Ma et al. §5.1).
    4. Standardized LID features, L2-regularized logistic regression (L-BFGS) fitted on
       a ``1 − holdout`` share of the images; ROC AUC reported on the rest.
    5. τ = the (1 − fpr) quantile of the clean fitted images' scores.

    The measurements are logged and left in ``model.fit_report`` (not saved).

    Args:
        epochs, lr, batch_size: classifier training.
        n_detector: images used to fit and test the detector.
        eps: ℓ∞ radii of the training attacks (inputs in [0, 1]).
        kinds: training attacks among ``"fgsm"``, ``"bim-a"``, ``"bim-b"``.
        pgd_steps: iterations of the BIM attacks.
        holdout: share of detector images kept out of the fit (AUC, clean FPR).
        fpr: target false-positive rate on clean images.
        l2: logistic regression's L2 penalty on the weights.
        lbfgs_iters: L-BFGS iterations.
        classifier_source: id of a submission on the same dataset whose classifier (the
            same architecture) is used as it is; ``epochs``, ``lr`` and ``batch_size``
            are then unused.

    Returns:
        The trained :class:`LIDDetector`, in eval mode.

    Raises:
        TypeError: the manifest's model is not an :class:`LIDDetector`.
        ValueError: parameters out of range.
    """
    model = job.model
    if not isinstance(model, LIDDetector):
        raise TypeError(f"lid_recipe trains an LIDDetector, got {type(model).__name__}")
    if not 0.0 < fpr < 1.0 or not 0.0 <= holdout < 1.0 or not eps or not kinds or n_detector < 2:
        raise ValueError("lid_recipe: need 0 < fpr < 1, 0 <= holdout < 1, eps and kinds non-empty, n_detector >= 2")
    gen = job.generator
    x, y = job.x_train.to(job.device), job.y_train.to(job.device)
    clf = model.classifier

    # 1. the classifier
    if classifier_source is None:
        opt = torch.optim.Adam(clf.parameters(), lr=lr)
        cross_entropy_epochs(opt, clf, clf, x, y, epochs, batch_size, gen)
    else:
        copy_classifier(job, classifier_source, clf)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    # 2. reference set and detector images
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    n_ref = len(model.reference)
    model.set_reference(x[perm[:n_ref]])
    cand = perm[n_ref:]
    with torch.no_grad():
        ok = torch.cat([clf(x[c]).argmax(1) == y[c] for c in cand.split(500)])
    det = cand[ok][:n_detector]
    xd, yd = x[det], y[det]

    # 3. adversarial and noisy copies
    combos = [(kind, e) for kind in kinds for e in eps]
    which = torch.arange(len(xd), device=x.device) % len(combos)
    xadv = xd.clone()
    for c, (kind, e) in enumerate(combos):
        rows = (which == c).nonzero().squeeze(1)
        for r in rows.split(250):
            xadv[r] = craft(clf, xd[r], yd[r], kind, e, pgd_steps, gen)
    d = xd[0].numel()
    sigma = (xadv - xd).flatten(1).norm(dim=1) / d ** 0.5
    noise = torch.randn(xd.shape, generator=gen).to(xd)
    xnoisy = (xd + sigma.view(-1, 1, 1, 1) * noise).clamp(0.0, 1.0)
    with torch.no_grad():
        fooled = torch.cat([clf(a).argmax(1) != b for a, b in zip(xadv.split(500), yd.split(500))])

    # 4. features and the logistic regression
    f_clean, f_noisy, f_adv = _lids(model, xd), _lids(model, xnoisy), _lids(model, xadv)
    fit = torch.rand(len(xd), generator=gen).to(x.device) >= holdout
    neg_fit = torch.cat([f_clean[fit], f_noisy[fit]])
    pos_fit = f_adv[fit & fooled]
    train_feats = torch.cat([pos_fit, neg_fit])
    mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    labels = torch.cat([torch.ones(len(pos_fit)), torch.zeros(len(neg_fit))]).to(train_feats)
    w, b = _fit_logistic((train_feats - mean) / std, labels, l2, lbfgs_iters)
    model.feature_mean.copy_(mean)
    model.feature_std.copy_(std)
    model.weight.copy_(w)
    model.bias.copy_(b)

    # 5. threshold for the target clean false-positive rate
    s_clean = model.score_features(f_clean)
    model.threshold.copy_(torch.quantile(s_clean[fit], 1.0 - fpr))
    model.fit_report = _report(model, f_clean, f_noisy, f_adv, fit, fooled, which, combos)
    log.info("LID detector: %s", model.fit_report)
    return model


def _report(model: LIDDetector, f_clean: torch.Tensor, f_noisy: torch.Tensor, f_adv: torch.Tensor,
            fit: torch.Tensor, fooled: torch.Tensor, which: torch.Tensor, combos: list) -> dict:
    """Held-out AUC, clean and noisy rejection rates and detection rate per attack."""
    held = ~fit
    s = {name: model.score_features(f) for name, f in (("clean", f_clean), ("noisy", f_noisy), ("adv", f_adv))}
    tau = model.threshold
    pos = held & fooled
    report = {
        "n_fit_images": int(fit.sum()), "n_heldout_images": int(held.sum()),
        "fooled_fraction": float(fooled.float().mean()),
        "heldout_auc": auc(s["adv"][pos], torch.cat([s["clean"][held], s["noisy"][held]])),
        "heldout_auc_vs_clean": auc(s["adv"][pos], s["clean"][held]),
        "fit_clean_rejection": float((s["clean"][fit] > tau).float().mean()),
        "heldout_clean_rejection": float((s["clean"][held] > tau).float().mean()),
        "heldout_noisy_rejection": float((s["noisy"][held] > tau).float().mean()),
        "heldout_detection": {},
    }
    for c, (kind, e) in enumerate(combos):
        rows = pos & (which == c)
        report["heldout_detection"][f"{kind}@{e:g}"] = float((s["adv"][rows] > tau).float().mean())
    return report
