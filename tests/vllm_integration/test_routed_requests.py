"""A probe's route inside an offline vLLM engine (the one-family reasoner, greedy, CPU, V1 runner): each request runs
its route group's thresholds, placed by its prompt-end state, and gets exactly the hf engine's tokens with the same
probe and config. Run in the vLLM venv: `python -m pytest -m vllm tests/vllm_integration/test_routed_requests.py`.
"""

from __future__ import annotations

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here; .ci/run runs these tests in its vLLM venv")

from adaptive_think import AdaptiveThinker, ThinkConfig  # noqa: E402
from adaptive_think.bundled import probe_path, reasoner_path  # noqa: E402
from adaptive_think.integrations.vllm import llm_kwargs  # noqa: E402
from adaptive_think.tasks import make_questions  # noqa: E402
from tests.vllm_integration.conftest import chat_prompts  # noqa: E402

pytestmark = pytest.mark.vllm

OTHER = ["What is the capital of France?", "Wait, let me verify that. So the answer is 4."]
CONFIG = {"policy": "probe", "effort": "high", "max_think_tokens": 40}
NEVER = 2.0


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    """(folder of the bundled-v1 probe with a two-group route: its task's prompts in group "task", which never stops
    or skips, anything else in "other", which skips at once; hf thinker with that probe)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptive_think.probe import Probe
    from adaptive_think.probe.ladder import Rung
    from adaptive_think.probe.route import Route
    from adaptive_think.training.guard import features, prompt_states

    model = AutoModelForCausalLM.from_pretrained(reasoner_path("bundled-v1")).eval()
    tok = AutoTokenizer.from_pretrained(reasoner_path("bundled-v1"))
    probe = Probe.from_pretrained(probe_path("bundled-v1"))
    task = [q.question for q in make_questions(40, seed=91)]
    x = features(probe, prompt_states(model, tok, task + OTHER, probe.layer, log=lambda m: None))  # chat-templated
    centres = torch.stack([x[:len(task)].mean(0), x[len(task):].mean(0)])
    probe.route = Route(w=centres, b=-(centres * centres).sum(-1) / 2, groups=["task", "other"])  # nearest centre
    probe.set_ladder([Rung("high", 0.005, 0.1, NEVER, NEVER,
                           by_group={"task": {"greedy": (NEVER, NEVER)}, "other": {"greedy": (0.0, 0.0)}})], "high")
    folder = probe.save_pretrained(tmp_path_factory.mktemp("route") / "probe")
    return folder, AdaptiveThinker(model, tok, probe=Probe.from_pretrained(folder))


def test_routed_rows_run_their_groups_thresholds_in_vllm_as_on_the_hf_engine(routed):
    folder, thinker = routed
    llm = vllm.LLM(model=str(reasoner_path("bundled-v1")), dtype="float32", enforce_eager=True, max_model_len=256,
                   max_num_seqs=4, max_num_batched_tokens=16, kv_cache_memory_bytes=4_200_000, seed=0,
                   **llm_kwargs(probe=folder))
    tok = llm.get_tokenizer()
    prompts = chat_prompts(tok, 3, seed=78) + [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in OTHER]
    params = vllm.SamplingParams(max_tokens=120, temperature=0.0, extra_args={"adaptive_think": CONFIG})
    groups, ended = [], []
    for prompt, out in zip(prompts, llm.generate(prompts, [params] * len(prompts), use_tqdm=False)):
        ids = torch.tensor([thinker.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        want = thinker.generate(ids, attention_mask=torch.ones_like(ids), think=ThinkConfig(**CONFIG),
                                max_new_tokens=120, do_sample=False)
        assert list(out.outputs[0].token_ids) == want[0, ids.shape[1]:].tolist(), prompt
        groups.append(thinker.last_reports[0].group)
        ended.append(thinker.last_reports[0].ended_by)
    assert groups == [0, 0, 0, 1, 1]
    assert ended[3:] == ["skipped", "skipped"] and "skipped" not in ended[:3]
    del llm
