"""vLLM model classes that also hand each request's step inputs to adaptive_think's logits processor.

`AdaptiveThink<Arch>` subclasses vLLM's own `<Arch>` (Qwen3, Qwen2, Qwen3-MoE, Llama): the same weights,
the same forward, plus, per request of the step, the token fed at its last scheduled position, that
position, and (when a probe is served) the residual stream after decoder layer L there (EAGLE-3's
auxiliary hidden-state mechanism, `EagleModelMixin._set_aux_hidden_state_layers((L + 1,))`: the sum
`hidden + residual` after layer L, which is what the hf engine's forward hook on layer L sees; HF's
`output_hidden_states[-1]` comes after the final norm and is not it). They go to the processor through
`rows.CHANNEL` in logits-row order. The plugin (plugin.py) registers these names in every vLLM process;
`llm_kwargs` / `adaptive-think serve` select them with `hf_overrides={"architectures": [...]}`.
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
from adaptive_think.integrations.vllm.support import check_engine


def _last_token_index() -> torch.Tensor | None:
    """[R] index of each request's last scheduled token in this step's flat token batch (batch order),
    from the attention metadata's query_start_loc; None outside a real step (profiling, dummy runs)."""
    if not is_forward_context_available():
        return None
    meta = get_forward_context().attn_metadata
    if isinstance(meta, dict):
        meta = next(iter(meta.values()), None)
    qsl = getattr(meta, "query_start_loc", None)
    if not torch.is_tensor(qsl) or qsl.numel() < 2:
        return None
    return qsl[1:] - 1


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
            # aux state index k is taken after k decoder layers: L + 1 is the output of layer L
            self.model._set_aux_hidden_state_layers((self._probe_layer + 1,))
        rows = max(int(vllm_config.scheduler_config.max_num_seqs), 1)
        device = next(self.parameters()).device
        dtype = vllm_config.model_config.dtype
        hidden = int(text_config.hidden_size) if self._probe_layer is not None else None
        self._tap = RowTap(rows, hidden, dtype, device)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        out = super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        hidden_states, aux = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
        last = _last_token_index()
        if last is not None and input_ids is not None:
            if last.shape[0] > self._tap.rows:  # never under a captured graph: requests <= max_num_seqs
                self._tap = self._tap.resized(last.shape[0])
            self._tap.record(last, input_ids, positions, aux[0] if aux else None)
        return hidden_states

    def compute_logits(self, hidden_states: torch.Tensor):
        logits = super().compute_logits(hidden_states)
        n = hidden_states.shape[0]
        if n <= self._tap.rows:
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
