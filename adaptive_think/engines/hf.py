"""The `hf` engine: Hugging Face `generate()` plus one LogitsProcessor and one layer hook.

Everything `generate()` does keeps working (sampling, streamers, stopping criteria, processors, scores):
the processor runs the controller once per step and, for rows it must steer, leaves only the forced
token finite. The hook keeps the policy layer's hidden state at the last position only.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

from adaptive_think.controller import ThinkController

UNSUPPORTED = {
    "num_beams": "beam search keeps several hypotheses per row, which the per-row controller cannot steer",
    "assistant_model": "assisted (speculative) decoding writes several tokens per step past the controller",
    "prompt_lookup_num_tokens": "prompt-lookup decoding writes several tokens per step past the controller",
    "custom_generate": "a custom generation loop bypasses the controller's logits processor",
}


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder layers (Llama/Qwen/Mistral/Gemma layout and most others)."""
    n_layers = getattr(model.config, "num_hidden_layers", None)
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is not None and isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        return decoder.layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(
        f"Could not find the decoder layers of {type(model).__name__}: no ModuleList of num_hidden_layers={n_layers} "
        "modules. The probe policy needs a model whose decoder exposes `.layers`."
    )


class LayerCapture:
    """Forward hook on one decoder layer keeping its output at the last position: h [B, D]."""

    def __init__(self, model: nn.Module, layer: int):
        layers = decoder_layers(model)
        if not -len(layers) <= layer < len(layers):
            raise ValueError(f"layer={layer} is out of range for a model with {len(layers)} decoder layers.")
        self.layer = layer % len(layers)
        self.hidden: torch.Tensor | None = None
        self._handle = layers[self.layer].register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        self.hidden = out[:, -1, :]  # a view: no copy, no sync

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class ThinkLogitsProcessor(LogitsProcessor):
    """(input_ids [B, S], scores [B, V]) -> scores with forced rows reduced to their forced token."""

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
        # a contiguous [B] copy: the strided column view would make Triton compile a second specialisation
        forced = self.controller.step(input_ids[:, -1].contiguous(), hidden)  # [B]
        steer = (forced >= 0)[:, None]  # [B, 1]
        only_forced = torch.full_like(scores, float("-inf"))
        only_forced.scatter_(1, forced.clamp(min=0)[:, None], 0.0)
        return torch.where(steer, only_forced, scores)


def check_supported(model, kwargs: dict) -> None:
    """Raise a clear ValueError for generate() arguments the controller cannot steer."""
    gen_config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    beams = kwargs.get("num_beams", getattr(gen_config, "num_beams", 1) or 1)
    if beams is not None and beams > 1:
        raise ValueError(f"num_beams={beams} is not supported: {UNSUPPORTED['num_beams']}. Use num_beams=1.")
    for name in ("assistant_model", "prompt_lookup_num_tokens", "custom_generate"):
        if kwargs.get(name) is not None or getattr(gen_config, name, None) is not None:
            raise ValueError(f"{name} is not supported with adaptive thinking: {UNSUPPORTED[name]}. Leave it unset.")
    groups = kwargs.get("num_beam_groups", getattr(gen_config, "num_beam_groups", 1) or 1)
    if groups and groups > 1:
        raise ValueError(f"num_beam_groups={groups} is not supported: {UNSUPPORTED['num_beams']}.")


def generate_hf(model, controller: ThinkController, generate_fn, probe_layer: int | None, kwargs: dict):
    """Run `generate_fn(**kwargs)` (the model's own generate) with the controller steering it."""
    check_supported(model, kwargs)
    capture = LayerCapture(model, probe_layer) if controller.needs_hidden else None
    user = kwargs.pop("logits_processor", None) or []
    processor = ThinkLogitsProcessor(controller, capture)
    # ours runs last among processors so nothing undoes a forced token (warpers keep a lone finite logit)
    kwargs["logits_processor"] = LogitsProcessorList(list(user) + [processor])
    try:
        out = generate_fn(**kwargs)
        sequences = out if torch.is_tensor(out) else out.sequences
        if processor._started and sequences.shape[1] > kwargs["input_ids"].shape[1]:
            controller.finish(sequences[:, -1])
        return out
    finally:
        if capture is not None:
            capture.remove()
