"""Training-free ready scores from the step's logits: the close-marker margin and the next-token entropy.

Both are probability-like values in [0, 1] (1 = sure), so the calibration's threshold grid, the EMA and the
controller's `>=` comparisons treat them exactly as a probe head's probabilities:

- "close-margin": exp(logit[close] - max logit) = p(close) / p(top), through the close marker's first token
  (ThinkBrake's signal: the model is ready to close its thought when closing comes near its top choice);
- "entropy": exp(-H), H the softmax entropy of the next token in nats (a sure next token: H near 0).

A row holding NaN (or +inf) gives NaN, which never stops and never skips. The score is computed inside the
decode step from logits already there (no extra forward, no host sync): close-margin is one max and one gather;
entropy is `logit_stats` (Triton on CUDA, one pass over the vocabulary; its torch reference elsewhere).
Collection records both at every checkpoint (training/collect.py) with this same function, so calibration sees
what the controller computes online.
"""

from __future__ import annotations

import torch

from adaptive_think.controller.state import LogitScore
from adaptive_think.kernels.logit_stats import logit_stats


def close_margin(logits: torch.Tensor, close_id: int) -> torch.Tensor:
    """logits [B, V] -> p(close) / p(top) [B] fp32 (NaN for a row holding NaN; 0 when close is masked to -inf)."""
    x = logits.float()
    top = x.amax(-1)  # [B]; NaN propagates
    bad = torch.isnan(top) | torch.isposinf(top)
    return torch.where(bad, torch.full_like(top, float("nan")), torch.exp(x[:, close_id] - top))


def entropy_score(logits: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """logits [B, V] -> exp(-entropy) [B] fp32 (NaN for a row holding NaN or +inf, or all -inf)."""
    return torch.exp(-logit_stats(logits, impl=impl).entropy)


def logit_score(logits: torch.Tensor, score: LogitScore, impl: str = "auto") -> torch.Tensor:
    """The ready score `score.kind` of every row of logits [B, V] (bf16/fp16/fp32) -> [B] fp32."""
    if logits.dim() != 2:
        raise ValueError(f"logit_score: logits must be [B, V], got shape {tuple(logits.shape)}.")
    if score.kind == "close-margin":
        return close_margin(logits, score.close_id)
    return entropy_score(logits, impl)


def checkpoint_scores(logits: torch.Tensor, close_id: int) -> dict[str, torch.Tensor]:
    """Both scores of logits [B, V] -> {"close-margin": [B], "entropy": [B]} (what a collection records)."""
    return {"close-margin": close_margin(logits, close_id), "entropy": entropy_score(logits)}
