"""adaptive_think inside one offline vLLM engine (bundled reasoner + probe, greedy, CPU, V1 runner).

One engine serves every test here: 4 slots for 8+ requests (slots are reused), 16-token scheduler chunks
(every prompt is prefilled in several chunks) and a KV cache of 640 tokens (long requests get preempted
and resumed). Each request's tokens must equal `AdaptiveThinker.generate` on the hf engine with the same
config. Run in the vLLM venv: `python -m pytest -m vllm tests/vllm_integration`.
"""

from __future__ import annotations

import os

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here; .ci/run runs these tests in its vLLM venv")

from vllm.exceptions import VLLMValidationError  # noqa: E402

from adaptive_think.bundled import probe_path, reasoner_path  # noqa: E402
from adaptive_think.integrations.vllm import llm_kwargs  # noqa: E402
from tests.vllm_integration.conftest import chat_prompts, hf_tokens  # noqa: E402

pytestmark = pytest.mark.vllm

MIXED = [
    {"policy": "full"},
    {"policy": "none"},
    {"policy": "budget", "max_think_tokens": 0, "exit_text": "\n\n"},
    {"policy": "budget", "max_think_tokens": 5, "exit_text": "\n\n"},
    {"policy": "budget", "max_think_tokens": 20, "exit_text": "\n\n"},
    {"policy": "probe"},
    {"policy": "probe", "max_think_tokens": 10},
    None,  # a request without adaptive_think settings is left alone
]


@pytest.fixture(scope="module")
def llm():
    # LLM.apply_model ships a test function to the worker (pickled), which vLLM allows only when asked
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    engine = vllm.LLM(model=str(reasoner_path("bundled-v1")), dtype="float32", enforce_eager=True, max_model_len=256,
                      max_num_seqs=4, max_num_batched_tokens=16, kv_cache_memory_bytes=4_200_000,
                      disable_log_stats=False, seed=0, **llm_kwargs(probe=probe_path("bundled-v1")))
    yield engine
    del engine


def _params(config, max_tokens=150, **kw):
    extra = {"adaptive_think": config} if config is not None else None
    return vllm.SamplingParams(max_tokens=max_tokens, temperature=0.0, extra_args=extra, **kw)


def _preemptions(llm) -> int:
    return int(sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions"))


def _tapped_rows(model):
    """In the worker: the rows the model wrapper published for the last step (token, position, hidden)."""
    from adaptive_think.integrations.vllm.rows import CHANNEL

    rows = CHANNEL.rows
    return rows.token.tolist(), rows.pos.tolist(), rows.hidden.float().tolist()  # plain lists cross the RPC


def test_wrapper_hands_over_the_probe_layers_residual_stream(llm, hf_thinker):
    prompt = chat_prompts(llm.get_tokenizer(), 1, seed=99)[0]
    ids = hf_thinker.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    llm.generate([prompt], _params({"policy": "probe"}, max_tokens=1), use_tqdm=False)  # the last step: prefill
    token, pos, hidden = llm.apply_model(_tapped_rows)[0]
    hidden = torch.tensor(hidden)
    assert token == [ids[-1]] and pos == [len(ids) - 1]
    from adaptive_think.engines.layer_hook import LayerCapture

    layer = hf_thinker.probe.layer
    with torch.no_grad(), LayerCapture(hf_thinker.model, [layer - 1, layer]) as capture:
        hf_thinker.model(torch.tensor([ids]))
    # the hf engine's hook on layer L: the residual stream after layer L (before the final norm for the last layer)
    torch.testing.assert_close(hidden[0], capture.states[layer][0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(hidden[0], capture.states[layer - 1][0], rtol=1e-2, atol=1e-2)


def test_mixed_configs_in_one_batch_match_the_hf_engine(llm, hf_thinker):
    prompts = chat_prompts(llm.get_tokenizer(), len(MIXED))
    outs = llm.generate(prompts, [_params(c) for c in MIXED], use_tqdm=False)
    for prompt, config, out in zip(prompts, MIXED, outs):
        assert list(out.outputs[0].token_ids) == hf_tokens(hf_thinker, prompt, config, 150), config


def test_preempted_requests_resume_their_thinking_state(llm, hf_thinker):
    # min_tokens keeps every request writing 150 tokens: 4 x ~180 tokens do not fit 640, so some are preempted
    configs = [{"policy": "budget", "max_think_tokens": 30, "exit_text": "\n\n"}, {"policy": "full"},
               {"policy": "probe"}, {"policy": "budget", "max_think_tokens": 12}, {"policy": "none"}, {"policy": "probe"}]
    prompts = chat_prompts(llm.get_tokenizer(), len(configs), seed=11)
    before = _preemptions(llm)
    outs = llm.generate(prompts, [_params(c, min_tokens=150) for c in configs], use_tqdm=False)
    assert _preemptions(llm) > before, "the KV cache was meant to be too small for these requests"
    for prompt, config, out in zip(prompts, configs, outs):
        assert list(out.outputs[0].token_ids) == hf_tokens(hf_thinker, prompt, config, 150, min_new_tokens=150), config


def test_sampled_rows_keep_their_budget(llm):
    tok = llm.get_tokenizer()
    close = tok.convert_tokens_to_ids("</think>")
    prompts = chat_prompts(tok, 6, seed=3)
    # no per-request seed: vLLM 0.32's CPU runner cannot rewind a request's generator after a discarded
    # partial-prefill sample ("CPU Generator does not use offset"); the engine's seed makes the run repeatable
    params = vllm.SamplingParams(max_tokens=120, temperature=1.0,
                                 extra_args={"adaptive_think": {"policy": "budget", "max_think_tokens": 7}})
    for out in llm.generate(prompts, params, use_tqdm=False):
        ids = list(out.outputs[0].token_ids)
        assert close in ids and ids.index(close) <= 1 + 7  # "<think>", at most 7 thinking tokens, "</think>"


@pytest.mark.parametrize("extra, message", [
    ({"adaptive_think": {"policy": "sometimes"}}, "not a known policy"),
    ({"adaptive_think.policy": "budget"}, "needs max_think_tokens"),
    ({"adaptive_think.policy": "budget", "adaptive_think.max_think_tokens": "many"}, "must be an integer"),
    ({"adaptive_think.bogus": 1}, "unknown adaptive_think setting"),
])
def test_invalid_settings_are_refused_before_the_engine(llm, extra, message):
    with pytest.raises(VLLMValidationError, match=message):
        llm.generate(["hi"], vllm.SamplingParams(max_tokens=4, extra_args=extra), use_tqdm=False)


def test_both_thinking_budgets_on_one_request_are_refused(llm):
    params = vllm.SamplingParams(max_tokens=4, thinking_token_budget=5,
                                 extra_args={"adaptive_think": {"policy": "budget", "max_think_tokens": 5}})
    with pytest.raises(VLLMValidationError, match="thinking_token_budget"):
        llm.generate(["hi"], params, use_tqdm=False)
