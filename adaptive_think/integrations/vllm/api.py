"""`llm_kwargs`: everything `vllm.LLM` needs to serve a model with adaptive thinking per request.

    from vllm import LLM, SamplingParams
    from adaptive_think.integrations.vllm import llm_kwargs
    llm = LLM(model=DIR, **llm_kwargs(probe=PROBE_DIR))
    params = SamplingParams(max_tokens=512, extra_args={"adaptive_think": {"policy": "budget", "max_think_tokens": 64}})
    llm.generate(prompts, params)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from adaptive_think.integrations.vllm.architectures import select_wrapper
from adaptive_think.integrations.vllm.requests import ENV_VAR, ServingSettings

PROCESSOR = "adaptive_think.integrations.vllm.processor:ThinkLogitsProcessor"


def serving_settings(probe=None, think_tokens=None, effort_budgets: dict | None = None,
                     model: str | os.PathLike | None = None) -> ServingSettings:
    """Checked settings: the probe loads (and matches `model`'s config.json when a model folder is given)."""
    probe_path = None
    if probe is not None:
        from adaptive_think.integrations.vllm.context import check_probe
        from adaptive_think.probe import Probe

        probe_path = str(Path(probe).expanduser().resolve())
        loaded = Probe.from_pretrained(probe_path)  # clear error for a missing or corrupt probe folder
        if model is not None and (Path(model) / "config.json").is_file():
            from transformers import AutoConfig

            check_probe(loaded, AutoConfig.from_pretrained(model))
    return ServingSettings(probe=probe_path, think_tokens=tuple(think_tokens) if think_tokens else None,
                           effort_budgets=dict(effort_budgets or {}))


def llm_kwargs(probe=None, *, think_tokens=None, effort_budgets: dict | None = None, model=None) -> dict:
    """Keyword arguments for `vllm.LLM(model=..., **llm_kwargs(probe=...))`.

    probe: a probe folder (needed for policy "probe" and probe effort rungs); it is checked against the
    served model's fingerprint when the engine starts (and here already when `model` is a local folder).
    think_tokens: (open, close) markers for a model the registry does not know. effort_budgets: effort ->
    thinking-token budget used when there is no probe ladder (see requests.DEFAULT_EFFORT_BUDGETS).

    The settings travel to vLLM's spawned engine processes in the environment variable
    ADAPTIVE_THINK_VLLM, which this call sets in the current process. An engine adaptive_think cannot
    steer (speculative decoding but n-gram / EAGLE-3 / MTP drafts on Model Runner V2, batch-sharded sampling,
    pipeline parallelism with a probe: support.py)
    fails when it starts; a speculative draft model's config is never pointed at a wrapper.
    """
    settings = serving_settings(probe, think_tokens, effort_budgets, model)
    os.environ[ENV_VAR] = settings.to_json()
    return {"logits_processors": [PROCESSOR], "hf_overrides": select_wrapper}


def server_args(model: str, settings: ServingSettings) -> list[str]:
    """vLLM OpenAI-server arguments that wire in the processor and the wrapper for `model` (a local folder)."""
    from adaptive_think.integrations.vllm.architectures import wrapper_overrides

    config = json.loads((Path(model) / "config.json").read_text())
    return ["--logits-processors", PROCESSOR, "--hf-overrides", json.dumps(wrapper_overrides(config))]


def check_server_args(argv: list[str], settings: ServingSettings) -> None:
    """Refuse vLLM server arguments whose engine adaptive_think cannot steer (support.py), before the server
    starts. The engine arguments are read with vLLM's own parser (flag spellings, `--config` files, dotted
    `--speculative-config.method` forms); server-only arguments are left to the server."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from adaptive_think.integrations.vllm.support import check_setup, setup_of_args

    class EngineArgsOnly(FlexibleArgumentParser):
        def parse_known_args(self, args=None, namespace=None):
            known, _ = super().parse_known_args(args, namespace)
            return known, []  # server-only arguments (--port, --middleware, ...) are not ours to judge

    known = EngineArgs.add_cli_args(EngineArgsOnly()).parse_args(list(argv))
    check_setup(setup_of_args(known), probe_served=settings.probe is not None)
