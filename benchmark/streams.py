"""Random streams per example, so that an example's draws do not depend on its batch.

An attack's random draws (starting points, Square's windows, SPSA's probes) come from a
stream of the example's own: value j of example i is SplitMix64 (Steele, Lea & Flood
2014, the generator of Java's ``SplittableRandom``) at state ``base_i + j·γ``, where
``base_i`` mixes the job seed with the example's key (its dataset index) and j counts
the values the example has drawn so far. So an example draws the same numbers whether
it is attacked alone, in a batch of 100, or after a cascade removed the examples an
earlier attack broke, and an attack that stops early on a broken example changes no
other example's draws. With one batch-invariant forward pass (see
:data:`gauntlet.attacks.adaptive.MIN_ROWS_PER_PASS`) an example's whole trajectory then depends
on itself only, which is what makes the cascade (:mod:`gauntlet.benchmark.cascade`) exact.

The functions :func:`rand`, :func:`randn`, :func:`randint`, :func:`signs` take either a
:class:`RowStreams` whose rows are the tensor's first dimension, a ``torch.Generator``
(one stream for the batch, as before) or None (the global generator), and :func:`rows`
narrows a :class:`RowStreams` to some of its rows (a generator is returned as is).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(v: int) -> int:
    """A 64-bit constant as torch's signed int64 (same bits)."""
    return v - (1 << 64) if v >= 1 << 63 else v


GAMMA, M1, M2 = _signed(_GAMMA), _signed(_M1), _signed(_M2)


def _lsr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic on signed ints)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function on int64 tensors (multiplication wraps modulo 2⁶⁴)."""
    z = (z ^ _lsr(z, 30)) * M1
    z = (z ^ _lsr(z, 27)) * M2
    return z ^ _lsr(z, 31)


class RowStreams:
    """One counter-based random stream per row.

    Args:
        seed: the job's seed.
        keys: one integer per row naming its example (the dataset index); equal keys
            under one seed draw equal numbers.
    """

    def __init__(self, seed: int, keys: Sequence[int] | torch.Tensor) -> None:
        keys = torch.as_tensor(keys, dtype=torch.int64).flatten().cpu()
        seed_state = mix(torch.tensor([_signed(int(seed) % (1 << 64))], dtype=torch.int64))
        self._base = mix(seed_state ^ mix(keys * GAMMA + 1))
        self._counter = torch.zeros(len(keys), dtype=torch.int64)
        self._rows = torch.arange(len(keys))

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, idx: torch.Tensor | Sequence[int]) -> RowStreams:
        """The streams of rows ``idx`` of this view (sharing their counters)."""
        out = RowStreams.__new__(RowStreams)
        out._base, out._counter = self._base, self._counter
        out._rows = self._rows[torch.as_tensor(idx, dtype=torch.int64).cpu()]
        return out

    def fork(self, k: int) -> RowStreams:
        """k fresh streams per row, as the rows of a batch ``x.repeat(k, ...)`` (row
        j·n + i is example i's j-th stream); each row's seed is its next value here, so
        every fork differs from the last."""
        seeds = self.bits(1).view(-1)
        out = RowStreams.__new__(RowStreams)
        j = torch.arange(k, dtype=torch.int64).repeat_interleave(len(self))
        out._base = mix(seeds.repeat(k) ^ mix(j * GAMMA + 2))
        out._counter = torch.zeros(len(out._base), dtype=torch.int64)
        out._rows = torch.arange(len(out._base))
        return out

    def bits(self, per_row: int) -> torch.Tensor:
        """The next ``per_row`` 64-bit values of every row, as (rows, per_row) int64."""
        rows = self._rows
        start = self._counter[rows]
        j = torch.arange(per_row, dtype=torch.int64)
        state = self._base[rows].unsqueeze(1) + (start.unsqueeze(1) + j) * GAMMA
        self._counter[rows] = start + per_row
        return mix(state)


Draws = Union[RowStreams, torch.Generator, None]


def _per_row(streams: RowStreams, shape: Sequence[int]) -> int:
    shape = tuple(shape)
    if not shape or shape[0] != len(streams):
        raise ValueError(f"a draw of shape {shape} from streams of {len(streams)} rows: "
                         "the first dimension must be the rows")
    n = 1
    for s in shape[1:]:
        n *= int(s)
    return n


def rand(g: Draws, shape: Sequence[int]) -> torch.Tensor:
    """Uniform float32 values in [0, 1) (24-bit resolution from a :class:`RowStreams`)."""
    if not isinstance(g, RowStreams):
        return torch.rand(tuple(shape), generator=g)
    u = _lsr(g.bits(_per_row(g, shape)), 40).to(torch.float32) * 2.0 ** -24
    return u.view(tuple(shape))


def _rand53(g: RowStreams, shape: Sequence[int], factor: int = 1) -> torch.Tensor:
    n = _per_row(g, shape)
    return _lsr(g.bits(n * factor), 11).to(torch.float64) * 2.0 ** -53


def randn(g: Draws, shape: Sequence[int]) -> torch.Tensor:
    """Standard normal float32 values (Box–Muller on two uniforms per value)."""
    if not isinstance(g, RowStreams):
        return torch.randn(tuple(shape), generator=g)
    u = _rand53(g, shape, 2).view(len(g), -1, 2)
    z = torch.sqrt(-2.0 * torch.log1p(-u[..., 0])) * torch.cos(2 * torch.pi * u[..., 1])
    return z.to(torch.float32).view(tuple(shape))


def randint(g: Draws, low: int, high: int, shape: Sequence[int]) -> torch.Tensor:
    """Integers uniform in [low, high) (int64)."""
    if not isinstance(g, RowStreams):
        return torch.randint(low, high, tuple(shape), generator=g)
    u = _rand53(g, shape)
    return (low + torch.floor(u * (high - low)).to(torch.int64)).clamp_(max=high - 1).view(tuple(shape))


def signs(g: Draws, shape: Sequence[int]) -> torch.Tensor:
    """±1 float32 values, each sign with probability 1/2, from the bits of random words:
    64 signs per 64-bit value of a :class:`RowStreams`, 8 per random byte of a generator
    (each row starting on a fresh byte). Unpacking bits costs a fraction of one Bernoulli
    draw per sign, which dominated SPSA's time on small models (128·d signs per example
    and step)."""
    if not isinstance(g, RowStreams):
        rows = int(shape[0]) if len(shape) else 1
        cols = 1
        for s in tuple(shape)[1:]:
            cols *= int(s)
        width = (cols + 7) // 8
        raw = torch.randint(0, 256, (rows, width), generator=g, dtype=torch.uint8)
        bits = (raw.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
        return bits.view(rows, width * 8)[:, :cols].to(torch.float32).mul_(2).sub_(1).view(tuple(shape))
    n = _per_row(g, shape)
    words = g.bits((n + 63) // 64)
    shifts = torch.arange(64, dtype=torch.int64)
    bit = (words.unsqueeze(-1) >> shifts) & 1  # (rows, words, 64); bit 63 too: -1 & 1 = 1
    return (bit.view(len(g), -1)[:, :n].to(torch.float32) * 2 - 1).view(tuple(shape))


def fork(g: Draws, k: int) -> Draws:
    """:meth:`RowStreams.fork` (a generator or None is shared by every row)."""
    return g.fork(k) if isinstance(g, RowStreams) else g


def rows(g: Draws, idx: torch.Tensor | Sequence[int]) -> Draws:
    """``g`` narrowed to rows ``idx`` (a generator or None is shared by every row)."""
    return g.rows(idx) if isinstance(g, RowStreams) else g
