"""The graph engine's runners of each model: lookup, a memory bound with least-recently-used eviction, and
`cache_info` to see what is held.

A runner is keyed only by what changes the captured code (batch, device, dtype, graph mode, sampling
mode, controller tensor shapes, probe layer); its cache length (bucket) is chosen per call: the
smallest cached runner whose cache holds the call serves it. Budgets, thresholds, policies, exit and stop
texts, eos and pad ids are tensor contents copied into a runner per call, so one runner serves a sweep.

    >>> graph.cache_info(model)       # [{"batch": 8, "bucket": 512, "graph_mode": "cudagraph", "kv_bytes": ...}]
    >>> graph.set_cache_limit(max_bytes=8 * 2**30)        # keep at most 8 GiB of KV cache per model
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from adaptive_think.engines.runner import DecodeRunner


@dataclass
class CacheLimit:
    """How much the runners of one model may hold. max_bytes: KV-cache bytes (None: a quarter of the device's
    memory on CUDA, no bound elsewhere); max_runners: runners kept. A runner larger than the bound is still
    built for its call; nothing else is kept beside it."""

    max_bytes: int | None = None
    max_runners: int = 8

    def __post_init__(self):
        if self.max_bytes is not None and (not isinstance(self.max_bytes, int) or self.max_bytes < 0):
            raise ValueError(f"max_bytes must be None or a non-negative int (bytes), got {self.max_bytes!r}.")
        if not isinstance(self.max_runners, int) or self.max_runners < 1:
            raise ValueError(f"max_runners must be a positive int, got {self.max_runners!r}.")

    def bytes_for(self, device: torch.device) -> float:
        if self.max_bytes is not None:
            return self.max_bytes
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory / 4
        return float("inf")


_LIMIT = CacheLimit()
_RUNNERS: "weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()


def set_cache_limit(max_bytes: int | None = None, max_runners: int = 8) -> CacheLimit:
    """Bound the runners every model keeps (see `CacheLimit`); applies from the next runner built."""
    global _LIMIT
    _LIMIT = CacheLimit(max_bytes, max_runners)
    return _LIMIT


def clear_graph_cache(model=None) -> None:
    """Drop the captured steps and static caches of `model` (all models when None); removes their hooks."""
    for m in [model] if model is not None else list(_RUNNERS):
        for runner in _RUNNERS.pop(m, OrderedDict()).values():
            runner.close()


def cache_info(model) -> list[dict]:
    """One dict per runner `model` holds, least recently used first: batch, bucket (cache length), graph mode,
    kv_bytes (its KV cache), attention tiers ([] in eager mode: exact lengths), device, dtype."""
    return [{"batch": r.batch, "bucket": r.length, "graph_mode": r.graph_mode, "kv_bytes": r.kv_bytes(),
             "tiers": list(r.tiers), "device": str(r.device), "dtype": str(r.dtype)}
            for r in _RUNNERS.get(model, OrderedDict()).values()]


def kv_bytes_estimate(model, batch: int, length: int) -> int:
    """KV-cache bytes of a static cache of `length` slots for `batch` rows (before it is allocated)."""
    cfg = model.config.get_text_config()
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    itemsize = model.get_input_embeddings().weight.element_size()
    return 2 * cfg.num_hidden_layers * batch * kv_heads * length * head_dim * itemsize


def get_runner(model, key: tuple, need: int, length: int, make) -> tuple[DecodeRunner, bool]:
    """The cached runner of `key` with the smallest cache holding `need` slots, else a new one of `length`
    (built by `make()`), after evicting least-recently-used runners beyond the limit. (runner, fresh)."""
    per_model = _RUNNERS.setdefault(model, OrderedDict())
    fits = [(k[1], k) for k in per_model if k[0] == key and k[1] >= need]
    if fits:
        full = min(fits)[1]
        per_model.move_to_end(full)
        return per_model[full], False
    budget = _LIMIT.bytes_for(model.device)
    new = kv_bytes_estimate(model, key[0], length)
    while per_model and (len(per_model) >= _LIMIT.max_runners
                         or sum(r.kv_bytes() for r in per_model.values()) + new > budget):
        _, old = per_model.popitem(last=False)
        old.close()
    per_model[key, length] = runner = make()
    return runner, True


def drop_runner(model, key: tuple, length: int) -> None:
    """Forget a runner (a half-built one is never reused)."""
    runner = _RUNNERS.get(model, {}).pop((key, length), None)
    if runner is not None:
        runner.close()
