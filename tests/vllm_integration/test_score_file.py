"""A training-free score file served by vLLM: every request of a batch mixing score rows with every other
policy gets exactly the hf engine's tokens (bundled reasoner, greedy, fp32, CPU, V1 runner)."""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here; .ci/run runs these tests in its vLLM venv")

from adaptive_think import AdaptiveThinker  # noqa: E402
from adaptive_think.bundled import reasoner_path  # noqa: E402
from adaptive_think.integrations.vllm import llm_kwargs  # noqa: E402
from adaptive_think.probe import Probe  # noqa: E402
from tests.vllm_integration.conftest import chat_prompts, hf_tokens  # noqa: E402

pytestmark = pytest.mark.vllm

# the bundled reasoner's close-margin sits near exp(-15) mid-thought and rises where it is about to close, so
# these explicit (uncalibrated) thresholds stop some thoughts early and leave others alone
MIXED = [
    {"policy": "probe", "threshold": 1e-7},
    {"policy": "probe", "threshold": 1e-5},
    {"policy": "probe", "threshold": 1e-3, "exit_text": "\n\n"},
    {"policy": "full"},
    {"policy": "none"},
    {"policy": "budget", "max_think_tokens": 5, "exit_text": "\n\n"},
    {"policy": "probe", "threshold": 1e-6, "max_think_tokens": 12},
    None,
]


@pytest.fixture(scope="module")
def score_dir(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(reasoner_path("bundled-v1"))
    folder = tmp_path_factory.mktemp("close-margin")
    Probe.training_free("close-margin", model).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def thinker(score_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(reasoner_path("bundled-v1")).eval()
    return AdaptiveThinker(model, AutoTokenizer.from_pretrained(reasoner_path("bundled-v1")), probe=score_dir)


def test_score_rows_mixed_with_every_policy_match_the_hf_engine(score_dir, thinker):
    llm = vllm.LLM(model=str(reasoner_path("bundled-v1")), dtype="float32", enforce_eager=True, max_model_len=256,
                   max_num_seqs=4, max_num_batched_tokens=16, kv_cache_memory_bytes=8_000_000, seed=0,
                   **llm_kwargs(probe=score_dir))
    try:
        prompts = chat_prompts(llm.get_tokenizer(), len(MIXED), seed=11)
        params = [vllm.SamplingParams(max_tokens=150, temperature=0.0,
                                      extra_args={"adaptive_think": c} if c is not None else None) for c in MIXED]
        outs = llm.generate(prompts, params, use_tqdm=False)
    finally:
        del llm
    expected = [hf_tokens(thinker, p, c, 150) for p, c in zip(prompts, MIXED)]
    for out, want, config in zip(outs, expected, MIXED):
        assert list(out.outputs[0].token_ids) == want, config
    # the case has teeth: at least one score row was stopped by its score (its tokens differ from full thinking's)
    stopped = [w != hf_tokens(thinker, p, {"policy": "full"}, 150)
               for w, p, c in zip(expected, prompts, MIXED) if c and c["policy"] == "probe" and "max_think_tokens" not in c]
    assert any(stopped), "no score row stopped early: the thresholds no longer exercise the score"
