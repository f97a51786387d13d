"""The logits processor for vLLM's Model Runner V2 (the default runner on a GPU).

Interface: `vllm/v1/worker/gpu/sample/logits_processor/interface.py`. State is keyed by request slot:
`add_request(slot, params)` (host) stages a request, `apply_staged_writes()` (after the runner has
written the slot's tokens to the device) starts its controller row from the prompt in
`req_states.all_token_ids[slot, :prompt_len]` and replays the outputs it already has after a preemption
(`prompt_len .. prefill_len`), and `apply(logits, ctx)` steps the rows: `ctx.expanded_idx_mapping` maps
rows to slots, `ctx.expanded_local_pos` gives a row's draft position within its request, `ctx.input_ids` /
`ctx.pos` the token fed at each row's position (the draft under verification, -1 for a placeholder), and
`req_states.total_len` how many tokens each request has committed, from which the slot core picks the
state that matches the drafts accepted last step (slots.SlotController.step_drafts). Only the probe
layer's hidden state comes from the model wrapper, one block per request (rows.CHANNEL.take_requests:
chunked verification applies consecutive groups of requests). A recycled slot is fully re-initialised on add.
"""

from __future__ import annotations

import torch
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor

from adaptive_think.integrations.vllm.context import build_context, validate_request
from adaptive_think.integrations.vllm.requests import current_settings
from adaptive_think.integrations.vllm.rows import CHANNEL
from adaptive_think.integrations.vllm.slots import SlotController, request_layout
from adaptive_think.integrations.vllm.support import speculative_width


def _ragged(tokens: torch.Tensor, rows: torch.Tensor, start: torch.Tensor, length: torch.Tensor, width: int,
            left_pad: bool) -> torch.Tensor:
    """[K, width] tokens[rows[k], start[k] : start[k] + length[k]], padded with -1 (left or right); width =
    max(length), known on the host (no device read)."""
    j = torch.arange(width, device=tokens.device)[None, :]  # [1, W]
    offset = j - (width - length[:, None]) if left_pad else j  # [K, W]: index into the row's span
    valid = (offset >= 0) & (offset < length[:, None])
    col = (start[:, None] + offset).clamp(0, tokens.shape[1] - 1)
    return torch.where(valid, tokens[rows[:, None], col], torch.full_like(col, -1))


class ThinkLogitsProcessorV2(LogitsProcessor):
    """adaptive_think's per-request thinking control as a Model Runner V2 logits processor."""

    def __init__(self, vllm_config, req_states):
        self.req_states = req_states
        self.width = speculative_width(vllm_config)
        self.core = SlotController(build_context(vllm_config, current_settings()), int(req_states.max_num_reqs),
                                   req_states.device, drafts=self.width - 1)
        self._staged: list[tuple[int, object, int, int]] = []  # (slot, config or None, prompt_len, prefill_len)

    def add_request(self, req_idx: int, sampling_params) -> bool:
        config = validate_request(sampling_params)
        prompt_len = int(self.req_states.prompt_len.np[req_idx])
        prefill_len = int(self.req_states.prefill_len.np[req_idx])
        self._staged.append((int(req_idx), config, prompt_len, prefill_len))
        return config is not None

    def apply_staged_writes(self) -> None:
        if not self._staged:
            return
        staged, self._staged = self._staged, []
        latest = {slot: entry for slot, *entry in staged}  # a slot recycled twice in one step: the last add wins
        slots = list(latest)
        configs = [latest[s][0] for s in slots]
        device = self.core.device
        rows = torch.tensor(slots, dtype=torch.long, device=device)
        prompt_lens = torch.tensor([latest[s][1] for s in slots], dtype=torch.long, device=device)
        out_lens = [latest[s][2] - latest[s][1] for s in slots]
        tokens = self.req_states.all_token_ids.gpu  # [max_num_reqs, max_model_len], written for these slots
        prompts = _ragged(tokens, rows, torch.zeros_like(prompt_lens), prompt_lens,
                          max(latest[s][1] for s in slots), left_pad=True)
        outputs = _ragged(tokens, rows, prompt_lens, torch.tensor(out_lens, dtype=torch.long, device=device),
                          max(out_lens), left_pad=False)
        self.core.add(slots, prompts, [latest[s][1] for s in slots], configs, outputs, out_lens)

    def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        if not self.core.steered_slots:
            return logits
        requests = ctx.idx_mapping.to(torch.long)  # [R] this call's requests (a chunk of the step's, in order)
        local_pos = ctx.expanded_local_pos.to(torch.long)
        hidden = None
        if self.core.ctl.needs_hidden:
            blocks = CHANNEL.take_requests(requests.shape[0], self.width).hidden  # [R * W, D] right-aligned
            if blocks is not None:
                owner, _, count = request_layout(local_pos, requests.shape[0])
                hidden = blocks.index_select(0, owner * self.width + (self.width - count[owner]) + local_pos)
        return self.core.step_drafts(logits, ctx.expanded_idx_mapping.to(torch.long), ctx.input_ids, ctx.pos, hidden,
                                     local_pos, requests, self.req_states.total_len.gpu)
