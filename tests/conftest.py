"""Shared fixtures: the committed dummy submissions, the offline data folder, small slices."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see benchmark/cli.py

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(os.environ.get("GAUNTLET_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def one_thread():
    """Tiny models: intra-op threads only add contention on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def submissions(tmp_path: Path) -> Path:
    """A writable copy of the dummy submissions (linear and quantized linear)."""
    dst = tmp_path / "submissions"
    shutil.copytree(FIXTURES / "submissions", dst)
    return dst


@pytest.fixture
def shared_data() -> Path:
    """The offline dataset folder (../shared/data); skipped when absent."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"offline data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mnist_test_slice() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 100 examples of mnist-embedded's evaluation order."""
    from gauntlet.benchmark.datasets import get_dataset

    ds = get_dataset("mnist-embedded")
    idx = ds.eval_indices(100)
    x, y = ds.split("test")
    return x[idx], y[idx]
