"""The logits processor for vLLM's V1 model runner (CPU always; GPU with VLLM_USE_V2_MODEL_RUNNER=0).

Interface: `vllm/v1/sample/logits_processor/interface.py`. The persistent batch's row i is request slot i;
`update_state` gets removed, added `(index, params, prompt_ids, output_ids)` and moved / swapped rows (in
that order) and turns them into `SlotController.remove / add / move`; `apply` hands the step's rows (from
the model wrapper) to `SlotController.step`. Requests without adaptive_think settings are left alone.

A request that leaves the persistent batch and comes back with output tokens (preemption, or not being
scheduled for a step) is the same `SamplingParams` object in this runner: its controller row is kept
when it leaves and put back when it returns (the smoothed probe score and streak included). Only when
that copy is gone (more than `STASH` x max_num_seqs other requests left meanwhile) are its output tokens
replayed instead.

    from vllm import LLM, SamplingParams
    from adaptive_think.integrations.vllm import llm_kwargs
    llm = LLM(model=DIR, **llm_kwargs(probe=PROBE_DIR))
    llm.generate(prompts, SamplingParams(extra_args={"adaptive_think": {"policy": "probe"}}))
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from vllm.logger import init_logger
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from adaptive_think.controller.state import S_STEP
from adaptive_think.integrations.vllm.context import build_context, validate_request
from adaptive_think.integrations.vllm.requests import current_settings
from adaptive_think.integrations.vllm.rows import CHANNEL
from adaptive_think.integrations.vllm.slots import SlotController, compose_moves, needs_steering

logger = init_logger(__name__)
STASH = 4  # rows kept per slot for requests that left the batch (oldest dropped first)


class ThinkLogitsProcessorV1(LogitsProcessor):
    """adaptive_think's per-request thinking control as a V1 logits processor."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        slots = int(vllm_config.scheduler_config.max_num_seqs)
        self.core = SlotController(build_context(vllm_config, current_settings()), slots, device)
        self._params: dict[int, object] = {}  # slot -> its request's SamplingParams (steered slots only)
        self._stash: OrderedDict[int, tuple] = OrderedDict()  # id(params) -> (params, row snapshot, is probe)
        self._stash_size = STASH * slots

    def _leave(self, slots) -> None:
        """Keep the rows of steered requests that leave the batch, then free their slots."""
        for slot in slots:
            params = self._params.pop(slot, None)
            if params is not None:
                self._stash[id(params)] = (params, self.core.snapshot(slot), self.core.is_probe(slot))
                while len(self._stash) > self._stash_size:
                    self._stash.popitem(last=False)
        self.core.remove(list(slots))

    def is_argmax_invariant(self) -> bool:
        return False  # forcing a token changes the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not batch_update:
            return
        core = self.core
        self._leave(batch_update.removed)
        slots, prompts, lens, configs, outputs, back = [], [], [], [], [], []
        for index, params, prompt_ids, output_ids in batch_update.added:
            kept = self._stash.pop(id(params), None)
            # the kept row must have stepped exactly once per output token (a host read, only on a return)
            if kept is not None and kept[0] is params and int(kept[1][0][S_STEP]) == len(output_ids):
                back.append((index, params, kept))
                continue
            config = validate_request(params)
            if config is not None and prompt_ids is None:
                logger.error("adaptive_think: a request without prompt token ids (prompt embeddings) is not steered.")
                config = None
            if needs_steering(config):
                self._params[index] = params
            else:
                self._params.pop(index, None)
            slots.append(index)
            prompts.append(list(prompt_ids or []))
            lens.append(len(prompt_ids or []))
            configs.append(config)
            outputs.append([int(t) for t in output_ids] if config is not None else [])
        if slots:
            width = max(len(o) for o in outputs)
            out = torch.tensor([o + [0] * (width - len(o)) for o in outputs], dtype=torch.long).reshape(len(slots), width)
            core.add(slots, prompts, lens, configs, out, [len(o) for o in outputs])
        for index, params, (_, snap, probe) in back:
            core.restore(index, snap, probe)
            self._params[index] = params
        src, dst, emptied = compose_moves([(a, b, d == MoveDirectionality.SWAP) for a, b, d in batch_update.moved])
        core.move(src, dst)
        moved = [self._params.get(s) for s in src]  # read every source before writing any target
        for d, params in zip(dst, moved):
            self._params.pop(d, None)
            if params is not None:
                self._params[d] = params
        for slot in emptied:
            self._params.pop(slot, None)
        core.remove(emptied)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.core.steered_slots:  # no request in the batch has adaptive_think settings
            return logits
        n = logits.shape[0]
        rows = CHANNEL.take(n)
        return self.core.step(logits, None, rows.token, rows.pos, rows.hidden)  # row i is slot i
