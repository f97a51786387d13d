"""logit_stats: max logit, log-sum-exp, entropy and top-1/top-2 margin of logits [B, V] (the entry point).

    from adaptive_think.kernels.logit_stats import logit_stats
    stats = logit_stats(scores)          # Triton on CUDA, torch reference on CPU; stats.entropy is [B] fp32

`impl` ("auto", "triton", "torch") or the environment variable ADAPTIVE_THINK_KERNEL_IMPL overrides the
choice (the argument wins). Triton is imported only when the Triton path is taken.
"""

from __future__ import annotations

import torch

from adaptive_think.kernels import resolve_impl
from adaptive_think.kernels.logit_stats.naive import LogitStats, logit_stats_reference


def logit_stats(logits: torch.Tensor, impl: str = "auto") -> LogitStats:
    """Per-row statistics of logits [B, V] (bf16/fp16/fp32): LogitStats(max_logit, lse, entropy, margin), each [B] fp32.

    Example:
        >>> logit_stats(torch.zeros(1, 4)).entropy  # log 4
        tensor([1.3863])
    """
    if resolve_impl(impl, logits.device) == "triton":
        from adaptive_think.kernels.logit_stats.triton_kernel import logit_stats_triton

        return logit_stats_triton(logits)
    return logit_stats_reference(logits)


__all__ = ["LogitStats", "logit_stats", "logit_stats_reference"]
