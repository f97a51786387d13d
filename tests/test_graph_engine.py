"""The graph engine on CPU (eager loop, same code as the captured step): token identity with model.generate
and with the hf engine, identical controller reports, sampling reproducibility, eos/padding, runner reuse,
and clear errors for what it does not support. GPU capture: tests/test_gpu_graph_engine.py."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.engines import graph
from adaptive_think.engines.graph import generate_graph
from tiny import ARCHS, make_model, make_tokenizer

TOK = make_tokenizer()
PROMPTS = ["the answer is", "check 3 , 4 and 5 again . so", "x"]
# R1-style rows start inside an open block, so a random model thinks until the budget cuts it
THINK_PROMPTS = ["the answer is <think>\n", "check 3 , 4 and 5 again . so", "x <think>\n so"]
MODELS = {}


def model_of(arch, attn="sdpa"):
    if (arch, attn) not in MODELS:
        m = make_model(arch, len(TOK))
        m.config._attn_implementation = attn
        MODELS[arch, attn] = m
    return MODELS[arch, attn]


def batch_of(prompts):
    batch = TOK(prompts, return_tensors="pt", padding=True)
    assert (batch["attention_mask"][:, 0] == 0).any(), "prompts must be left-padded to test padding"
    return batch


def both_engines(model, think, prompts=THINK_PROMPTS, probe=None, graph_kw=None, **kw):
    """(hf output, hf reports, graph output, graph reports) for the same call."""
    batch = batch_of(prompts)
    thinker = AdaptiveThinker(model, TOK, probe=probe)
    ref = thinker.generate(**batch, think=think, engine="hf", **kw)
    ref_reports = [r.to_dict() for r in thinker.last_reports]
    out = thinker.generate(**batch, think=think, engine="graph", **kw, **(graph_kw or {}))
    return ref, ref_reports, out, [r.to_dict() for r in thinker.last_reports]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_full_policy_greedy_matches_generate_and_hf_engine(arch):
    model = model_of(arch)
    batch = batch_of(PROMPTS)
    ref = model.generate(**batch, max_new_tokens=12, do_sample=False)
    ref_hf, _, out, reports = both_engines(model, ThinkConfig(), PROMPTS, max_new_tokens=12, do_sample=False)
    assert torch.equal(out, ref) and torch.equal(out, ref_hf)
    assert len(reports) == len(PROMPTS)


def test_eager_attention_matches_generate():
    model = model_of("llama", attn="eager")
    batch = batch_of(PROMPTS)
    ref = model.generate(**batch, max_new_tokens=10, do_sample=False)
    out = generate_graph(model, None, batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=10)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("think", [ThinkConfig(policy="budget", max_think_tokens=3),
                                   ThinkConfig(policy="budget", max_think_tokens=5, exit_text="\n\n"),
                                   ThinkConfig(policy="none")], ids=["budget3", "budget5-exit", "none"])
@pytest.mark.parametrize("arch", ["qwen3", "llama", "gemma"])
def test_budget_and_none_match_hf_engine_tokens_and_reports(arch, think):
    ref, ref_reports, out, reports = both_engines(model_of(arch), think, max_new_tokens=14, do_sample=False)
    assert torch.equal(out, ref)
    assert reports == ref_reports
    if think.policy == "budget":
        assert any(r["ended_by"] == "budget" for r in reports)
    else:
        assert all(r["ended_by"] == "skipped" for r in reports)


@pytest.mark.parametrize("think", [ThinkConfig(policy="probe", threshold=0.5, min_think_tokens=2, stop_at_boundary=False),
                                   ThinkConfig(policy="probe", threshold=0.5, skip_threshold=0.5, stop_at_boundary=False),
                                   ThinkConfig(policy="probe", max_think_tokens=6, threshold=0.9, smoothing=0.5,
                                               patience=2, stop_at_boundary=True)], ids=["stop", "skip", "smooth-budget"])
def test_probe_policy_matches_hf_engine(think):
    from adaptive_think.probe import Probe

    model = model_of("qwen3")
    probe = Probe.random_for(model, layer=1, width=16, seed=0)
    ref, ref_reports, out, reports = both_engines(model, think, probe=probe, max_new_tokens=14, do_sample=False)
    assert torch.equal(out, ref)
    assert reports == ref_reports
    assert {r["ended_by"] for r in reports} & {"probe", "budget"}  # the controller did intervene


@pytest.mark.parametrize("counts", [0, 2], ids=["maxima", "counting"])
def test_probe_with_memory_matches_hf_engine(counts):
    """A ready head with memory (running maxima, or counting units) scores every step on the graph engine as on
    the hf engine: same tokens, same reports."""
    from adaptive_think.probe import Probe

    model = model_of("qwen3")
    probe = Probe.random_for(model, layer=1, width=16, seed=4, memory=3, memory_counts=counts)
    think = ThinkConfig(policy="probe", threshold=0.6, min_think_tokens=2, stop_at_boundary=False)
    ref, ref_reports, out, reports = both_engines(model, think, probe=probe, max_new_tokens=14, do_sample=False)
    assert torch.equal(out, ref)
    assert reports == ref_reports
    assert {r["ended_by"] for r in reports} & {"probe", "budget"}
    # the memory moves the decisions: the same heads without it stop elsewhere
    plain = Probe.random_for(model, layer=1, width=16, seed=4)
    _, plain_reports, _, _ = both_engines(model, think, probe=plain, max_new_tokens=14, do_sample=False)
    assert plain_reports != reports


def test_sampling_with_a_seed_reproduces_itself():
    model = model_of("qwen3")
    batch = batch_of(PROMPTS)
    kw = dict(attention_mask=batch["attention_mask"], max_new_tokens=10, do_sample=True, temperature=1.3, top_k=20,
              top_p=0.9)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(generate_graph(model, None, batch["input_ids"], **kw))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    greedy = generate_graph(model, None, batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=10)
    assert not torch.equal(runs[0], greedy)


def test_top_k_one_sampling_is_greedy():
    model = model_of("qwen2")
    batch = batch_of(PROMPTS)
    kw = dict(attention_mask=batch["attention_mask"], max_new_tokens=8)
    assert torch.equal(generate_graph(model, None, batch["input_ids"], do_sample=True, top_k=1, **kw),
                       generate_graph(model, None, batch["input_ids"], do_sample=False, **kw))


def padded_after_eos(free: torch.Tensor, eos: list[int], pad: int) -> torch.Tensor:
    """free [B, N] tokens as each row would write them with `eos`: pad after the row's first eos, trimmed to the
    step where the last row finished (N when some row never does)."""
    rows, ends = [], []
    for row in free.tolist():
        end = next((j + 1 for j, t in enumerate(row) if t in eos), None)
        ends.append(end)
        rows.append(row if end is None else row[:end] + [pad] * (len(row) - end))
    width = free.shape[1] if None in ends else max(ends)
    return torch.tensor(rows)[:, :width]


@pytest.mark.parametrize("check_every", [1, 3, 8, 50])
@pytest.mark.parametrize("who", ["some", "all"])
def test_eos_pads_finished_rows_and_trims_like_generate(check_every, who):
    model = model_of("mistral")
    batch = batch_of(PROMPTS)
    width = batch["input_ids"].shape[1]
    # the rows' greedy tokens with no eos at all (no row can write the id vocab_size)
    free = model.generate(**batch, max_new_tokens=16, do_sample=False, eos_token_id=len(TOK), pad_token_id=0)[:, width:]
    # a token row 0 writes early: rows then finish at different steps, or never; "all": one more eos per row
    eos = [int(free[0, 2])]
    if who == "all":
        eos += [int(free[r, r + 1]) for r in range(1, len(PROMPTS))]
    want = padded_after_eos(free, eos, pad=0)
    finishes = [bool(torch.isin(free[r], torch.tensor(eos)).any()) for r in range(len(PROMPTS))]
    assert any(finishes) and (all(finishes) == (who == "all"))  # the case the test means to build
    out = generate_graph(model, None, batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=16,
                         eos_token_id=eos, pad_token_id=0, check_every=check_every)
    assert torch.equal(out[:, :width], batch["input_ids"])
    for r in range(len(PROMPTS)):  # each row: its own tokens up to its eos, pad after
        assert out[r, width:].tolist() == want[r].tolist(), f"row {r}"
    assert out.shape[1] == width + want.shape[1]
    ref = model.generate(**batch, max_new_tokens=16, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out, ref)


def test_all_rows_finishing_stops_early_and_reports_match():
    model = model_of("llama")
    batch = batch_of(PROMPTS)
    free = model.generate(**batch, max_new_tokens=12, do_sample=False)[:, batch["input_ids"].shape[1]:]
    eos = [int(free[i, 1 + i]) for i in range(len(PROMPTS))]  # every row meets one of these
    ref, ref_reports, out, reports = both_engines(model, ThinkConfig(policy="budget", max_think_tokens=2), PROMPTS,
                                                  max_new_tokens=40, eos_token_id=eos, pad_token_id=0,
                                                  graph_kw=dict(check_every=4))
    assert torch.equal(out, ref) and reports == ref_reports
    assert out.shape[1] < batch["input_ids"].shape[1] + 40


def test_runners_are_reused_across_calls_of_one_shape():
    model = make_model("qwen3", len(TOK), seed=1)
    thinker = AdaptiveThinker(model, TOK)
    think = ThinkConfig(policy="budget", max_think_tokens=3)
    outs = []
    for prompts in (THINK_PROMPTS, list(reversed(THINK_PROMPTS)), THINK_PROMPTS):
        outs.append(thinker.generate(**batch_of(prompts), think=think, engine="graph", max_new_tokens=10))
    assert len(graph._RUNNERS[model]) == 1  # one batch size, one bucket, one spec
    assert torch.equal(outs[0], outs[2])
    ref = thinker.generate(**batch_of(list(reversed(THINK_PROMPTS))), think=think, engine="hf", max_new_tokens=10)
    assert torch.equal(outs[1], ref)
    other = ThinkConfig(policy="budget", max_think_tokens=4)
    out = thinker.generate(**batch_of(THINK_PROMPTS), think=other, engine="graph", max_new_tokens=10)
    assert len(graph._RUNNERS[model]) == 1  # a budget is per-row tensor contents: the same runner serves it
    assert torch.equal(out, thinker.generate(**batch_of(THINK_PROMPTS), think=other, engine="hf", max_new_tokens=10))
    graph.clear_graph_cache(model)
    assert model not in graph._RUNNERS


def test_runner_made_under_inference_mode_serves_later_calls():
    model = make_model("llama", len(TOK), seed=3)
    batch = batch_of(PROMPTS)
    kw = dict(attention_mask=batch["attention_mask"], max_new_tokens=6)
    with torch.inference_mode():
        first = generate_graph(model, None, batch["input_ids"], **kw)
    assert torch.equal(generate_graph(model, None, batch["input_ids"], **kw), first)
    graph.clear_graph_cache(model)


@pytest.mark.parametrize("kwargs", [dict(streamer=object()), dict(logits_processor=[lambda i, s: s]),
                                    dict(stopping_criteria=[lambda i, s: False]), dict(num_beams=2),
                                    dict(output_scores=True), dict(return_dict_in_generate=True),
                                    dict(assistant_model=object()), dict(frobnicate=1)],
                         ids=lambda kw: next(iter(kw)))
def test_unsupported_arguments_name_themselves_and_the_hf_engine(kwargs):
    model = model_of("qwen3")
    batch = batch_of(PROMPTS)
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf'{name}.*engine="hf"'):
        AdaptiveThinker(model, TOK).generate(**batch, max_new_tokens=4, engine="graph", **kwargs)


def test_neutral_values_and_bad_settings():
    model = model_of("qwen3")
    batch = batch_of(PROMPTS)
    generate_graph(model, None, batch["input_ids"], max_new_tokens=2, num_beams=1, output_scores=False,
                   logits_processor=None, streamer=None)
    with pytest.raises(ValueError, match="graph_mode"):
        generate_graph(model, None, batch["input_ids"], max_new_tokens=2, graph_mode="warp")
    with pytest.raises(ValueError, match='trace.*engine="hf"'):
        AdaptiveThinker(model, TOK).generate(**batch, max_new_tokens=2, engine="graph", think=ThinkConfig(trace=True))


@pytest.mark.slow
@pytest.mark.parametrize("graph_mode", ["compile", "reduce-overhead"])
def test_compiled_step_keeps_tokens_and_the_hook(graph_mode):
    """Compiled on CPU (fullgraph): the forward hook still fills the hidden buffer inside the compiled forward
    ("compile"), and the whole step with the controller's torch reference traces as one graph ("reduce-overhead")."""
    from adaptive_think.probe import Probe

    model = make_model("qwen3", len(TOK), seed=2)
    probe = Probe.random_for(model, layer=1, width=16, seed=3)
    think = ThinkConfig(policy="probe", threshold=0.5, skip_threshold=0.5, stop_at_boundary=False)
    thinker = AdaptiveThinker(model, TOK, probe=probe)
    batch = batch_of(THINK_PROMPTS)
    ref = thinker.generate(**batch, think=think, engine="hf", max_new_tokens=8)
    ref_reports = [r.to_dict() for r in thinker.last_reports]
    ctl = thinker.controller(think)
    out = generate_graph(model, ctl, batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=8,
                         probe_layer=1, graph_mode=graph_mode)
    assert torch.equal(out, ref)
    assert [r.to_dict() for r in ctl.reports()] == ref_reports
    graph.clear_graph_cache(model)


def test_bundled_reasoner_matches_hf_engine():
    from adaptive_think.bundled import reasoner_path
    from adaptive_think.loading import chat_prompt
    from adaptive_think.tasks import make_questions

    path = reasoner_path()  # committed with the package: a missing reasoner is a packaging break, not a skip
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = [chat_prompt(tok, q.question) for q in make_questions(3, seed=0)]
    batch = tok(prompts, return_tensors="pt", padding=True)
    from adaptive_think.probe import Probe

    thinker = AdaptiveThinker(model, tok, probe=Probe.random_for(model, width=32, seed=0))
    for think in (ThinkConfig(), ThinkConfig(policy="budget", max_think_tokens=8),
                  ThinkConfig(policy="probe", threshold=0.5, min_think_tokens=4)):
        ref = thinker.generate(**batch, think=think, engine="hf", max_new_tokens=48, do_sample=False)
        ref_reports = [r.to_dict() for r in thinker.last_reports]
        out = thinker.generate(**batch, think=think, engine="graph", max_new_tokens=48, do_sample=False)
        assert torch.equal(out, ref)
        assert [r.to_dict() for r in thinker.last_reports] == ref_reports


@pytest.mark.kernels
def test_triton_controller_in_the_loop_matches_the_torch_reference():
    """The Triton controller_step (interpreted on CPU) inside the graph engine's step, reused over two calls."""
    from adaptive_think.probe import Probe

    model = model_of("qwen3")
    probe = Probe.random_for(model, layer=1, width=16, seed=0)
    think = ThinkConfig(policy="probe", threshold=0.5, min_think_tokens=2, stop_at_boundary=False)
    batch = batch_of(THINK_PROMPTS)
    ref_thinker = AdaptiveThinker(model, TOK, probe=probe, impl="torch")
    ref = ref_thinker.generate(**batch, think=think, engine="hf", max_new_tokens=10)
    ref_reports = [r.to_dict() for r in ref_thinker.last_reports]
    thinker = AdaptiveThinker(model, TOK, probe=probe, impl="triton")
    for _ in range(2):
        out = thinker.generate(**batch, think=think, engine="graph", max_new_tokens=10)
        assert torch.equal(out, ref)
        assert [r.to_dict() for r in thinker.last_reports] == ref_reports


def test_cached_runners_do_not_keep_a_model_alive():
    import gc
    import weakref

    model = make_model("qwen3", len(TOK), seed=4)
    generate_graph(model, None, batch_of(PROMPTS)["input_ids"], max_new_tokens=3)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
