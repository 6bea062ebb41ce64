"""Each reference submission's training recipe on a tiny budget (1 epoch, 64 examples)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gauntlet.benchmark.registry import load_submission, resolve
from tests.training_jobs import tiny_job

SUBMISSIONS = Path(__file__).resolve().parents[1] / "submissions"

#: (submission id, tiny overrides of its recipe arguments)
CASES = [
    ("madry2018-pgd-at", {"epochs": 1, "steps": 2}),
    ("buckman2018-thermometer", {"epochs": 1}),
    ("buckman2018-thermometer-at", {"epochs": 1, "steps": 2}),
    ("guo2018-bit-depth", {"epochs": 1}),
    ("guo2018-jpeg", {"epochs": 1}),
    ("guo2018-crop-rescale", {"epochs": 1}),
    ("guo2018-tv-min", {"epochs": 1}),
    ("guo2018-quilting", {"epochs": 1}),
    ("dhillon2018-sap", {"epochs": 1}),
    ("xie2018-randomization", {"epochs": 1}),
    ("standard-cifar10", {"epochs": 1, "checkpoint": False}),
    ("madry2018-pgd-at-cifar10", {"epochs": 1, "checkpoint": False}),
    ("buckman2018-thermometer-at-cifar10", {"epochs": 1, "checkpoint": False}),
    ("na2018-cascade-at-cifar10", {"epochs": 1, "pretrain_epochs": 0, "source_steps": 1}),
    ("lipschitz-margin-cifar10", {"epochs": 1}),
]


@pytest.mark.parametrize("sub_id,overrides", CASES, ids=[c[0] for c in CASES])
def test_recipe_trains_on_a_tiny_budget(sub_id: str, overrides: dict) -> None:
    job = tiny_job(sub_id)
    before = {k: v.clone() for k, v in job.model.state_dict().items()}
    recipe = resolve(job.submission.manifest.train.recipe, job.submission.folder, sub_id)
    model = recipe(job, **{**job.submission.manifest.train.args, **overrides})
    assert model is job.model and not model.training
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the recipe did not update any parameter"
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    with torch.no_grad():
        logits = job.defense(job.x_train[:8])
    assert logits.shape == (8, 10) and torch.isfinite(logits).all()


def test_pgd_at_trains_on_adversarial_points_inside_the_ball(monkeypatch) -> None:
    """The inner maximization stays in the ε-ball and actually moves the inputs."""
    import gauntlet.defenses.adversarial as adversarial

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = adversarial.pgd_last_iterate

    def spy(view, evaluate, x, y, threat, steps, step_size, generator):
        xa = original(view, evaluate, x, y, threat, steps, step_size, generator)
        seen.append((x, xa))
        return xa

    monkeypatch.setattr(adversarial, "pgd_last_iterate", spy)
    job = tiny_job("madry2018-pgd-at", n=32)
    adversarial.pgd_at(job, eps=0.1, steps=3, epochs=1, batch_size=16, warmup_epochs=0)
    assert len(seen) == 2
    for x, xa in seen:
        delta = (xa - x).abs().amax()
        assert 0.05 < delta <= 0.1 + 1e-6
        assert xa.min() >= 0 and xa.max() <= 1


def test_pgd_at_rejects_bad_arguments() -> None:
    from gauntlet.defenses.adversarial import pgd_at

    with pytest.raises(ValueError):
        pgd_at(tiny_job("madry2018-pgd-at", n=8), eps=-1.0)


def test_save_weights_fills_an_empty_sha256_line(tmp_path) -> None:
    """A new submission has no digest yet: ``sha256:`` becomes ``sha256: <hex>``, valid YAML."""
    import shutil

    from gauntlet.benchmark.manifest import sha256_file
    from gauntlet.benchmark.training import save_weights

    folder = tmp_path / "standard-cnn-mnist"
    shutil.copytree(Path(__file__).resolve().parent.parent / "submissions" / "standard-cnn-mnist", folder)
    manifest = folder / "manifest.yaml"
    text = manifest.read_text()
    manifest.write_text("\n".join("  sha256:" if line.startswith("  sha256:") else line
                                  for line in text.splitlines()) + "\n")
    sub = load_submission(manifest)
    model = resolve(sub.manifest.model.factory, sub.folder, sub.id)(**sub.manifest.model.args)
    digest = save_weights(sub, model)
    again = load_submission(manifest)
    assert again.manifest.model.sha256 == digest == sha256_file(folder / "weights.pt")


def test_a_resumed_recipe_gives_the_weights_of_an_uninterrupted_one(tmp_path) -> None:
    """Checkpoints after each epoch: stopping after one epoch and running again gives the
    weights of one uninterrupted run, bit for bit (model, optimizer, schedule, generators)."""
    import shutil

    from gauntlet.benchmark.registry import load_submission
    from gauntlet.benchmark.training import make_job
    from gauntlet.defenses.recipes import sgd_augmented
    from tests.training_jobs import synthetic_digits

    folder = tmp_path / "standard-cifar10"
    shutil.copytree(SUBMISSIONS / "standard-cifar10", folder)
    sub = load_submission(folder / "manifest.yaml")
    x, y = synthetic_digits(48, shape=(3, 32, 32))
    args = dict(epochs=2, lr=0.05, batch_size=16, log=False)
    whole = sgd_augmented(make_job(sub, x, y, seed=3), **args).state_dict()
    assert not list(folder.glob(".checkpoint-*"))  # removed when the recipe returns

    job = make_job(sub, x, y, seed=3)
    calls = []

    class Stop(Exception):
        pass

    from gauntlet.defenses import recipes

    real_print = recipes.Checkpoint.end_epoch

    def stop_after_first(self, schedule, epoch, stats):
        real_print(self, schedule, epoch, stats)
        calls.append(epoch)
        if epoch == 0:
            raise Stop

    recipes.Checkpoint.end_epoch = stop_after_first
    try:
        with pytest.raises(Stop):
            sgd_augmented(job, **args)
    finally:
        recipes.Checkpoint.end_epoch = real_print
    assert list(folder.glob(".checkpoint-*"))
    resumed = sgd_augmented(make_job(sub, x, y, seed=3), **args).state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
