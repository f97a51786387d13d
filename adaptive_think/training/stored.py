"""Hidden states of a collection, read from its safetensors shards only when asked for (train-probe's streaming).

`StoredStates` maps each tensor name of a collection ("layer{l}" [N, D], "thought_layer{l}" [M, D]) to a
`StoredTensor`: the rows of that name in every shard, in collection order, without reading them. Indexing one
(`t[a:b]`, `t[rows]`) gives a view, still unread; `.read()` (stored dtype, fp16) or `.float()` reads its rows,
span by span, each span bounded by the memory budget (budget.py). `resident(name)` reads one name's rows into
memory for a while when the budget allows, so that a pass over them many times (300 epochs) reads the disk once.

Rows are copied out of the file (safetensors `safe_open`, opened per span and closed), so nothing stays mapped.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open

from adaptive_think.training.budget import MemoryBudget

THOUGHT_PREFIX = "thought_layer"  # stored names of thought-token states: thought_layer{l}

_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


class _Source:
    """One tensor name's rows over shard files: parts [(file, rows)], a row's place, and the resident copy."""

    def __init__(self, key: str, parts: list[tuple[Path, int]], width: int, dtype: torch.dtype, budget: MemoryBudget):
        self.key, self.parts, self.width, self.dtype, self.budget = key, parts, width, dtype, budget
        self.starts = [0]
        for _, n in parts:
            self.starts.append(self.starts[-1] + n)
        self.resident: torch.Tensor | None = None  # [N, D] stored dtype, while `StoredStates.resident` holds it

    @property
    def rows(self) -> int:
        return self.starts[-1]

    @property
    def row_bytes(self) -> int:
        return self.width * self.dtype.itemsize

    def read(self, index: torch.Tensor) -> torch.Tensor:
        """Rows `index` [R] (any order) -> [R, D] in the stored dtype."""
        if self.resident is not None:
            return self.resident[index]
        out = torch.empty(len(index), self.width, dtype=self.dtype)
        if not len(index):
            return out
        order = torch.argsort(index)
        idx = index[order].tolist()
        # a span is read whole and the wanted rows taken from it: bounded by what the budget has left
        span = int(max(1, min(self.budget.free() // max(self.row_bytes, 1), 1 << 40)))
        i = 0
        while i < len(idx):
            shard = bisect_right(self.starts, idx[i]) - 1
            lo, end = idx[i], min(idx[i] + span, self.starts[shard + 1])
            j = bisect_left(idx, end, i)
            hi = idx[j - 1] + 1
            with self.budget.hold((hi - lo) * self.row_bytes, f"reading rows of {self.key}"):
                path, base = self.parts[shard][0], self.starts[shard]
                with safe_open(str(path), framework="pt") as f:
                    block = f.get_slice(self.key)[lo - base : hi - base]  # [hi - lo, D]
                out[order[i:j]] = block[index[order[i:j]] - lo]
            i = j
        return out


class StoredTensor:
    """Rows of one stored name (a view of some of them), unread until `.read()` / `.float()`."""

    def __init__(self, source: _Source, index: torch.Tensor | None = None):
        self._source, self._index = source, index

    @property
    def shape(self) -> torch.Size:
        return torch.Size([self._source.rows if self._index is None else len(self._index), self._source.width])

    @property
    def dtype(self) -> torch.dtype:
        return self._source.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def nbytes(self) -> int:
        return len(self) * self._source.row_bytes

    def _rows(self) -> torch.Tensor:
        return torch.arange(self._source.rows) if self._index is None else self._index

    def __getitem__(self, key) -> "StoredTensor":
        """A view: key is a slice, a list of rows or a tensor of rows / a bool mask (row indexing only)."""
        if isinstance(key, tuple) or isinstance(key, int):
            raise TypeError("A StoredTensor is indexed by rows only (a slice, a list or a tensor of rows); read it "
                            "(.read() / .float()) for anything else.")
        if isinstance(key, slice):  # its own small index, not a view into an index of every row
            rows = torch.arange(*key.indices(len(self)))
            return StoredTensor(self._source, rows if self._index is None else self._index[rows])
        return StoredTensor(self._source, self._rows()[torch.as_tensor(key)])

    def read(self) -> torch.Tensor:
        """[R, D] in the stored dtype (fp16)."""
        return self._source.read(self._rows())

    def float(self) -> torch.Tensor:
        return self.read().float()


class StoredStates(Mapping):
    """name -> StoredTensor for every tensor name of one collection or several (rows in collection order)."""

    def __init__(self, sources: dict[str, _Source], budget: MemoryBudget):
        self._sources, self.budget = sources, budget

    @classmethod
    def of_shards(cls, files: list[Path], budget: MemoryBudget) -> "StoredStates":
        """The names, shapes and dtypes of `files` (their headers only)."""
        parts: dict[str, list[tuple[Path, int]]] = {}
        kinds: dict[str, tuple[int, torch.dtype]] = {}
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    s = f.get_slice(key)
                    shape, dtype = s.get_shape(), _DTYPES[s.get_dtype()]
                    if len(shape) != 2 or kinds.setdefault(key, (shape[1], dtype)) != (shape[1], dtype):
                        raise ValueError(f"{path}: {key} is {s.get_dtype()} {shape}, unlike the rows of {key} in the "
                                         "collection's other shards; the collection is corrupt.")
                    parts.setdefault(key, []).append((path, shape[0]))
        return cls({k: _Source(k, p, *kinds[k], budget) for k, p in parts.items()}, budget)

    @classmethod
    def concat(cls, many: list["StoredStates"], budget: MemoryBudget) -> "StoredStates":
        """Several collections' states as one: each name's rows of the first, then of the second..."""
        parts: dict[str, list[tuple[Path, int]]] = {}
        kinds = {}
        for states in many:
            for k, s in states._sources.items():
                if kinds.setdefault(k, (s.width, s.dtype)) != (s.width, s.dtype):
                    raise ValueError(f"{k} has width {s.width} ({s.dtype}) in one collection and {kinds[k]} in another.")
                parts.setdefault(k, []).extend(s.parts)
        return cls({k: _Source(k, p, *kinds[k], budget) for k, p in parts.items()}, budget)

    def __getitem__(self, key: str) -> StoredTensor:
        return StoredTensor(self._sources[key])

    def __iter__(self):
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    @contextmanager
    def resident(self, key: str, reserve: int = 0):
        """Inside the block, `key`'s rows come from memory when they fit the budget with `reserve` bytes to
        spare (else from disk, as before). Yields whether they are resident."""
        source = self._sources[key]
        size = source.rows * source.row_bytes
        if source.resident is not None or not self.budget.fits(size + reserve):
            yield source.resident is not None
            return
        with self.budget.hold(size, f"{key} in memory"):
            source.resident = source.read(torch.arange(source.rows))
            try:
                yield True
            finally:
                source.resident = None

    def load_all(self) -> dict[str, torch.Tensor]:
        """Every name read into memory: "layer{l}" as fp32, thought-token states in their stored fp16."""
        return {k: (v.read() if k.startswith(THOUGHT_PREFIX) else v.float()) for k, v in self.items()}
