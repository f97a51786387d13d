"""Forced-exit answers decoded on the generation's own cache (training/branches.py) equal re-prefilling each exit
through generate() (the route collect keeps for models the shared cache cannot serve): token for token on a
tiny random Qwen3 with multi-token markers and a prompt ending inside an open think block, and record for
record, state for state, through collect on that model and on the bundled reasoner. Greedy, fp32."""

import dataclasses

import pytest
import torch
from transformers import MistralConfig

from adaptive_think.engines.args import eos_token_ids
from adaptive_think.training import collect as collect_mod
from adaptive_think.training.branches import Branch, branch_answers, shared_route_refusal
from adaptive_think.training.collect import CollectConfig, collect, continuations
from adaptive_think.training.items import Item, bundled_items, load_checker
from adaptive_think.training.shards import load_collection
from pipeline_helpers import R1_TEMPLATE
from tiny import make_model, make_tokenizer

MARKERS = ("<think>", "</think>")  # 3 and 4 tokens with the word-level tokenizer's plain vocabulary


@pytest.fixture(scope="module")
def tiny():
    tok = make_tokenizer(think_special=False)
    tok.chat_template = R1_TEMPLATE
    model = make_model("qwen3", len(tok), layers=3)
    return tok, model


def generation(model, tok, questions, new_tokens):
    """(prompts, width, generated ids, the generation's cache) of one left-padded greedy batch."""
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                  tokenize=False), add_special_tokens=False) for q in questions]
    width, pad = max(map(len, prompts)), tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=pad, return_dict_in_generate=True)
    return prompts, width, out.sequences[:, width:].tolist(), out["cache"]


@pytest.mark.parametrize("group", [1, 3, None])
def test_branch_answers_equal_re_prefilled_exits(tiny, group):
    tok, model = tiny
    model.generation_config.eos_token_id = [1, 5, 9, 14, 22, 31]  # frequent enough that some answers end early
    try:
        # prompts of three lengths: rows carry different left padding; checkpoints at every other token
        prompts, width, gen, cache = generation(model, tok, ["the answer is 3", "so 4 , 5 and 6 is the answer", "x"],
                                                24)
        assert tok.decode(prompts[0]).rstrip().endswith(MARKERS[0])  # the thought is open in the prompt
        forced = tok.encode(MARKERS[1] + "\n\n", add_special_tokens=False)
        assert len(forced) == 6
        cuts = [(b, gi) for b in range(3) for gi in range(b, len(gen[b]) - 1, 2)]  # rows hold 12, 11, 11 exits
        reference = continuations(model, tok, [prompts[b] + gen[b][: gi + 1] + forced for b, gi in cuts], 7, 64)
        answers = branch_answers(model, cache, [width - len(p) for p in prompts], [Branch(b, width + gi) for b, gi in cuts],
                                 forced, 7, eos_token_ids(model), tok.pad_token_id, group=group)
    finally:
        model.generation_config.eos_token_id = 1
    assert answers == reference
    lengths = {len(a) for a in answers}
    assert min(lengths) < 7 and 7 in lengths  # both answers that end at an eos and answers cut at the budget


def test_shared_route_refuses_what_only_generate_applies(tiny):
    tok, model = tiny
    _, _, _, cache = generation(model, tok, ["x"], 3)
    assert shared_route_refusal(model, cache, {}) is None
    model.generation_config.repetition_penalty = 1.2
    try:
        assert "repetition_penalty" in shared_route_refusal(model, cache, {})
    finally:
        model.generation_config.repetition_penalty = 1.0
    model.generation_config.typical_p = 0.5  # a sampling warper: refused only when sampling
    try:
        assert shared_route_refusal(model, cache, {}) is None
        assert "typical_p" in shared_route_refusal(model, cache, {"do_sample": True})
    finally:
        model.generation_config.typical_p = 1.0
    window = make_model("mistral", len(tok))
    window.config.sliding_window = 4  # windowed layers: a custom mask would see past the window
    window = type(window)(MistralConfig(**{**window.config.to_dict(), "sliding_window": 4})).eval()
    _, _, _, windowed = generation(window, tok, ["x"], 3)
    assert "sliding-window" in shared_route_refusal(window, windowed, {})


def collect_both_ways(model, tok, items, tmp_path, monkeypatch, checker, cfg, think_tokens=None):
    """(records, tensors) of collect on the shared cache and of collect re-prefilling every exit."""
    out = []
    for name, refuse in (("shared", False), ("prefill", True)):
        with monkeypatch.context() as m:
            if refuse:
                m.setattr(collect_mod, "shared_route_refusal", lambda *a: "the re-prefill reference")
            collect(model, tok, items, tmp_path / name, checker, cfg, think_tokens=think_tokens, progress=False)
        hidden, records, _ = load_collection(tmp_path / name)
        out.append((records, hidden))
    return out


def test_collect_on_the_shared_cache_equals_re_prefilling_on_a_random_qwen3(tiny, tmp_path, monkeypatch):
    tok, model = tiny

    def checker(text, answer):  # any change in any answer token is likely to flip it
        return sum(map(ord, text)) % 3 == 0

    items = [Item(f"q{i}", " ".join(["the answer is", str(i), "so"][: 1 + i % 3]), "1") for i in range(7)]
    cfg = CollectConfig(every=2, batch_size=3, max_new_tokens=18, max_answer_tokens=5, shard_questions=3,
                        fail_fast=False, token_states=True)
    (shared, h_shared), (prefill, h_prefill) = collect_both_ways(model, tok, items, tmp_path, monkeypatch, checker,
                                                                 cfg, MARKERS)
    assert shared == prefill
    labels = [r["label"] for r in shared if r["kind"] == 1]
    assert len(labels) > 50 and 0 < sum(labels) < len(labels)
    assert h_shared.keys() == h_prefill.keys()
    for k in h_shared:  # the states come from the same generation in both routes: bit for bit
        torch.testing.assert_close(h_shared[k], h_prefill[k], rtol=0, atol=0)


def test_collect_on_the_shared_cache_equals_re_prefilling_on_the_bundled_reasoner(tmp_path, monkeypatch):
    from adaptive_think.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("bundled", "cpu", "float32")
    items = bundled_items(6, seed=5)
    cfg = CollectConfig(every=4, batch_size=6, max_new_tokens=120, shard_questions=3)
    (shared, h_shared), (prefill, h_prefill) = collect_both_ways(model, tok, items, tmp_path, monkeypatch,
                                                                 load_checker(None), cfg)
    assert shared == prefill
    thought = [r for r in shared if r["kind"] == 1]
    assert len(thought) > 100 and 0 < sum(r["label"] for r in thought) < len(thought)  # real labels, both kinds
    for k in h_shared:
        torch.testing.assert_close(h_shared[k], h_prefill[k], rtol=0, atol=0)


def test_sampled_collection_on_the_shared_cache_is_seeded(tiny, tmp_path):
    tok, model = tiny
    items = [Item(f"q{i}", f"the answer is {i}", "1") for i in range(4)]
    cfg = CollectConfig(every=3, batch_size=2, max_new_tokens=10, max_answer_tokens=4, fail_fast=False,
                        sampling={"do_sample": True, "temperature": 1.3, "top_k": 20, "top_p": 0.9}, sampling_seed=4)
    runs = []
    for name in ("a", "b", "c"):
        seed = dataclasses.replace(cfg, sampling_seed=5) if name == "c" else cfg
        collect(model, tok, items, tmp_path / name, lambda t, a: sum(map(ord, t)) % 2 == 0, seed,
                think_tokens=MARKERS, progress=False)
        runs.append(load_collection(tmp_path / name)[1])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_token_layers_keep_one_layers_token_states(tiny, tmp_path):
    from adaptive_think.training.memory import ThoughtSet

    tok, model = tiny
    items = [Item(f"q{i}", f"the answer is {i}", "1") for i in range(3)]
    cfg = CollectConfig(every=3, batch_size=3, max_new_tokens=10, max_answer_tokens=3, fail_fast=False,
                        token_states=True)
    for name, c in (("all", cfg), ("one", dataclasses.replace(cfg, token_layers=[2]))):
        collect(model, tok, items, tmp_path / name, lambda t, a: True, c, think_tokens=MARKERS, progress=False)
    every, _, _ = load_collection(tmp_path / "all")
    one, records, _ = load_collection(tmp_path / "one")
    assert sorted(k for k in every if k.startswith("thought")) == ["thought_layer1", "thought_layer2"]
    assert sorted(k for k in one if k.startswith("thought")) == ["thought_layer2"]
    assert torch.equal(one["thought_layer2"], every["thought_layer2"])
    assert ThoughtSet.from_collection(one, records, 2) is not None
    with pytest.raises(ValueError, match="--token-layers 1"):
        ThoughtSet.from_collection(one, records, 1)
    with pytest.raises(ValueError, match="not among the candidate layers"):
        collect(model, tok, items, tmp_path / "bad", lambda t, a: True, dataclasses.replace(cfg, token_layers=[0]),
                think_tokens=MARKERS, progress=False)
    with pytest.raises(ValueError, match="needs token_states"):
        CollectConfig(token_layers=[1])

