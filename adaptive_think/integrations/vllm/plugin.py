"""The `vllm.general_plugins` entry point: register the wrapper model classes in every vLLM process.

vLLM calls `register()` in each process it starts (frontend, engine core, workers), possibly several
times. Registering only adds adaptive_think's own architecture names (lazily, as "module:Class"
strings, so no model code is imported here); an engine uses them only when its `hf_overrides` selects
them (`llm_kwargs`, `adaptive-think serve`), so other engines in the same environment are unaffected.
"""

from __future__ import annotations

from adaptive_think.integrations.vllm.architectures import MODELS_MODULE, WRAPPERS


def register() -> None:
    from vllm import ModelRegistry

    for wrapper in WRAPPERS.values():
        if wrapper not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(wrapper, f"{MODELS_MODULE}:{wrapper}")
