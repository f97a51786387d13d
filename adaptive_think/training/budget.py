"""A memory budget for the hidden states train-probe holds at once (`train-probe --max-memory GB`).

Training code asks the budget before it keeps a tensor (`hold`): a layer read whole into memory, a chunk of rows
and the working set computed from it. The budget refuses what would pass its limit, and it records the highest
total it ever held (`peak`), which train-probe reports. What is held is counted in bytes of tensor data; the
records (JSON) and the Python process itself come on top.

The budget decides only where rows come from (memory or disk) and how many rows one read spans: the rows of a
gradient sum are always split the same way (TrainConfig.chunk_rows), so the heads do not depend on the budget.
"""

from __future__ import annotations

from contextlib import contextmanager

GB = 2**30
# a few layers of a large collection stay in memory; bigger ones are re-read from the shards each epoch
DEFAULT_MAX_MEMORY_GB = 2.0


class MemoryBudget:
    """At most `limit` bytes of hidden states held at once; `peak` the most held so far."""

    def __init__(self, limit: int | float | None):
        if limit is not None and not limit > 0:
            raise ValueError(f"max memory {limit} must be a positive number of bytes (or None for no limit).")
        self.limit = float("inf") if limit is None else int(limit)
        self.held = 0
        self.peak = 0

    @classmethod
    def gigabytes(cls, gb: float | None) -> "MemoryBudget":
        """A budget of `gb` GiB (None: no limit)."""
        if gb is not None and not gb > 0:
            raise ValueError(f"--max-memory {gb} must be a positive number of GB (e.g. {DEFAULT_MAX_MEMORY_GB}).")
        return cls(None if gb is None else gb * GB)

    def free(self) -> float:
        return self.limit - self.held

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.free()

    @contextmanager
    def hold(self, nbytes: int, what: str):
        """Count `nbytes` as held inside the block; refuse (ValueError) what would pass the limit."""
        nbytes = int(nbytes)
        if not self.fits(nbytes):
            raise ValueError(f"{what} needs {nbytes / 2**20:.1f} MB, but the memory budget has "
                             f"{max(self.free(), 0) / 2**20:.1f} MB of {self.limit / 2**20:.1f} MB left: raise --max-memory.")
        self.held += nbytes
        self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            self.held -= nbytes


UNLIMITED = None  # MemoryBudget(UNLIMITED): no limit (tensors given in memory, tests)
