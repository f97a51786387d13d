"""Plain-torch reference of logit_stats: max logit, log-sum-exp, softmax entropy and top-1/top-2 margin per row.

The ground truth the Triton kernel (`triton_kernel.py`) is tested against; the CPU path of the entry point.
Conventions for rows that are not a distribution (the kernel follows them exactly):
- entries of -inf are masked vocabulary: they get probability 0 and add nothing to the entropy;
- a row holding NaN or +inf gives NaN in all four outputs;
- a row that is all -inf gives max = lse = -inf, entropy = NaN, margin = NaN;
- a row with one finite entry (or V = 1) gives margin = +inf (the second logit is -inf).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class LogitStats(NamedTuple):
    """Per-row statistics of logits [B, V], each a [B] fp32 tensor."""

    max_logit: torch.Tensor  # [B] top-1 logit
    lse: torch.Tensor  # [B] log-sum-exp (log of the softmax normaliser)
    entropy: torch.Tensor  # [B] softmax entropy in nats
    margin: torch.Tensor  # [B] top-1 minus top-2 logit


def logit_stats_reference(logits: torch.Tensor) -> LogitStats:
    """Statistics of logits [B, V] (bf16/fp16/fp32, any strides), computed in fp32.

    Example:
        >>> s = logit_stats_reference(torch.tensor([[0.0, 0.0, float("-inf")]]))
        >>> s.entropy  # log 2
        tensor([0.6931])
    """
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be [B, V] with V >= 1, got {tuple(logits.shape)}")
    x = logits.float()  # [B, V]
    if x.shape[1] == 1:  # give topk a second (masked) entry
        x = torch.cat([x, torch.full_like(x, float("-inf"))], dim=1)
    top2 = x.topk(2, dim=-1).values  # [B, 2]
    max_logit = top2[:, 0]
    margin = top2[:, 0] - top2[:, 1]  # -inf - -inf = NaN for an all-masked row
    lse = torch.logsumexp(x, dim=-1)  # [B]
    shifted = x - lse[:, None]  # log p; -inf for masked entries
    p = shifted.exp()
    entropy = -torch.where(p > 0, p * shifted, torch.zeros_like(p)).sum(-1)  # 0 * -inf would be NaN
    entropy = torch.where(torch.isneginf(lse), torch.full_like(entropy, float("nan")), entropy)
    bad = (torch.isnan(x) | torch.isposinf(x)).any(-1)  # [B]
    nan = torch.full_like(lse, float("nan"))
    return LogitStats(
        max_logit=torch.where(bad, nan, max_logit),
        lse=torch.where(bad, nan, lse),
        entropy=torch.where(bad, nan, entropy),
        margin=torch.where(bad, nan, margin),
    )
