"""The memoryless heads train-probe fits (linear or a small MLP on one layer's state) and how they are fitted.

`fit_head` runs full-batch AdamW on the weighted BCE: every epoch's gradient is the gradient of the loss over
all training rows, summed chunk by chunk (rows.py), so the rows never need to be in memory at once.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from adaptive_think.training.metrics import auroc
from adaptive_think.training.rows import Rows


class _Head(nn.Module):
    def __init__(self, d: int, width: int, kind: str):
        super().__init__()
        self.kind = kind
        self.fc1 = nn.Linear(d, width if kind == "mlp" else 1)
        self.fc2 = nn.Linear(width, 1) if kind == "mlp" else None

    def forward(self, x):
        z = self.fc1(x)
        return self.fc2(torch.relu(z)).squeeze(-1) if self.fc2 is not None else z.squeeze(-1)


def _rows(x, y, cfg) -> Rows:
    return x if isinstance(x, Rows) else Rows.of_tensor(x, y, cfg.chunk_rows)


@torch.no_grad()
def head_logits(head: nn.Module, rows: Rows) -> torch.Tensor:
    """The head's logit of every row [R], chunk by chunk."""
    out = [head(x) for x, _ in rows.chunks()]
    return torch.cat(out) if out else torch.zeros(0)


def fit_head(x, y, xv, yv, kind: str, cfg, neg_weight: float = 1.0):
    """Full-batch AdamW on BCE, negatives weighted `neg_weight`; keeps the epoch with the best validation loss.

    x, xv: features [R, D] (tensors, labels y, yv [R]) or `Rows` (which carry their labels: y, yv ignored).
    The loss and its gradient are summed over chunks of cfg.chunk_rows rows. Returns (head, val AUROC).
    """
    train, val = _rows(x, y, cfg), _rows(xv, yv, cfg)
    torch.manual_seed(cfg.seed)
    head = _Head(train.dim, cfg.width, kind)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss_over(rows: Rows, backward: bool) -> torch.Tensor:
        """mean over rows of weight * BCE (the gradient accumulates in .grad when `backward`)."""
        total = torch.zeros(())
        for xc, yc in rows.chunks():
            w = torch.where(yc.bool(), 1.0, neg_weight)
            loss = (F.binary_cross_entropy_with_logits(head(xc), yc.float(), reduction="none") * w).sum() / len(rows)
            if backward:
                loss.backward()
            total += loss.detach()
        return total

    best, best_state = float("inf"), None
    with train.kept(), val.kept():  # in memory across epochs when the budget allows
        for _ in range(cfg.epochs):
            opt.zero_grad()
            loss = loss_over(train, backward=True)
            opt.step()
            with torch.no_grad():
                vloss = loss_over(val, backward=False).item() if len(val) else loss.item()
            if vloss < best:
                best, best_state = vloss, {k: v.clone() for k, v in head.state_dict().items()}
        head.load_state_dict(best_state)
        score = auroc(head_logits(head, val), val.y) if len(val) else float("nan")
    return head, score


def head_weights(head: _Head, width: int) -> dict[str, torch.Tensor]:
    """A head as (w1 [H, D], b1 [H], w2 [H], b2 [1]) in the ReLU-MLP layout, padded to `width` rows.

    A linear head w.x + b becomes relu(w.x + b) - relu(-w.x - b): exact, so both heads share one kind.
    """
    with torch.no_grad():
        if head.kind == "mlp":
            w1, b1 = head.fc1.weight, head.fc1.bias
            w2, b2 = head.fc2.weight[0], head.fc2.bias
        else:
            w, b = head.fc1.weight[0], head.fc1.bias
            w1, b1 = torch.stack([w, -w]), torch.cat([b, -b])
            w2, b2 = torch.tensor([1.0, -1.0]), torch.zeros(1)
        pad = width - w1.shape[0]
        return {
            "w1": torch.cat([w1, torch.zeros(pad, w1.shape[1])]),
            "b1": torch.cat([b1, torch.zeros(pad)]),
            "w2": torch.cat([w2, torch.zeros(pad)]),
            "b2": b2.reshape(1).clone(),
        }
