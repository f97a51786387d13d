"""The per-step inputs of the controller, handed from the model wrapper to the logits processor.

vLLM gives a logits processor only the logits. The model wrapper (models.py) sees more during the same
step, in the same worker process: the token fed at each request's last scheduled position, that
position, and the probe layer's residual stream there. It writes them into `RowTap`'s persistent buffers
(static addresses, so a captured CUDA graph keeps writing the right memory), in logits-row order, and
`compute_logits` publishes the first N rows; the processor's `apply` reads them right after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowInputs:
    """One step's rows, in logits-row order."""

    token: torch.Tensor  # [N] int64: the token fed at the row's last scheduled position
    pos: torch.Tensor  # [N] int64: that position (0-based) in the request's sequence
    hidden: torch.Tensor | None  # [N, D]: residual stream after the probe layer there (None: no probe layer)


class RowTap:
    """Persistent buffers the wrapper's forward writes and its compute_logits publishes."""

    def __init__(self, rows: int, hidden_size: int | None, dtype: torch.dtype, device):
        self.token = torch.zeros(rows, dtype=torch.int64, device=device)
        self.pos = torch.zeros(rows, dtype=torch.int64, device=device)
        self.hidden = torch.zeros(rows, hidden_size, dtype=dtype, device=device) if hidden_size else None

    def resized(self, rows: int) -> "RowTap":
        """A tap with room for `rows` requests (same hidden size, dtype and device)."""
        h = self.hidden
        return RowTap(rows, h.shape[1] if h is not None else None, h.dtype if h is not None else torch.float32,
                      self.token.device)

    @property
    def rows(self) -> int:
        return self.token.shape[0]

    def record(self, last: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor,
               hidden: torch.Tensor | None) -> None:
        """last: [R] index of each request's last scheduled token among the step's T tokens (batch order);
        input_ids / positions: [T]; hidden: [T, D] probe-layer residual stream (or None)."""
        n = last.shape[0]
        last = last.clamp(min=0).long()  # padded request slots of a captured graph point at index -1
        self.token[:n].copy_(input_ids[last])
        self.pos[:n].copy_(positions[last])
        if self.hidden is not None and hidden is not None:
            self.hidden[:n].copy_(hidden[last])

    def view(self, n: int) -> RowInputs:
        return RowInputs(self.token[:n], self.pos[:n], self.hidden[:n] if self.hidden is not None else None)


class _Channel:
    """The worker process's latest published rows (one engine per worker process)."""

    def __init__(self):
        self.rows: RowInputs | None = None

    def publish(self, rows: RowInputs) -> None:
        self.rows = rows

    def take(self, n: int) -> RowInputs:
        """The published rows for a logits tensor of n rows; a clear error when the wrapper is missing."""
        rows = self.rows
        if rows is None:
            raise RuntimeError(
                "adaptive_think's logits processor found no model inputs for this step: the model is not the "
                "adaptive_think wrapper. Build the engine with adaptive_think.integrations.vllm.llm_kwargs() (it selects the "
                "wrapper through hf_overrides), or start the server with `adaptive-think serve`.")
        if rows.token.shape[0] != n:
            raise RuntimeError(f"adaptive_think: the wrapper published {rows.token.shape[0]} rows for {n} logits rows; "
                               "speculative decoding and several tokens sampled per request are not supported.")
        return rows


CHANNEL = _Channel()
