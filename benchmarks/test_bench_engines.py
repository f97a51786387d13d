"""pytest-benchmark cases of the engines on CPU-sized models (the GPU numbers come from gpu_engines.py).

    pytest benchmarks/test_bench_engines.py --benchmark-only          # compare with --benchmark-compare

Each case generates a fixed number of tokens (eos off) for a batch of left-padded prompts with
HF generate(), the hf engine, or the graph engine (no controller / policy full / budget / probe).
"""

import os

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.engines import graph
from adaptive_think.engines.graph import generate_graph

torch.set_num_threads(min(2, os.cpu_count() or 1))
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def reasoner():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptive_think.bundled import reasoner_path

    path = reasoner_path()  # committed with the package: a missing reasoner is a packaging break, not a skip
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # every run writes NEW_TOKENS tokens
    yield model, tok
    model.generation_config.eos_token_id = eos
    graph.clear_graph_cache(model)


def batch_of(tok, size):
    from adaptive_think.loading import chat_prompt
    from adaptive_think.tasks import make_questions

    prompts = [chat_prompt(tok, q.question) for q in make_questions(size, seed=0)]
    return tok(prompts, return_tensors="pt", padding=True)


def probe_for(model):
    from adaptive_think.probe import Probe

    return Probe.random_for(model, width=256, seed=0)


@pytest.mark.parametrize("batch", [1, 8])
def test_hf_generate(benchmark, reasoner, batch):
    model, tok = reasoner
    b = batch_of(tok, batch)
    benchmark.pedantic(lambda: model.generate(**b, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0),
                       rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("policy", ["full", "probe"])
@pytest.mark.parametrize("batch", [1, 8])
def test_hf_engine(benchmark, reasoner, batch, policy):
    model, tok = reasoner
    b = batch_of(tok, batch)
    thinker = AdaptiveThinker(model, tok, probe=probe_for(model))
    think = ThinkConfig(policy=policy) if policy == "full" else ThinkConfig(policy="probe", threshold=1.0, skip_threshold=1.0)
    benchmark.pedantic(lambda: thinker.generate(**b, think=think, engine="hf", max_new_tokens=NEW_TOKENS, pad_token_id=0),
                       rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("policy", ["none", "full", "budget", "probe"])
@pytest.mark.parametrize("batch", [1, 8])
def test_graph_engine(benchmark, reasoner, batch, policy):
    model, tok = reasoner
    b = batch_of(tok, batch)
    thinker = AdaptiveThinker(model, tok, probe=probe_for(model))
    thinks = {"full": ThinkConfig(), "budget": ThinkConfig(policy="budget", max_think_tokens=8),
              "probe": ThinkConfig(policy="probe", threshold=1.0, skip_threshold=1.0)}
    ctl_kw = dict(eos_token_id=None)

    def run():
        ctl = thinker.controller(thinks[policy], ctl_kw) if policy != "none" else None
        layer = thinker.probe.layer if policy == "probe" else None
        return generate_graph(model, ctl, b["input_ids"], attention_mask=b["attention_mask"],
                              max_new_tokens=NEW_TOKENS, pad_token_id=0, probe_layer=layer)

    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert out.shape[1] == b["input_ids"].shape[1] + NEW_TOKENS
