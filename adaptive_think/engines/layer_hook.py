"""The one last-position hidden-state hook, used by both engines and by `collect`.

A forward hook on a decoder layer keeps that layer's output at the last position, h [B, D]. With
`device_map="auto"` the layer may live on another GPU than the reader (the controller's state, or the
layer the others are stacked with): the hook moves h there with a non-blocking copy, so no host sync.
With `into`, the hook copies h into a static buffer instead (a copy works inside a CUDA-graph capture).

    >>> with LayerCapture(model, 12, device=model.device) as cap:
    ...     model.generate(...)        # cap.hidden is [B, D] of the latest forward
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


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


def layer_output(output) -> torch.Tensor:
    """A decoder layer's output (a tensor or a tuple starting with one) -> its hidden states [B, S, D]."""
    return output[0] if isinstance(output, (tuple, list)) else output


def last_position(output) -> torch.Tensor:
    """A decoder layer's output [B, S, D] -> [B, D], a view."""
    return layer_output(output)[:, -1, :]


class LayerCapture:
    """Forward hooks on one or several decoder layers keeping each one's output at the last position.

    layers: one index or a sequence of indices (negative counts from the end). device: where the kept
    states go (None: stay on their layer's device). into: a [B, D] buffer (one layer only) that the hook
    copies into; the hook only acts while `enabled`. every_position: keep each layer's whole output [B, S, D]
    instead of its last position (a teacher-forced pass over a known sequence).
    """

    def __init__(self, model: nn.Module, layers: int | Sequence[int], device=None, into: torch.Tensor | None = None,
                 every_position: bool = False):
        mods = decoder_layers(model)
        wanted = [layers] if isinstance(layers, int) else list(layers)
        for layer in wanted:
            if not -len(mods) <= layer < len(mods):
                raise ValueError(f"layer={layer} is out of range for a model with {len(mods)} decoder layers.")
        if into is not None and len(wanted) != 1:
            raise ValueError("LayerCapture(into=...) copies one layer's state; pass a single layer.")
        self.layers = [layer % len(mods) for layer in wanted]
        self.layer = self.layers[0]
        self.device = torch.device(device) if device is not None else None
        self.into = into
        self.every_position = every_position
        self.enabled = True
        self.states: dict[int, torch.Tensor] = {}
        self._handles = [mods[layer].register_forward_hook(self._hook(layer)) for layer in self.layers]

    def _hook(self, layer: int):
        def hook(module, args, output):
            if not self.enabled:
                return
            h = layer_output(output) if self.every_position else last_position(output)  # [B, S, D] or [B, D]
            if self.into is not None:
                self.into.copy_(h, non_blocking=True)  # copy_ crosses devices itself
            elif self.device is not None and h.device != self.device:
                self.states[layer] = h.to(self.device, non_blocking=True)
            else:
                self.states[layer] = h  # a view: no copy, no sync

        return hook

    @property
    def hidden(self) -> torch.Tensor | None:
        """[B, D] of the first (or only) layer after the latest forward; None before any."""
        return self.into if self.into is not None else self.states.get(self.layer)

    def stacked(self) -> torch.Tensor:
        """[B, L, D] ([B, L, S, D] with every_position): the kept states of every layer, in the order given (all on
        `device`)."""
        return torch.stack([self.states[layer] for layer in self.layers], 1)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
