"""Engine plumbing on CPU: attention tiers and partial cache reset of the graph engine, refusals of what cannot
be captured, the shared hook's device move, `inputs_embeds` on the hf engine, the patched signature, and the
one table of unsupported arguments / one eos resolution both engines use."""

import inspect

import pytest
import torch

import adaptive_think
from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.engines import graph
from adaptive_think.engines.args import eos_token_ids
from adaptive_think.engines.layer_hook import LayerCapture
from adaptive_think.engines.graph import generate_graph
from adaptive_think.engines.runner import DecodeRunner
from tiny import ScriptedReasoner, make_model, make_tokenizer

TOK = make_tokenizer()
PROMPTS = ["the answer is", "check 3 , 4 and 5 again . so", "x"]


def batch_of(prompts=PROMPTS):
    return TOK(prompts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_eager_decode_attends_to_exactly_the_written_slots(attn, monkeypatch):
    model = make_model("llama", len(TOK), seed=5)
    model.config._attn_implementation = attn
    b = batch_of()
    seq = b["input_ids"].shape[1]
    widths = []
    forward = DecodeRunner._eager_forward

    def spy(self, ids, mask, pos):
        widths.append((ids.shape[1], mask.shape[-1]))
        return forward(self, ids, mask, pos)

    monkeypatch.setattr(DecodeRunner, "_eager_forward", spy)
    ref = model.generate(**b, max_new_tokens=100, do_sample=False, eos_token_id=None)
    out = generate_graph(model, None, b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=100,
                         eos_token_id=None)
    assert torch.equal(out, ref)  # crossing from tier to tier changes no token
    runner = next(iter(graph._RUNNERS[model].values()))
    # eager mode (CPU) captures nothing, so it has no tiers: attention follows the real length exactly
    assert runner.length == 128 and runner.tiers == []
    call = widths[-100:]  # the timed call: one prefill, 99 steps (the build ran before it)
    assert call[0] == (seq, seq)
    # step i writes slot seq + i and sees exactly the slots up to it
    assert [w for _, w in call[1:]] == [seq + i + 1 for i in range(99)]
    graph.clear_graph_cache(model)


def test_a_new_call_zeroes_only_the_slots_the_last_one_wrote():
    model = make_model("qwen3", len(TOK), seed=6)
    b = batch_of()
    kw = dict(attention_mask=b["attention_mask"], max_new_tokens=6, eos_token_id=None)
    first = generate_graph(model, None, b["input_ids"], **kw)
    runner = next(iter(graph._RUNNERS[model].values()))
    layer = runner.cache.layers[0]
    used = runner.used
    assert used == b["input_ids"].shape[1] + 5  # prompt + 5 decode steps (the 6th token is never fed back)
    layer.keys[:, :, used + 3] = 7.0  # a slot no call wrote: the reset must not touch it
    layer.keys[:, :, used - 1] = 7.0  # a slot the last call wrote: zeroed, then written again
    again = generate_graph(model, None, b["input_ids"], **kw)
    assert torch.equal(again, first)
    assert bool((layer.keys[:, :, used + 3] == 7.0).all())
    assert not bool((layer.keys[:, :, used - 1] == 7.0).any())
    graph.clear_graph_cache(model)


@pytest.mark.parametrize("rope", [{"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
                                  {"rope_type": "longrope", "rope_theta": 10000.0}], ids=["dynamic", "longrope"])
def test_dynamic_rope_is_refused_naming_the_setting(rope):
    model = make_model("llama", len(TOK))
    model.config.rope_parameters = rope
    with pytest.raises(ValueError, match=rf"rope_type='{rope['rope_type']}'.*engine=\"hf\""):
        generate_graph(model, None, batch_of()["input_ids"], max_new_tokens=2)


def test_a_model_on_several_devices_is_refused():
    model = make_model("llama", len(TOK))
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": 1}
    with pytest.raises(ValueError, match=r"several devices.*engine=\"hf\""):
        AdaptiveThinker(model, TOK).generate(**batch_of(), max_new_tokens=2, engine="graph")
    model.hf_device_map = {"": 0}  # one device: nothing to refuse here (the tiny model is on the CPU anyway)
    generate_graph(model, None, batch_of()["input_ids"], max_new_tokens=2)
    graph.clear_graph_cache(model)


def test_the_hook_moves_states_to_the_reader_and_stacks_layers():
    model = make_model("qwen3", len(TOK))
    b = batch_of()
    with LayerCapture(model, [1, 0]) as local, LayerCapture(model, 1, device="meta") as moved:
        out = model(**b, output_hidden_states=True)
    # a layer on another device than the reader (device_map="auto"): the state is moved there by .to()
    assert moved.hidden.device.type == "meta" and moved.hidden.shape == (3, 32)
    stacked = local.stacked()  # [B, L, D] in the order asked for
    assert torch.equal(stacked[:, 0], out.hidden_states[2][:, -1]) and torch.equal(stacked[:, 1], out.hidden_states[1][:, -1])


def test_the_hf_engine_reads_the_probe_layer_on_the_controllers_device(monkeypatch):
    from adaptive_think.engines import hf
    from adaptive_think.probe import Probe

    model = make_model("qwen3", len(TOK))
    seen = []
    init = LayerCapture.__init__

    def spy(self, model, layers, device=None, into=None):
        seen.append(device)
        init(self, model, layers, device=device, into=into)

    monkeypatch.setattr(hf.LayerCapture, "__init__", spy)
    thinker = AdaptiveThinker(model, TOK, probe=Probe.random_for(model, layer=1, width=8, seed=0))
    thinker.generate(**batch_of(), max_new_tokens=3, think=ThinkConfig(policy="probe"))
    assert seen == [torch.device("cpu")]


def _scripted(prompt_len, eos=True):
    m = AdaptiveThinker(make_model("qwen3", len(TOK)), TOK).markers
    words = TOK.encode("so wait check again ok x y", add_special_tokens=False)
    answer = TOK.encode(" the answer is 7", add_special_tokens=False)
    return ScriptedReasoner(prompt_len, [6, 2, 9], m.open_ids, m.close_ids, TOK.eos_token_id, words, answer)


@pytest.mark.parametrize("think", [ThinkConfig(policy="budget", max_think_tokens=4, exit_text="\n\n"), ThinkConfig()],
                         ids=["budget", "full"])
def test_inputs_embeds_alone_on_the_hf_engine_matches_input_ids(think):
    model = make_model("qwen3", len(TOK))
    b = batch_of()
    plen = b["input_ids"].shape[1]
    thinker = AdaptiveThinker(model, TOK)
    ref = thinker.generate(**b, think=think, max_new_tokens=30, do_sample=False, logits_processor=[_scripted(plen)])
    ref_reports = [r.to_dict() for r in thinker.last_reports]
    embeds = model.get_input_embeddings()(b["input_ids"])
    out = thinker.generate(inputs_embeds=embeds, attention_mask=b["attention_mask"], think=think, max_new_tokens=30,
                           do_sample=False, logits_processor=[_scripted(0)])
    assert torch.equal(out, ref[:, plen:])  # HF returns the new tokens only for inputs_embeds
    assert [r.to_dict() for r in thinker.last_reports] == ref_reports
    if think.policy == "budget":
        assert [r["ended_by"] for r in ref_reports] == ["budget", "natural", "budget"]


def test_inputs_embeds_on_a_patched_model_and_the_graph_engine():
    model = make_model("llama", len(TOK))
    b = batch_of()
    embeds = model.get_input_embeddings()(b["input_ids"])
    ref = model.generate(inputs_embeds=embeds, attention_mask=b["attention_mask"], max_new_tokens=5, do_sample=False)
    thinker = adaptive_think.patch(model, TOK)
    try:
        out = model.generate(inputs_embeds=embeds, attention_mask=b["attention_mask"], max_new_tokens=5, do_sample=False)
        assert torch.equal(out, ref) and len(thinker.last_reports) == 3
        with pytest.raises(ValueError, match=r'engine="graph" needs input_ids.*inputs_embeds.*engine="hf"'):
            model.generate(inputs_embeds=embeds, max_new_tokens=5, engine="graph")
        with pytest.raises(ValueError, match="needs input_ids .* or inputs_embeds"):
            model.generate(max_new_tokens=5)
    finally:
        adaptive_think.unpatch(model)


def test_patched_generate_shows_think_and_its_own_parameters():
    model = make_model("qwen2", len(TOK))
    own = inspect.signature(model.generate).parameters
    adaptive_think.patch(model, TOK)
    try:
        params = inspect.signature(model.generate).parameters
        assert params["think"].kind is inspect.Parameter.KEYWORD_ONLY and params["think"].default is None
        assert params["engine"].default == "hf"
        assert [p for p in params if p not in ("think", "engine")] == list(own)
        assert list(params)[-1] == "kwargs"  # **kwargs stays last
    finally:
        adaptive_think.unpatch(model)


def test_eos_resolution_follows_hf_precedence():
    model = make_model("qwen3", len(TOK))  # generation_config.eos_token_id = 1
    assert eos_token_ids(model) == (1,)
    assert eos_token_ids(model, {"eos_token_id": [4, 5]}) == (4, 5)
    assert eos_token_ids(model, {"eos_token_id": torch.tensor(6)}) == (6,)
    assert eos_token_ids(model, {"eos_token_id": None}, tokenizer=TOK) == ()  # a given None means no eos (as HF)
    model.generation_config.eos_token_id = None
    assert eos_token_ids(model) == ()
    assert eos_token_ids(model, tokenizer=TOK) == (TOK.eos_token_id,)


@pytest.mark.parametrize("engine", ["hf", "graph"])
@pytest.mark.parametrize("arg,value", [("num_beams", 3), ("num_beam_groups", 2), ("prompt_lookup_num_tokens", 4)])
def test_both_engines_refuse_from_one_table(engine, arg, value):
    model = make_model("qwen3", len(TOK))
    with pytest.raises(ValueError, match=rf"{arg}={value}"):
        AdaptiveThinker(model, TOK).generate(**batch_of(), max_new_tokens=2, engine=engine, **{arg: value})
    model.generation_config.num_beams = 4  # the model's own generation_config counts too
    with pytest.raises(ValueError, match=r"generation_config.num_beams=4"):
        AdaptiveThinker(model, TOK).generate(**batch_of(), max_new_tokens=2, engine=engine)
