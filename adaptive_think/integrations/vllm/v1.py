"""The logits processor for vLLM's V1 model runner (CPU always; GPU with VLLM_USE_V2_MODEL_RUNNER=0).

Interface: `vllm/v1/sample/logits_processor/interface.py`. The persistent batch's row i is request slot i;
`update_state` gets removed, added `(index, params, prompt_ids, output_ids)` and moved / swapped rows (in
that order) and turns them into `SlotController.remove / add / move`; `apply` hands the step's rows (from
the model wrapper) to `SlotController.step`. Requests without adaptive_think settings are left alone.

    from vllm import LLM, SamplingParams
    from adaptive_think.vllm import llm_kwargs
    llm = LLM(model=DIR, **llm_kwargs(probe=PROBE_DIR))
    llm.generate(prompts, SamplingParams(extra_args={"adaptive_think": {"policy": "probe"}}))
"""

from __future__ import annotations

import torch
from vllm.logger import init_logger
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from adaptive_think.integrations.vllm.context import build_context, validate_request
from adaptive_think.integrations.vllm.requests import current_settings
from adaptive_think.integrations.vllm.rows import CHANNEL
from adaptive_think.integrations.vllm.slots import SlotController, compose_moves

logger = init_logger(__name__)


class ThinkLogitsProcessorV1(LogitsProcessor):
    """adaptive_think's per-request thinking control as a V1 logits processor."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.core = SlotController(build_context(vllm_config, current_settings()),
                                   int(vllm_config.scheduler_config.max_num_seqs), device)

    def is_argmax_invariant(self) -> bool:
        return False  # forcing a token changes the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        core = self.core
        core.remove(list(batch_update.removed))
        slots, prompts, lens, configs, outputs = [], [], [], [], []
        for index, params, prompt_ids, output_ids in batch_update.added:
            config = validate_request(params)
            if config is not None and prompt_ids is None:
                logger.error("adaptive_think: a request without prompt token ids (prompt embeddings) is not steered.")
                config = None
            slots.append(index)
            prompts.append(list(prompt_ids or []))
            lens.append(len(prompt_ids or []))
            configs.append(config)
            outputs.append([int(t) for t in output_ids] if config is not None else [])
        if slots:
            width = max(len(o) for o in outputs)
            out = torch.tensor([o + [0] * (width - len(o)) for o in outputs], dtype=torch.long).reshape(len(slots), width)
            core.add(slots, prompts, lens, configs, out, [len(o) for o in outputs])
        src, dst, emptied = compose_moves([(a, b, d == MoveDirectionality.SWAP) for a, b, d in batch_update.moved])
        core.move(src, dst)
        core.remove(emptied)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.core.steered_slots:  # no request in the batch has adaptive_think settings
            return logits
        n = logits.shape[0]
        rows = CHANNEL.take(n)
        return self.core.step(logits, self.core.slot_range(n), rows.token, rows.pos, rows.hidden)
