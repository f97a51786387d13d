"""Rows of one layer's hidden states, normalised, in chunks of a fixed size: what the heads are fitted on.

`Rows` reads the rows it names from a StoredTensor (stored.py: from disk, or from memory while the layer is
resident) or from an in-memory tensor, the same way: chunk by chunk, `chunk_rows` rows each, holding each
chunk's working set in the memory budget while it is used. Sums over rows (the loss, its gradient, the
normalisation statistics) add chunk by chunk in that fixed order, so the result does not depend on where the
rows came from or on the budget.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from adaptive_think.training.budget import MemoryBudget


def working_bytes(rows: int, d: int, width: int) -> int:
    """Estimated bytes a chunk of `rows` rows of width `d` needs while a head of `width` units trains on it: the
    fp16 read, its fp32 copy, the normalised features, and the head's activations and their gradients."""
    return rows * (d * (2 + 4 + 4) + width * 4 * 4)


def budget_of(hidden) -> MemoryBudget:
    """The budget of a StoredStates, or no limit for tensors already in memory (a dict of tensors)."""
    return getattr(hidden, "budget", None) or MemoryBudget(None)


def resident(hidden, key: str, reserve: int = 0):
    """StoredStates.resident for stored states; nothing to do for a dict of tensors (already in memory)."""
    return hidden.resident(key, reserve) if hasattr(hidden, "resident") else nullcontext(True)


class Rows:
    """Rows `index` [R] of `h` ([N, D] tensor or StoredTensor), as (h - mean) / std, with labels `y` [R]."""

    def __init__(self, h, index: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None,
                 y: torch.Tensor | None, chunk_rows: int, budget: MemoryBudget, width: int = 0):
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows={chunk_rows} must be at least 1.")
        self.h, self.index, self.mean, self.std, self.y = h, index, mean, std, y
        self.chunk_rows, self.budget, self.width = chunk_rows, budget, width
        self._kept: list | None = None  # the chunks, while `kept` holds them

    @classmethod
    def of_tensor(cls, x: torch.Tensor, y: torch.Tensor | None, chunk_rows: int) -> "Rows":
        """Features already in memory (and already normalised)."""
        return cls(x, torch.arange(len(x)), None, None, y, chunk_rows, MemoryBudget(None))

    @property
    def dim(self) -> int:
        return self.h.shape[1]

    def __len__(self) -> int:
        return len(self.index)

    @contextmanager
    def kept(self):
        """Inside the block, the normalised chunks are computed once and kept, when they fit the budget (with one
        chunk's working set to spare); a pass over them many times (every epoch) then reads nothing."""
        size = len(self.index) * (self.dim * 4 + 8)
        if self._kept is not None or not self.budget.fits(size + working_bytes(self.chunk_rows, self.dim, self.width)):
            yield
            return
        with self.budget.hold(size, "normalised rows in memory"):
            self._kept = list(self.chunks())
            try:
                yield
            finally:
                self._kept = None

    def chunks(self):
        """Yields (x [r, D] fp32, y [r] or None) per chunk, in row order; the chunk is held in the budget."""
        if self._kept is not None:
            yield from self._kept
            return
        for lo in range(0, len(self.index), self.chunk_rows):
            idx = self.index[lo : lo + self.chunk_rows]
            with self.budget.hold(working_bytes(len(idx), self.dim, self.width), "a chunk of rows"):
                x = self.h[idx].float()  # [r, D]
                if self.mean is not None:
                    x = (x - self.mean) / self.std
                yield x, None if self.y is None else self.y[lo : lo + self.chunk_rows]


def column_stats(h, index: torch.Tensor, chunk_rows: int, budget: MemoryBudget) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], std [D] clamped at 1e-4) over the finite rows among `index` of `h`, summed in fp64 by chunks."""
    rows = Rows(h, index, None, None, None, chunk_rows, budget)
    total, n = torch.zeros(rows.dim, dtype=torch.float64), 0
    for x, _ in rows.chunks():
        x = x[torch.isfinite(x).all(-1)].double()
        total += x.sum(0)
        n += len(x)
    if n < 2:
        raise ValueError(f"Only {n} training rows with finite hidden states: too few to normalise; collect more.")
    mean = total / n
    square = torch.zeros(rows.dim, dtype=torch.float64)
    for x, _ in rows.chunks():
        square += ((x[torch.isfinite(x).all(-1)].double() - mean) ** 2).sum(0)
    return mean.float(), (square / (n - 1)).sqrt().float().clamp_min(1e-4)
