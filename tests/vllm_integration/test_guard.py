"""The out-of-distribution guard inside an offline vLLM engine (bundled reasoner + the bundled probe with a guard
fitted here, greedy, CPU, V1 runner): guarded and unguarded probe requests, in- and out-of-distribution prompts,
in one batch, each equal to the hf engine with the same probe and config; a request that sets a guard the probe
lacks or a fallback rung it does not have is refused before the engine. Run in the vLLM venv:
`python -m pytest -m vllm tests/vllm_integration/test_guard.py`.
"""

from __future__ import annotations


import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here; .ci/run runs these tests in its vLLM venv")

from vllm.exceptions import VLLMValidationError  # noqa: E402

from adaptive_think import AdaptiveThinker, ThinkConfig  # noqa: E402
from adaptive_think.bundled import probe_path, reasoner_path  # noqa: E402
from adaptive_think.integrations.vllm import llm_kwargs  # noqa: E402
from tests.vllm_integration.conftest import chat_prompts  # noqa: E402

pytestmark = pytest.mark.vllm

OUT_OF_DISTRIBUTION = ["What is the capital of France?", "Wait, let me verify that. So the answer is 4."]
# thresholds 0: a row the guard passes skips at once; a flagged one thinks in full (its budget still caps it)
EAGER = {"policy": "probe", "threshold": 0.0, "skip_threshold": 0.0, "max_think_tokens": 40}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """(folder of the bundled probe with a guard fitted on 200 bundled questions, hf thinker with that probe)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptive_think.probe import Probe
    from adaptive_think.training.guard import features, fit_guard, prompt_states, split_for_guard
    from adaptive_think.training.items import bundled_items

    model = AutoModelForCausalLM.from_pretrained(reasoner_path("bundled-v1")).eval()
    tok = AutoTokenizer.from_pretrained(reasoner_path("bundled-v1"))
    probe = Probe.from_pretrained(probe_path("bundled-v1"))
    x = features(probe, prompt_states(model, tok, [it.question for it in bundled_items(200, 31)], probe.layer,
                                      log=lambda m: None))
    fit, cal = split_for_guard(200, 0.5, 31)
    probe.guard = fit_guard(x[fit], x[cal], rank=8, alpha=0.1)
    folder = probe.save_pretrained(tmp_path_factory.mktemp("guard") / "probe")
    return folder, AdaptiveThinker(model, tok, probe=Probe.from_pretrained(folder))


@pytest.fixture(scope="module")
def llm(guarded):
    engine = vllm.LLM(model=str(reasoner_path("bundled-v1")), dtype="float32", enforce_eager=True, max_model_len=256,
                      max_num_seqs=4, max_num_batched_tokens=16, kv_cache_memory_bytes=4_200_000, seed=0,
                      **llm_kwargs(probe=guarded[0]))
    yield engine
    del engine


def _hf(thinker, prompt: str, config: dict) -> tuple[list[int], str]:
    ids = torch.tensor([thinker.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    out = thinker.generate(ids, attention_mask=torch.ones_like(ids), think=ThinkConfig(**config), max_new_tokens=120,
                           do_sample=False)
    return out[0, ids.shape[1]:].tolist(), thinker.last_reports[0].guard


def test_guarded_rows_fall_back_in_vllm_as_on_the_hf_engine(llm, guarded):
    _, thinker = guarded
    tok = llm.get_tokenizer()
    inside = chat_prompts(tok, 4, seed=77)
    outside = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
               for q in OUT_OF_DISTRIBUTION]
    prompts = inside + outside + outside
    configs = [EAGER] * (len(inside) + len(outside)) + [{**EAGER, "guard": False}] * len(outside)
    params = [vllm.SamplingParams(max_tokens=120, temperature=0.0, extra_args={"adaptive_think": c}) for c in configs]
    verdicts = []
    for prompt, config, out in zip(prompts, configs, llm.generate(prompts, params, use_tqdm=False)):
        want, verdict = _hf(thinker, prompt, config)
        assert list(out.outputs[0].token_ids) == want, (prompt, config)
        verdicts.append(verdict)
    n_in, n_out = len(inside), len(outside)
    assert verdicts[n_in:n_in + n_out] == ["fallback"] * n_out and verdicts[n_in + n_out:] == ["off"] * n_out
    assert verdicts[:n_in].count("pass") >= n_in - 1  # alpha 0.1: most in-distribution rows pass


@pytest.mark.parametrize("extra, message", [
    ({"adaptive_think": {"policy": "probe", "guard_fallback": "extreme"}}, "neither 'full' nor an effort rung"),
    ({"adaptive_think.policy": "budget", "adaptive_think.max_think_tokens": 5, "adaptive_think.guard": "true"},
     "only apply to policy"),
])
def test_bad_guard_settings_are_refused_before_the_engine(llm, extra, message):
    with pytest.raises(VLLMValidationError, match=message):
        llm.generate(["hi"], vllm.SamplingParams(max_tokens=4, extra_args=extra), use_tqdm=False)
