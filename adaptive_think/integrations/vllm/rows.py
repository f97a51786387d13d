"""The per-step inputs of the controller, handed from the model wrapper to the logits processor.

vLLM gives a logits processor only the logits. The model wrapper (models.py) sees more during the same
step, in the same worker process: the tokens fed at each request's last `width` scheduled positions, those
positions, and the probe layer's residual stream there. A request's logits rows are the last tokens of its
query (one without speculation; the last committed token and its drafts under speculative decoding, width =
num_speculative_tokens + 1). The wrapper writes them into `RowTap`'s persistent buffers (static addresses,
so a captured CUDA graph keeps writing the right memory), one block of `width` rows per request in batch
order, right-aligned to the query's end, and `compute_logits` publishes them; the processor's `apply` reads
them right after (`take` under the V1 runner, one row per request; `take_requests` under Model Runner V2,
whose chunked verification applies consecutive groups of requests in batch order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowInputs:
    """One step's rows: `width` per request (the last `width` tokens of its query), in batch order."""

    token: torch.Tensor  # [R * width] int64: the token fed at the position
    pos: torch.Tensor  # [R * width] int64: that position (0-based) in the request's sequence
    hidden: torch.Tensor | None  # [R * width, D]: residual stream after the probe layer there (None: no probe layer)
    width: int = 1


class RowTap:
    """Persistent buffers the wrapper's forward writes and its compute_logits publishes."""

    def __init__(self, rows: int, hidden_size: int | None, dtype: torch.dtype, device, width: int = 1):
        self.width = int(width)
        self.token = torch.zeros(rows * self.width, dtype=torch.int64, device=device)
        self.pos = torch.zeros(rows * self.width, dtype=torch.int64, device=device)
        self.hidden = (torch.zeros(rows * self.width, hidden_size, dtype=dtype, device=device)
                       if hidden_size else None)
        self._offsets = torch.arange(self.width, device=device) - self.width  # [W]: -W .. -1 from the query's end
        self.recorded = 0  # requests of the latest record (a shape: no device read)

    def resized(self, rows: int) -> "RowTap":
        """A tap with room for `rows` requests (same hidden size, dtype, device and width)."""
        h = self.hidden
        return RowTap(rows, h.shape[1] if h is not None else None, h.dtype if h is not None else torch.float32,
                      self.token.device, self.width)

    @property
    def rows(self) -> int:
        """Requests the tap has room for."""
        return self.token.shape[0] // self.width

    def record(self, query_start_loc: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor,
               hidden: torch.Tensor | None) -> None:
        """query_start_loc: [R + 1] where each request's scheduled tokens start among the step's T tokens
        (batch order); input_ids / positions: [T]; hidden: [T, D] probe-layer residual stream (or None).
        Keeps each request's last `width` tokens (a shorter query repeats its first token in front)."""
        r = query_start_loc.shape[0] - 1
        t = input_ids.shape[0]
        qsl = query_start_loc.long()
        index = qsl[1:, None] + self._offsets  # [R, W]
        # a shorter query repeats its first token; padded requests of a captured graph point past the end
        index = torch.maximum(index, qsl[:-1, None]).clamp(0, max(t - 1, 0)).reshape(-1)  # [R * W]
        n = r * self.width
        self.token[:n].copy_(input_ids[index])
        self.pos[:n].copy_(positions[index])
        if self.hidden is not None and hidden is not None:
            self.hidden[:n].copy_(hidden[index])
        self.recorded = r

    def view(self, n: int | None = None) -> RowInputs:
        """The first n rows (default: every recorded request's block)."""
        n = self.recorded * self.width if n is None else n
        return RowInputs(self.token[:n], self.pos[:n], self.hidden[:n] if self.hidden is not None else None,
                         self.width)


class _Channel:
    """The worker process's latest published rows (one engine per worker process)."""

    def __init__(self):
        self.rows: RowInputs | None = None
        self.taken = 0  # requests of the published step already handed to `take_requests`

    def publish(self, rows: RowInputs) -> None:
        self.rows = rows
        self.taken = 0

    def _published(self) -> RowInputs:
        if self.rows is None:
            raise RuntimeError(
                "adaptive_think's logits processor found no model inputs for this step: the model is not the "
                "adaptive_think wrapper. Build the engine with adaptive_think.integrations.vllm.llm_kwargs() (it selects the "
                "wrapper through hf_overrides), or start the server with `adaptive-think serve`.")
        return self.rows

    def take(self, n: int) -> RowInputs:
        """The published rows for a logits tensor of n rows, one per request (the V1 runner)."""
        rows = self._published()
        if rows.width != 1 or rows.token.shape[0] != n:
            raise RuntimeError(f"adaptive_think: the wrapper published {rows.token.shape[0]} rows of width "
                               f"{rows.width} for {n} logits rows; the V1 runner steers one row per request.")
        return rows

    def take_requests(self, r: int, width: int) -> RowInputs:
        """The next r requests' blocks of the published step (Model Runner V2 applies a step's requests in
        one call, or in consecutive chunks under chunked verification)."""
        rows = self._published()
        start, end = self.taken * rows.width, (self.taken + r) * rows.width
        if rows.width != width or end > rows.token.shape[0]:
            raise RuntimeError(
                f"adaptive_think: the wrapper published {rows.token.shape[0] // rows.width} requests of width "
                f"{rows.width}; the processor asked for requests {self.taken}..{self.taken + r - 1} of width "
                f"{width}. The wrapper and the processor disagree on the batch (num_speculative_tokens?).")
        self.taken += r
        return RowInputs(rows.token[start:end], rows.pos[start:end],
                         rows.hidden[start:end] if rows.hidden is not None else None, rows.width)


CHANNEL = _Channel()
