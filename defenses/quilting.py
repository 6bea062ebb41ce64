"""Image quilting against a patch database (Guo et al., ICLR 2018, §3; Efros & Freeman 2001).

Guo, Rana, Cissé & van der Maaten rebuild an image from patches of *clean training
images*: each patch of the input is replaced by one drawn at random among its K nearest
neighbours in the database, so the output contains no adversarial pattern, only
database patches. We tile the image with non-overlapping ``patch``×``patch`` patches
(Guo et al. quilt overlapping patches and blend along minimum-error seams; without the
overlap the output is *exactly* a mosaic of database patches).

The database is data, not code: a tensor file ``{"patches": (M, C, p, p) uint8}`` (8-bit
pixels, the datasets' own precision, a quarter of float32's size) in the
submission folder named by the step's ``weights`` (sha256-checked, loaded with
``weights_only=True``); :func:`build_database` makes it from a training split
(``python -m gauntlet.defenses.quilting <manifest.yaml> <out.pt> [n_images]``).

Nearest-neighbour search is a discontinuous function of the input and each call draws
a fresh neighbour per patch and row: ``differentiable = False`` (BPDA identity,
Athalye et al. 2018 §4.1) and ``randomized = True`` (EOT, §4.2).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from gauntlet.defenses.pipeline import Step


def _unfold(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) → (N, L, C·p·p) non-overlapping patches (H, W divisible by p)."""
    return F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)


def build_database(x: torch.Tensor, patch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Sample ``size`` distinct patches (all positions, stride 1) from training images.

    Args:
        x: (N, C, H, W) training images in [0, 1].
        patch: patch side.
        size: patches kept (fewer if there are fewer distinct ones).
        generator: seeds the sample.

    Returns:
        (M, C, patch, patch) uint8 patches (pixel value × 255).
    """
    c = x.shape[1]
    all_patches = F.unfold(x, kernel_size=patch, stride=1).transpose(1, 2).reshape(-1, c * patch * patch)
    distinct = torch.unique((all_patches * 255).round().to(torch.uint8), dim=0)
    pick = torch.randperm(len(distinct), generator=generator)[:size]
    return distinct[pick].view(-1, c, patch, patch)


class Quilting(Step):
    """Replace each non-overlapping patch by a random one of its K nearest database patches.

    Args:
        patch: patch side (Guo et al. use 5 on ImageNet; 4 tiles MNIST's 28×28 exactly).
        size: number M of database patches (the buffer loaded from the weights file).
        channels: image channels.
        k: neighbours to choose from (Guo et al.: K = 10).
        chunk: patches compared to the database per matrix product (bounds memory).

    Raises:
        ValueError: parameters out of range.
    """

    differentiable = False
    randomized = True

    def __init__(self, patch: int = 4, size: int = 8192, channels: int = 1, k: int = 10,
                 chunk: int = 4096) -> None:
        super().__init__()
        if patch < 1 or size < 1 or channels < 1 or chunk < 1 or not 1 <= k <= size:
            raise ValueError(f"need patch, size, channels, chunk >= 1 and 1 <= k <= size; got "
                             f"{patch}, {size}, {channels}, {chunk}, k={k}")
        self.patch, self.k, self.chunk = patch, k, chunk
        self.register_buffer("patches", torch.zeros(size, channels, patch, patch, dtype=torch.uint8))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # copy_ would truncate a float database in [0, 1] to zeros without a word
        given = state_dict.get(prefix + "patches")
        if given is not None and given.dtype != torch.uint8:
            raise ValueError(f"the quilting database must hold uint8 pixels, got {given.dtype} "
                             f"(rebuild it with python -m gauntlet.defenses.quilting)")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quilt each row with fresh neighbour draws.

        Raises:
            ValueError: the image side is not a multiple of ``patch`` or channels differ.
        """
        n, c, h, w = x.shape
        p = self.patch
        if h % p or w % p or c != self.patches.shape[1]:
            raise ValueError(f"input {tuple(x.shape)} does not tile into {c}-channel {p}x{p} patches "
                             f"of a {self.patches.shape[1]}-channel database")
        with torch.no_grad():
            db = (self.patches.to(x) / 255.0).flatten(1)  # (M, D)
            db_sq = db.pow(2).sum(1)
            queries = _unfold(x.detach(), p).reshape(-1, db.shape[1])  # (N·L, D)
            # identical patches (MNIST's empty background) share one search, not one draw
            uniq, inverse = torch.unique(queries, dim=0, return_inverse=True)
            nearest = torch.empty(len(uniq), self.k, dtype=torch.long, device=x.device)
            for i in range(0, len(uniq), self.chunk):
                q = uniq[i:i + self.chunk]
                # ‖q − d‖² up to the per-query constant ‖q‖²
                dist = db_sq.unsqueeze(0) - 2.0 * q @ db.T
                nearest[i:i + self.chunk] = dist.topk(self.k, dim=1, largest=False).indices
            choice = torch.randint(0, self.k, (len(queries),)).to(x.device)
            picked = nearest[inverse, choice]
            out = db[picked].view(n, -1, db.shape[1]).transpose(1, 2)
            return F.fold(out, output_size=(h, w), kernel_size=p, stride=p)


def main(argv: list[str]) -> int:
    """``python -m gauntlet.defenses.quilting <manifest.yaml> <out.pt> [n_images]``: build a
    submission's database from its dataset's training split (the first ``n_images`` of it,
    default all: CIFAR-10's 50,000 images hold ~42 M patches) with the Quilting step's
    ``patch``/``size`` arguments."""
    from gauntlet.benchmark.datasets import get_dataset
    from gauntlet.benchmark.manifest import parse_manifest, sha256_file

    if len(argv) not in (2, 3) or (len(argv) == 3 and not argv[2].isdigit()):
        print(main.__doc__, file=sys.stderr)
        return 2
    manifest = parse_manifest(Path(argv[0]))
    steps = [s for s in (manifest.defense.steps if manifest.defense else []) if s.factory.endswith(":Quilting")]
    if not steps:
        print(f"{argv[0]}: no Quilting step", file=sys.stderr)
        return 2
    args = steps[0].args
    x, _ = get_dataset(manifest.dataset).split("train")
    if len(argv) == 3:
        x = x[:int(argv[2])]
    db = build_database(x, args.get("patch", 4), args.get("size", 8192), torch.Generator().manual_seed(0))
    torch.save({"patches": db.contiguous()}, argv[1])
    print(f"{argv[1]}: {len(db)} patches from {len(x)} images, sha256 {sha256_file(Path(argv[1]))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
