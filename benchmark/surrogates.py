"""The project's surrogate models, one per dataset, declared here and nowhere else.

The transfer attack (:mod:`gauntlet.attacks.transfer`) crafts its inputs on an undefended model
of the defense's dataset. Which model that is, is the project's choice: a reference
submission folder inside this repository, with the sha256 of its weights pinned below.
It is loaded from the repository whatever ``--submissions`` names, so a run over an
author's own folder (``gauntlet run --submissions mine/``) transfers from the same
model as the nightly run, and no submission, whatever its id, can become another
submission's surrogate. A dataset without an entry has no surrogate: the transfer
attack is then not applicable there (the ``surrogate`` fact, :mod:`gauntlet.benchmark.applicability`),
with that reason on the site; it does not fail.

Changing a surrogate is a change of this file (the harness source is part of every
result's config hash, :mod:`gauntlet.benchmark.code_hash`), so transfer results computed with the
old model are recomputed, not reused.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

#: The repository root (the surrogates' folders are relative to it).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Surrogate:
    """An undefended reference model of one dataset."""

    #: The reference submission folder, relative to the repository root.
    folder: str
    #: sha256 of its model weights (must equal the manifest's ``model.sha256``).
    weights_sha256: str


#: Dataset id → the project's surrogate for it.
SURROGATES: dict[str, Surrogate] = {
    "mnist-embedded": Surrogate("submissions/standard-cnn-mnist",
                                "fd58aae154108a90189fea4225dab59083c020828293d7d8b105635d56b45b18"),
    "cifar10": Surrogate("submissions/standard-cifar10",
                         "7ab43546143c8d6384e5b5431643e25fddd8000496f1f83349d33f0f38204520"),
}


class SurrogateError(RuntimeError):
    """A declared surrogate is missing or is not what this module declares."""


def has_surrogate(dataset_id: str) -> bool:
    """Whether the project declares a surrogate for ``dataset_id``."""
    return dataset_id in SURROGATES


def load_surrogate(dataset_id: str, device: str | torch.device = "cpu",
                   surrogates: dict[str, Surrogate] | None = None,
                   root: Path = PROJECT_ROOT) -> nn.Module | None:
    """The project's surrogate of a dataset, built (eval mode, parameters frozen), or None
    when the project declares none.

    Args:
        dataset_id: the defense's dataset.
        device: where to build it.
        surrogates: the declarations; default :data:`SURROGATES` (tests pass their own).
        root: what the declared folders are relative to.

    Raises:
        SurrogateError: the declared folder is missing or invalid, its manifest is of
            another dataset, has a preprocessing pipeline, or its weights' sha256 is not
            the pinned one (the weights file itself is checked against it on loading).
    """
    from gauntlet.benchmark.manifest import ManifestError
    from gauntlet.benchmark.registry import MANIFEST_NAME, build_defense, validate

    spec = (SURROGATES if surrogates is None else surrogates).get(dataset_id)
    if spec is None:
        return None
    path = root / spec.folder / MANIFEST_NAME
    where = f"the surrogate of {dataset_id} ({path})"
    if not path.is_file():
        raise SurrogateError(f"{where}: no such file; benchmark/surrogates.py declares it")
    try:
        subs, problems = validate([path])  # weights checked against the manifest's sha256
    except ManifestError as e:
        problems, subs = e.problems, []
    if problems or not subs:
        raise SurrogateError(f"{where} is invalid: " + "; ".join(problems))
    m = subs[0].manifest
    if m.dataset != dataset_id:
        raise SurrogateError(f"{where}: its dataset is {m.dataset!r}")
    if m.defense is not None:
        raise SurrogateError(f"{where}: a surrogate is an undefended model, this one has a defense pipeline")
    if m.model.sha256 != spec.weights_sha256:
        raise SurrogateError(f"{where}: model.sha256 is {m.model.sha256}, benchmark/surrogates.py pins "
                             f"{spec.weights_sha256}")
    return build_defense(subs[0], device)
