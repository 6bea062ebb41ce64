"""``gauntlet train <id>``: run a manifest's recipe, save the weights, record their sha256.

A recipe is a function ``recipe(job: TrainingJob, **args) -> nn.Module`` named in the
manifest's ``train`` block. It gets a freshly built, untrained classifier, the defense's
preprocessing built around it (so a model can be trained on encoded inputs), the
training split and a seeded generator, and returns the trained classifier. The trainer
writes its ``state_dict`` to the manifest's ``model.weights`` and rewrites only the
``sha256:`` line of the manifest, so comments and layout survive.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gauntlet.benchmark.datasets import get_dataset
from gauntlet.benchmark.manifest import sha256_file
from gauntlet.benchmark.registry import Submission, build_defense, resolve


class TrainingError(RuntimeError):
    """The submission's own code failed while training: ``"<manifest>: <field>: <reason>"``.

    Attributes:
        bad_input: the code raised ``ValueError``, the recipes' (and factories') way of
            refusing their manifest arguments; anything else is a failed training job.
    """

    def __init__(self, message: str, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.bad_input)


@contextmanager
def _submission_code(sub: Submission, field: str) -> Iterator[None]:
    """Turn an exception raised by the submission's code into one :class:`TrainingError` line."""
    try:
        yield
    except Exception as e:  # the submission's code: anything can come out of it
        message = " ".join(str(e).split()) or "(no message)"
        raise TrainingError(f"{sub.path}: {field}: {type(e).__name__}: {message}",
                            bad_input=isinstance(e, ValueError)) from e


@dataclass
class TrainingJob:
    """Everything a recipe needs.

    Attributes:
        submission: the submission being trained.
        model: the untrained classifier (the manifest's ``model`` factory, fresh).
        defense: the full defense wrapped around ``model`` (shares its parameters).
        x_train: training inputs in [0, 1], (N, C, H, W).
        y_train: training labels.
        generator: seeded CPU generator for shuffling and noise.
        device: where to train.
        data_dir: the data folder (recipes that need other splits or surrogates).
        submissions_dir: the folder of all submissions (recipes that use another
            submission's model, e.g. cascade adversarial training).
    """

    submission: Submission
    model: nn.Module
    defense: nn.Module
    x_train: torch.Tensor
    y_train: torch.Tensor
    generator: torch.Generator
    device: torch.device
    data_dir: Path | None
    submissions_dir: Path


def train_submission(sub: Submission, *, submissions_dir: Path, data_dir: Path | None = None,
                     device: str = "cpu", seed: int = 0, overrides: dict | None = None,
                     write: bool = True) -> tuple[nn.Module, float]:
    """Train a submission from its manifest's recipe.

    Args:
        overrides: recipe arguments replacing the manifest's (e.g. a tiny budget in tests).
        write: save the weights and update the manifest's sha256.

    Returns:
        (trained model, wall seconds).

    Raises:
        ValueError: the manifest has no train block or no weights path.
        TrainingError: the submission's code (model factory, defense or recipe) raised;
            one line naming the manifest, the field and the exception.
    """
    m = sub.manifest
    if m.train is None:
        raise ValueError(f"{sub.path}: train: no recipe in the manifest")
    if m.model.weights is None:
        raise ValueError(f"{sub.path}: model.weights: needed to save the trained model")
    x, y = get_dataset(m.dataset).split("train", data_dir)
    with _submission_code(sub, "model"):
        job = make_job(sub, x, y, seed=seed, device=device, data_dir=data_dir, submissions_dir=submissions_dir)
    with _submission_code(sub, "train.recipe"):
        recipe = resolve(m.train.recipe, sub.folder, sub.id)
        args = {**m.train.args, **(overrides or {})}
        start = time.perf_counter()
        trained = recipe(job, **args)
        seconds = time.perf_counter() - start
    if not isinstance(trained, nn.Module):
        raise TrainingError(f"{sub.path}: train.recipe: {m.train.recipe} returned "
                            f"{type(trained).__name__}, not a torch.nn.Module")
    if write:
        save_weights(sub, trained)
    return trained, seconds


def make_job(sub: Submission, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0,
             device: str | torch.device = "cpu", data_dir: Path | None = None,
             submissions_dir: Path | None = None) -> TrainingJob:
    """A training job on ``(x, y)``: the manifest's model freshly initialized (after
    seeding torch with ``seed``), trainable, inside the submission's defense.

    Args:
        data_dir: where recipes that load more data look (None: the default).
        submissions_dir: where recipes that load another submission look.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = resolve(sub.manifest.model.factory, sub.folder, sub.id)(**sub.manifest.model.args)
    dev = torch.device(device)
    model.to(dev)
    defense = build_defense(sub, dev, classifier=model)
    for p in model.parameters():
        p.requires_grad_(True)
    return TrainingJob(sub, model, defense, x, y, gen, dev, data_dir, submissions_dir)


def save_weights(sub: Submission, model: nn.Module) -> str:
    """Save a state dict to the manifest's weights path and update its sha256 line."""
    path = sub.folder / sub.manifest.model.weights
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, path)
    digest = sha256_file(path)
    text = sub.path.read_text(encoding="utf-8")
    # [ \t] not \s: an empty value must not let the match run into the next line.
    new, count = re.subn(r"(?m)^(  sha256:)[ \t]*\S*[ \t]*$", rf"\g<1> {digest}", text, count=1)
    if count != 1:
        raise ValueError(f"{sub.path}: model.sha256: no '  sha256:' line under model to update")
    sub.path.write_text(new, encoding="utf-8")
    return digest


def _sandboxed_main(argv: list[str]) -> None:
    """``python -I -m gauntlet.benchmark.training REQUEST FD``: the sandbox's side of
    :func:`gauntlet.benchmark.sandbox.train_in_sandbox` (answers one JSON object on ``FD``)."""
    import json
    import os

    from gauntlet.benchmark.registry import load_submission

    request, fd = json.loads(argv[1]), int(argv[2])
    try:
        sub = load_submission(Path(request["manifest"]))
        data = Path(request["data_dir"]) if request["data_dir"] else None
        _, seconds = train_submission(sub, submissions_dir=Path(request["submissions"]), data_dir=data,
                                      device=request["device"], seed=int(request["seed"]))
        answer = {"ok": True, "seconds": seconds}
    except TrainingError as e:
        answer = {"ok": False, "error": str(e), "bad_input": e.bad_input}
    except Exception as e:  # noqa: BLE001 - one line back to the harness
        answer = {"ok": False, "error": f"{request['manifest']}: train: {type(e).__name__}: {e}",
                  "bad_input": isinstance(e, ValueError)}
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(answer))


if __name__ == "__main__":
    import sys

    _sandboxed_main(sys.argv)
