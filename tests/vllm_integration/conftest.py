"""Shared pieces of the vLLM tests: the bundled reasoner's prompts and the hf-engine reference.

These tests run in the vLLM venv that .ci/run creates (`python -m pytest -m vllm tests/vllm_integration`); elsewhere
each module skips itself with a reason (`pytest.importorskip("vllm")`). They run on the one-family reasoner
(`bundled-v1`) and its probe: thoughts of ~86 tokens keep a CPU engine's runs to seconds, and what they check (the
same tokens and reports as the hf engine) does not depend on which reasoner answers.
"""

from __future__ import annotations

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.bundled import probe_path, reasoner_path
from adaptive_think.tasks import make_questions


@pytest.fixture(scope="session")
def hf_thinker():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(reasoner_path("bundled-v1")).eval()
    tok = AutoTokenizer.from_pretrained(reasoner_path("bundled-v1"))
    return AdaptiveThinker(model, tok, probe=probe_path("bundled-v1"))


def chat_prompts(tokenizer, n: int, seed: int = 5) -> list[str]:
    """n arithmetic questions of the bundled task family as chat prompts (thinking on)."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": q.question}], add_generation_prompt=True,
                                          tokenize=False) for q in make_questions(n, seed=seed)]


@torch.no_grad()
def hf_tokens_from_ids(thinker: AdaptiveThinker, prompt_ids: list[int], config: dict | None, max_new_tokens: int,
                       min_new_tokens: int = 0) -> list[int]:
    """Greedy completion of prompt token ids on the hf engine (config None: plain model.generate)."""
    ids = torch.tensor([prompt_ids], device=thinker.model.device)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                  min_new_tokens=min_new_tokens or None)
    if config is None:
        out = thinker.model.generate(ids, **kwargs)
    else:
        out = thinker.generate(ids, think=ThinkConfig(**config), **kwargs)
    return out[0, ids.shape[1]:].tolist()


def hf_tokens(thinker: AdaptiveThinker, prompt: str, config: dict | None, max_new_tokens: int,
              min_new_tokens: int = 0) -> list[int]:
    """Greedy completion token ids of one prompt text on the hf engine (config None: plain model.generate)."""
    ids = thinker.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return hf_tokens_from_ids(thinker, ids, config, max_new_tokens, min_new_tokens)


def assert_engine_matches_hf_on_cuda(llm, hf_thinker: AdaptiveThinker, configs: list, max_tokens: int = 120) -> None:
    """Greedy requests with `configs` (None: no adaptive_think settings) on a GPU engine give exactly the hf
    engine's tokens, the hf model moved to the GPU for the comparison and back after."""
    import json

    import vllm

    prompts = chat_prompts(llm.get_tokenizer(), len(configs))
    params = [vllm.SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                  extra_args={"adaptive_think": c} if c is not None else None) for c in configs]
    hf_thinker.model.to("cuda")
    try:
        for prompt, config, out in zip(prompts, configs, llm.generate(prompts, params, use_tqdm=False)):
            assert list(out.outputs[0].token_ids) == hf_tokens(hf_thinker, prompt, config, max_tokens), json.dumps(config)
    finally:
        hf_thinker.model.to("cpu")
