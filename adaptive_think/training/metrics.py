"""Small, dependency-free statistics: AUROC and the binomial tail used by risk control."""

from __future__ import annotations

import math

import torch


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (ties counted half); NaN when only one class is present."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inverse = torch.unique(scores, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= k), summed in log space so large n does not underflow."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
            for i in range(k + 1)]
    m = max(logs)
    return min(1.0, math.exp(m) * sum(math.exp(v - m) for v in logs))


def binom_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a binomial rate from k successes in n trials (two-sided, exact).

    >>> binom_interval(0, 10)[0]
    0.0
    """
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"binom_interval needs 0 <= k <= n and n >= 1, got k={k}, n={n}.")
    tail = (1 - confidence) / 2

    def solve(j, target):  # the p where P(Binom(n, p) <= j), falling in p, equals target: bisection
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if binom_cdf(j, n, mid) > target else (lo, mid)
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else solve(k - 1, 1 - tail)  # P(X >= k) = tail
    upper = 1.0 if k == n else solve(k, tail)  # P(X <= k) = tail
    return lower, upper


def recall_at_no_false_positive(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of positives scored strictly above every negative: what a zero-error threshold keeps."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    if int(labels.sum()) == 0:
        return float("nan")
    top_negative = scores[~labels].max() if bool((~labels).any()) else torch.tensor(float("-inf"))
    return float((scores[labels] > top_negative).double().mean())
