"""The `hf` engine: Hugging Face `generate()` plus one LogitsProcessor and one layer hook.

Everything `generate()` does keeps working (sampling, streamers, stopping criteria, processors, scores,
`inputs_embeds`, `device_map="auto"` models): the processor runs the controller once per step and, for
rows it must steer, leaves only the forced token finite. The controller's step itself makes no host
synchronisation; HF's own loop around it does (its stop check reads a flag on the host every token), so
the hf engine as a whole syncs once per token. The graph engine does not.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from adaptive_think.controller import ThinkController
from adaptive_think.engines.args import check_arguments
from adaptive_think.engines.layer_hook import LayerCapture, decoder_layers  # noqa: F401  (decoder_layers: public here)


class ThinkLogitsProcessor(LogitsProcessor):
    """(input_ids [B, S], scores [B, V]) -> scores with forced rows reduced to their forced token.

    With `inputs_embeds` alone, HF hands processors the generated tokens only (S = 0 at the first call):
    the controller then starts every row in PROMPT and matches markers in generated tokens only.
    """

    def __init__(self, controller: ThinkController, capture: LayerCapture | None = None):
        self.controller = controller
        self.capture = capture
        self._started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self._started:
            # the first call sees the prompt (already expanded for num_return_sequences)
            self.controller.begin(input_ids)
            self._started = True
        hidden = self.capture.hidden if self.capture is not None else None
        if input_ids.shape[1]:
            # a [B] column of input_ids has stride S; a contiguous copy keeps the kernel's one specialisation
            last = input_ids[:, -1].contiguous()
        else:  # only at the first step of an inputs_embeds call, where the last token is not read
            last = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
        last = last.to(self.controller.device, non_blocking=True)
        # a score file reads these scores: the logits after the processors before ours, before any warper
        forced = self.controller.step(last, hidden, scores if self.controller.needs_logits else None)  # [B]
        forced = forced.to(scores.device, non_blocking=True)  # a no-op unless the head sits on another GPU
        steer = (forced >= 0)[:, None]  # [B, 1]
        at = forced.clamp(min=0)[:, None]  # [B, 1]
        # one pass over the vocabulary: steered rows -inf, then their forced token 0 (other rows rewrite their own)
        kept = torch.where(steer, torch.zeros((), dtype=scores.dtype, device=scores.device), scores.gather(1, at))
        return scores.masked_fill(steer, float("-inf")).scatter_(1, at, kept)


def check_supported(model, kwargs: dict) -> None:
    """Raise a clear ValueError for generate() arguments the controller cannot steer."""
    check_arguments("hf", kwargs, kwargs.get("generation_config") or getattr(model, "generation_config", None))


def generate_hf(model, controller: ThinkController, generate_fn, probe_layer: int | None, kwargs: dict):
    """Run `generate_fn(**kwargs)` (the model's own generate) with the controller steering it."""
    check_supported(model, kwargs)
    # the hook moves the probe layer's state to the controller's device (device_map="auto": another GPU)
    capture = LayerCapture(model, probe_layer, device=controller.device) if controller.needs_hidden else None
    user = kwargs.pop("logits_processor", None) or []
    processor = ThinkLogitsProcessor(controller, capture)
    # ours runs last among processors so nothing undoes a forced token (warpers keep a lone finite logit)
    kwargs["logits_processor"] = LogitsProcessorList(list(user) + [processor])
    prompt_len = kwargs["input_ids"].shape[1] if kwargs.get("input_ids") is not None else 0
    try:
        out = generate_fn(**kwargs)
        sequences = out if torch.is_tensor(out) else out.sequences
        if processor._started and sequences.shape[1] > prompt_len:
            controller.finish(sequences[:, -1])
        return out
    finally:
        if capture is not None:
            capture.remove()
