"""Which vLLM model classes adaptive_think wraps, and how an engine is pointed at the wrapper.

No vLLM import here: the plugin registers the wrapper names lazily (as "module:Class" strings) and the
frontend process builds `hf_overrides` without loading any model code.
"""

from __future__ import annotations

import sys

# vLLM architecture -> the wrapper class in models.py (each base builds its decoder on EagleModelMixin)
WRAPPERS = {
    "Qwen3ForCausalLM": "AdaptiveThinkQwen3ForCausalLM",
    "Qwen2ForCausalLM": "AdaptiveThinkQwen2ForCausalLM",
    "Qwen3MoeForCausalLM": "AdaptiveThinkQwen3MoeForCausalLM",
    "LlamaForCausalLM": "AdaptiveThinkLlamaForCausalLM",
}
MODELS_MODULE = "adaptive_think.integrations.vllm.models"


def wrapper_name(architecture: str) -> str:
    """The wrapper's registered name for a model architecture; ValueError for one that is not wrapped."""
    if architecture in WRAPPERS.values():
        return architecture
    if architecture not in WRAPPERS:
        raise ValueError(
            f"adaptive_think does not wrap the vLLM architecture {architecture!r} yet; supported: "
            f"{sorted(WRAPPERS)}. The wrapper needs a decoder built on vLLM's EagleModelMixin.")
    return WRAPPERS[architecture]


def base_architecture(name: str) -> str:
    """The model's own architecture name behind a wrapper name (a probe's fingerprint names that one)."""
    for base, wrapper in WRAPPERS.items():
        if name == wrapper:
            return base
    return name


# how many callers up a draft's ModelConfig may sit (ModelConfig -> get_config -> parser -> vLLM's compose)
DRAFT_SEARCH_DEPTH = 24


def building_a_draft(depth: int = DRAFT_SEARCH_DEPTH) -> bool:
    """Whether the caller runs inside vLLM's construction of a speculative draft model's config.

    vLLM applies a callable `hf_overrides` of the served model to a draft model's config too
    (`SpeculativeConfig.compose_draft_hf_overrides`), from a `ModelConfig` whose runner is "draft"; the
    config itself does not say whose it is (a same-family draft has the target's architecture).
    """
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return False
        owner = frame.f_locals.get("self")
        if type(owner).__name__ == "ModelConfig" and getattr(owner, "runner", None) == "draft":
            return True
        frame = frame.f_back
    return False


def select_wrapper(hf_config):
    """`hf_overrides` callable: point the served model's architectures at adaptive_think's wrappers.

    vLLM also calls it on a placeholder config (architectures [""]) to see whether it changes model_type;
    a config without a named architecture is returned unchanged. So is a speculative draft model's config
    (vLLM applies this callable to it too): a draft is never wrapped, and the engine then refuses
    speculative decoding with its own clear error (support.py) instead of one about the draft's architecture.
    """
    archs = list(getattr(hf_config, "architectures", None) or [])
    if not archs or not archs[0] or building_a_draft():
        return hf_config
    hf_config.architectures = [wrapper_name(archs[0])] + archs[1:]
    return hf_config


def wrapper_overrides(config_json: dict) -> dict:
    """The JSON form of `hf_overrides` for a model folder's config.json (for the server's --hf-overrides)."""
    archs = list(config_json.get("architectures") or [])
    if not archs:
        raise ValueError("adaptive_think: the model's config.json names no architectures; cannot pick a wrapper.")
    return {"architectures": [wrapper_name(archs[0])] + archs[1:]}
