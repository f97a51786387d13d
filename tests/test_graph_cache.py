"""The graph engine's runner cache: what keys a runner (not pad / eos ids, not the cache length when a larger
runner holds the call), `cache_info`, and the memory bound with least-recently-used eviction."""

import pytest
import torch

from adaptive_think.engines import graph
from adaptive_think.engines.graph import generate_graph
from adaptive_think.engines.runner_cache import CacheLimit, kv_bytes_estimate
from tiny import make_model, make_tokenizer

TOK = make_tokenizer()
PROMPTS = ["the answer is", "check 3 , 4 and 5 again . so", "x"]


@pytest.fixture
def model():
    m = make_model("qwen3", len(TOK), seed=7)
    yield m
    graph.clear_graph_cache(m)
    graph.set_cache_limit()


def run(model, n, prompts=PROMPTS, **kw):
    b = TOK(prompts, return_tensors="pt", padding=True)
    return generate_graph(model, None, b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=n, **kw)


def test_cache_info_lists_each_runner_with_its_kv_bytes(model):
    run(model, 8)
    run(model, 100)  # does not fit the 64-slot runner: a 128-slot one
    run(model, 8, prompts=PROMPTS[:2])  # another batch size
    info = graph.cache_info(model)
    assert [(i["batch"], i["bucket"], i["graph_mode"]) for i in info] == [(3, 64, "eager"), (3, 128, "eager"),
                                                                         (2, 64, "eager")]
    # qwen3 tiny: 3 layers x (K + V) x batch x 2 kv heads x slots x head_dim 8 x 4 bytes
    assert [i["kv_bytes"] for i in info] == [3 * 2 * b * 2 * L * 8 * 4 for b, L in ((3, 64), (3, 128), (2, 64))]
    assert info[0]["kv_bytes"] == kv_bytes_estimate(model, 3, 64)
    assert info[1]["tiers"] == []  # eager mode has no tiers: a step attends to exactly the slots written


def test_a_larger_runner_serves_smaller_calls_and_ids_do_not_key_runners(model):
    long = run(model, 100)
    assert [i["bucket"] for i in graph.cache_info(model)] == [128]
    short = run(model, 8)  # fits in the 128-slot runner: no new capture
    assert [i["bucket"] for i in graph.cache_info(model)] == [128]
    assert torch.equal(short, long[:, : short.shape[1]])  # greedy: a prefix of the longer run
    eos = int(run(model, 12, eos_token_id=None)[0, -3])  # a token row 0 writes: it finishes early
    ref = model.generate(**TOK(PROMPTS, return_tensors="pt", padding=True), max_new_tokens=12, do_sample=False,
                         eos_token_id=eos, pad_token_id=5)
    out = run(model, 12, eos_token_id=eos, pad_token_id=5)  # other eos and pad ids: same runner, their contents
    assert torch.equal(out, ref)
    assert len(graph.cache_info(model)) == 1


def test_memory_bound_evicts_least_recently_used_runners(model):
    small = kv_bytes_estimate(model, 3, 64)
    graph.set_cache_limit(max_bytes=3 * small)  # room for a 64-slot runner and a 128-slot one (2 x small)
    run(model, 8)
    run(model, 100)
    assert [i["bucket"] for i in graph.cache_info(model)] == [64, 128]
    run(model, 8)  # served by the smaller runner, which becomes the most recently used
    run(model, 8, prompts=PROMPTS[:2])  # batch 2 (2/3 small): over the bound, the 128-slot runner goes
    assert [(i["batch"], i["bucket"]) for i in graph.cache_info(model)] == [(3, 64), (2, 64)]
    assert sum(i["kv_bytes"] for i in graph.cache_info(model)) <= 3 * small
    graph.set_cache_limit(max_bytes=0)  # nothing fits: each call's runner is built alone
    run(model, 100)
    assert [(i["batch"], i["bucket"]) for i in graph.cache_info(model)] == [(3, 128)]
    graph.set_cache_limit(max_runners=1)
    run(model, 8, prompts=PROMPTS[:1])
    assert [(i["batch"], i["bucket"]) for i in graph.cache_info(model)] == [(1, 64)]


@pytest.mark.parametrize("bad", [dict(max_bytes=-1), dict(max_bytes=1.5), dict(max_runners=0)])
def test_cache_limit_is_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        CacheLimit(**bad)
