"""vLLM model classes that also hand each request's step inputs to adaptive_think's logits processor.

`AdaptiveThink<Arch>` subclasses vLLM's own `<Arch>` (Qwen3, Qwen2, Qwen3-MoE, Llama): the same weights,
the same forward, plus, per request of the step, the tokens fed at its last scheduled positions (one, or
num_speculative_tokens + 1 under speculative decoding: every position that gets a logits row), those
positions, and (when a probe is served) the residual stream after decoder layer L there (EAGLE-3's
auxiliary hidden-state mechanism, `EagleModelMixin._set_aux_hidden_state_layers((L + 1,))`: the sum
`hidden + residual` after layer L, which is what the hf engine's forward hook on layer L sees; HF's
`output_hidden_states[-1]` comes after the final norm and is not it). They go to the processor through
`rows.CHANNEL`. Under an EAGLE-3 draft, vLLM sets the aux layers its head reads through
`set_aux_hidden_state_layers`; the wrapper adds the probe's layer to them and hands the runner only the
draft's own (an n-gram or MTP draft reads no aux layers). The plugin (plugin.py) registers these names
in every vLLM process; `llm_kwargs` / `adaptive-think serve` select them with `hf_overrides={"architectures": [...]}`.
"""

from __future__ import annotations

import torch
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM
from vllm.model_executor.models.qwen3_moe import Qwen3MoeForCausalLM

from adaptive_think.integrations.vllm.requests import current_settings
from adaptive_think.integrations.vllm.rows import CHANNEL, RowTap
from adaptive_think.integrations.vllm.support import check_engine, speculative_width


def _query_start_loc() -> torch.Tensor | None:
    """[R + 1] where each request's scheduled tokens start in this step's flat token batch (batch order),
    from the attention metadata; None outside a real step (profiling, dummy runs)."""
    if not is_forward_context_available():
        return None
    meta = get_forward_context().attn_metadata
    if isinstance(meta, dict):
        meta = next(iter(meta.values()), None)
    qsl = getattr(meta, "query_start_loc", None)
    if not torch.is_tensor(qsl) or qsl.numel() < 2:
        return None
    return qsl


def served_probe_layer() -> int | None:
    """The decoder layer the served probe reads (None when no probe is served, or a score file reading the logits)."""
    settings = current_settings()
    if settings.probe is None:
        return None
    from adaptive_think.probe import Probe

    probe = Probe.from_pretrained(settings.probe)
    return None if probe.reads_logits else probe.layer


class _TapMixin:
    """Adds the row tap to a vLLM causal-LM class whose inner model is built on EagleModelMixin."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        probe_layer = served_probe_layer()
        # before any weights load (Model Runner V2 builds the model before its logits processors)
        check_engine(vllm_config, probe_served=probe_layer is not None)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        text_config = vllm_config.model_config.hf_config.get_text_config()
        layers = int(text_config.num_hidden_layers)
        self._probe_layer = probe_layer
        if self._probe_layer is not None:
            if not 0 <= self._probe_layer < layers:
                raise ValueError(f"adaptive_think: probe layer {self._probe_layer} does not exist in a model of "
                                 f"{layers} layers.")
        self._draft_layers: tuple[int, ...] | None = None  # aux layers an EAGLE-3 draft reads (None: no such draft)
        self._set_aux_layers()
        rows = max(int(vllm_config.scheduler_config.max_num_seqs), 1)
        device = next(self.parameters()).device
        dtype = vllm_config.model_config.dtype
        hidden = int(text_config.hidden_size) if self._probe_layer is not None else None
        self._tap = RowTap(rows, hidden, dtype, device, width=speculative_width(vllm_config))

    def _set_aux_layers(self) -> None:
        """The inner model's aux layers: the draft's and the probe's (aux state k is taken after k decoder
        layers: L + 1 is the output of layer L). vLLM keeps them sorted and without repeats."""
        layers = set(self._draft_layers or ())
        if self._probe_layer is not None:
            layers.add(self._probe_layer + 1)
        self.model._set_aux_hidden_state_layers(tuple(layers))
        ordered = sorted(layers)
        self._probe_aux = ordered.index(self._probe_layer + 1) if self._probe_layer is not None else None
        self._draft_aux = [ordered.index(k) for k in sorted(set(self._draft_layers))] if self._draft_layers else None

    def set_aux_hidden_state_layers(self, layers: tuple[int, ...]) -> None:
        """vLLM's EAGLE-3 hook (SupportsEagle3): the draft's layers join the probe's instead of replacing them."""
        self._draft_layers = tuple(int(k) for k in layers)
        self._set_aux_layers()

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        out = super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        hidden_states, aux = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
        qsl = _query_start_loc()
        if qsl is not None and input_ids is not None:
            if qsl.shape[0] - 1 > self._tap.rows:  # never under a captured graph: requests <= max_num_seqs
                self._tap = self._tap.resized(qsl.shape[0] - 1)
            probe_aux = aux[self._probe_aux] if aux and self._probe_aux is not None else None
            self._tap.record(qsl, input_ids, positions, probe_aux)
        if self._draft_aux is not None:  # the runner of an EAGLE-3 draft expects (hidden, the draft's aux states)
            return hidden_states, [aux[i] for i in self._draft_aux]
        return hidden_states

    def compute_logits(self, hidden_states: torch.Tensor):
        logits = super().compute_logits(hidden_states)
        n = hidden_states.shape[0]
        if self._tap.width > 1:  # Model Runner V2 under speculation: every request's block
            CHANNEL.publish(self._tap.view())
        elif n <= self._tap.rows:
            CHANNEL.publish(self._tap.view(n))
        return logits


class AdaptiveThinkQwen3ForCausalLM(_TapMixin, Qwen3ForCausalLM):
    """Qwen3ForCausalLM with adaptive_think's row tap."""


class AdaptiveThinkQwen2ForCausalLM(_TapMixin, Qwen2ForCausalLM):
    """Qwen2ForCausalLM (Qwen2.5, QwQ, DeepSeek-R1-Distill-Qwen) with adaptive_think's row tap."""


class AdaptiveThinkQwen3MoeForCausalLM(_TapMixin, Qwen3MoeForCausalLM):
    """Qwen3MoeForCausalLM with adaptive_think's row tap."""


class AdaptiveThinkLlamaForCausalLM(_TapMixin, LlamaForCausalLM):
    """LlamaForCausalLM (Llama, DeepSeek-R1-Distill-Llama) with adaptive_think's row tap."""
