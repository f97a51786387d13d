"""GPU: the graph engine's captured steps. Token identity with the hf engine (fp32 exact, bf16 up to near ties);
the replayed CUDA graphs, not eager steps, produce the tokens; every decode segment of a probe-policy generate()
runs under `set_sync_debug_mode("error")`; attention tiers; reduce-overhead with the Triton controller_step traced
inside the compiled step. Skips without CUDA."""

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.engines import graph
from adaptive_think.engines.graph import generate_graph
from adaptive_think.engines.runner import DecodeRunner
from near_tie import assert_same_or_near_tie
from tiny import make_model, make_tokenizer

pytestmark = pytest.mark.gpu

TOK = make_tokenizer()
PROMPTS = ["the answer is <think>\n", "check 3 , 4 and 5 again . so", "x <think>\n so"]


def cuda_model(arch, dtype, seed=0):
    return make_model(arch, len(TOK), seed=seed).to("cuda", dtype)


def batch():
    return TOK(PROMPTS, return_tensors="pt", padding=True).to("cuda")


def probe_thinker(model, impl="auto"):
    from adaptive_think.probe import Probe

    return AdaptiveThinker(model, TOK, probe=Probe.random_for(model, layer=1, width=16, seed=0), impl=impl)


PROBE = ThinkConfig(policy="probe", threshold=0.5, skip_threshold=0.5, min_think_tokens=2, stop_at_boundary=False)


class CountedGraph:
    """A captured graph whose replays are counted."""

    def __init__(self, graph, replays: list):
        self.graph, self.replays = graph, replays

    def replay(self):
        self.replays.append(1)
        self.graph.replay()


def only_replays(monkeypatch, model) -> list[int]:
    """From now on the model's runners may not run an eager step: every decode step must be a graph replay.
    Returns the list that counts replays."""
    replays = []

    def refuse():
        raise AssertionError("an eager decode step ran where a captured graph should have replayed")

    for runner in graph._RUNNERS[model].values():
        assert runner.graphs, "the runner captured no graph"
        monkeypatch.setattr(runner, "_step", refuse)
        monkeypatch.setattr(runner, "graphs", {tier: CountedGraph(g, replays) for tier, g in runner.graphs.items()})
    return replays


def strict_segments(monkeypatch) -> list[int]:
    """Every decode segment (the steps between two done-checks) runs under sync errors; returns segment sizes."""
    decode = DecodeRunner.decode_n_tokens
    sizes = []

    def strict(self, n):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            decode(self, n)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        sizes.append(n)

    monkeypatch.setattr(DecodeRunner, "decode_n_tokens", strict)
    return sizes


# bf16: two engines may round a near tie's last bit differently; 4 bf16 ulps of the largest logit is a near tie
BF16_TIE = 4 * torch.finfo(torch.bfloat16).eps


@pytest.mark.parametrize("think", [ThinkConfig(), ThinkConfig(policy="budget", max_think_tokens=3)], ids=["full", "budget"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_graph_engine_matches_hf_engine_on_cuda(arch, dtype, think, monkeypatch):
    model = cuda_model(arch, dtype)
    b = batch()
    thinker = AdaptiveThinker(model, TOK)
    ref_out = thinker.generate(**b, think=think, engine="hf", max_new_tokens=16, do_sample=False,
                               return_dict_in_generate=True, output_logits=True)
    ref = ref_out.sequences
    ref_reports = [r.to_dict() for r in thinker.last_reports]
    thinker.generate(**b, think=think, engine="graph", max_new_tokens=16, do_sample=False)  # builds the runner
    replays = only_replays(monkeypatch, model)
    out = thinker.generate(**b, think=think, engine="graph", max_new_tokens=16, do_sample=False, check_every=4)
    assert len(replays) >= out.shape[1] - b["input_ids"].shape[1] - 1  # every decode step was a replay
    if dtype == torch.float32:
        assert torch.equal(ref, out)
    else:
        assert_same_or_near_tie(ref, out, ref_out.logits, b["input_ids"].shape[1], rel_tol=BF16_TIE)
    if torch.equal(ref, out):
        assert [r.to_dict() for r in thinker.last_reports] == ref_reports
    graph.clear_graph_cache(model)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_probe_generate_replays_graphs_without_a_host_sync_and_matches_hf(impl, monkeypatch):
    """fp32, probe policy: the graph engine's whole generate(), each decode segment under sync errors, gives the
    hf engine's tokens and reports; the second call is all replays of the graphs the first one captured."""
    model = cuda_model("qwen3", torch.float32)
    thinker = probe_thinker(model, impl)
    b = batch()
    ref = thinker.generate(**b, think=PROBE, engine="hf", max_new_tokens=14, eos_token_id=None)
    ref_reports = [r.to_dict() for r in thinker.last_reports]
    assert {r["ended_by"] for r in ref_reports} & {"probe", "skipped"}  # the probe did decide
    thinker.generate(**b, think=PROBE, engine="graph", max_new_tokens=14, eos_token_id=None)
    replays = only_replays(monkeypatch, model)
    sizes = strict_segments(monkeypatch)
    out = thinker.generate(**b, think=PROBE, engine="graph", max_new_tokens=14, eos_token_id=None, check_every=4)
    assert torch.equal(out, ref)
    assert [r.to_dict() for r in thinker.last_reports] == ref_reports
    assert sizes == [4, 4, 4, 1] and len(replays) == 13  # no eos: 13 decode steps after the prefill's token
    assert len(graph._RUNNERS[model]) == 1
    graph.clear_graph_cache(model)


def test_mixed_policy_batch_on_both_engines_matches_each_row_alone(monkeypatch):
    """fp32: full, none, budget with exit and stop text, probe: the graph engine (replays only, segments under sync
    errors) gives the hf engine's tokens and reports, and each row what it gets with its config on every row."""
    model = cuda_model("qwen3", torch.float32)
    thinker = probe_thinker(model)
    b = TOK([PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[2]], return_tensors="pt", padding=True).to("cuda")
    configs = [ThinkConfig(), ThinkConfig(policy="none", exit_text="\n\n"),
               ThinkConfig(policy="budget", max_think_tokens=5, exit_text="\n\n", stop_text=" ok ."), PROBE]
    kw = dict(max_new_tokens=16, eos_token_id=None)
    ref = thinker.generate(**b, think=configs, engine="hf", **kw)
    ref_reports = [r.to_dict() for r in thinker.last_reports]
    assert [r["ended_by"] for r in ref_reports][1:3] == ["skipped", "budget"]
    alone = []
    for config in configs:  # builds the one runner every later call replays
        alone.append((thinker.generate(**b, think=config, engine="graph", **kw),
                      [r.to_dict() for r in thinker.last_reports]))
    replays = only_replays(monkeypatch, model)
    strict_segments(monkeypatch)
    out = thinker.generate(**b, think=configs, engine="graph", **kw)
    assert torch.equal(out, ref) and [r.to_dict() for r in thinker.last_reports] == ref_reports
    assert len(replays) == 15 and len(graph.cache_info(model)) == 1
    for i, (row_out, row_reports) in enumerate(alone):
        assert torch.equal(out[i], row_out[i]) and ref_reports[i] == row_reports[i]
    graph.clear_graph_cache(model)


def test_attention_tiers_replay_their_own_graphs_and_keep_tokens(monkeypatch):
    """100 new tokens after a short prompt cross from the 64-slot tier to the 128-slot one: both captured."""
    model = cuda_model("llama", torch.float32)
    b = batch()
    ref = model.generate(**b, max_new_tokens=100, do_sample=False, eos_token_id=None, return_dict_in_generate=True,
                         output_logits=True)
    generate_graph(model, None, b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=100,
                   eos_token_id=None)
    runner = next(iter(graph._RUNNERS[model].values()))
    assert sorted(runner.graphs) == runner.tiers == [64, 128]
    replays = only_replays(monkeypatch, model)
    out = generate_graph(model, None, b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=100,
                         eos_token_id=None)
    assert len(replays) == 99
    # sdpa over 64 or 128 slots vs HF's exact length may round fp32 sums apart: near ties within 64 ulps only
    assert_same_or_near_tie(ref.sequences, out, ref.logits, b["input_ids"].shape[1],
                            rel_tol=64 * torch.finfo(torch.float32).eps)
    graph.clear_graph_cache(model)


def test_sampling_reproduces_through_graph_replays():
    model = cuda_model("qwen3", torch.bfloat16)
    b = batch()
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(generate_graph(model, None, b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=12,
                                   do_sample=True, temperature=1.2, top_k=30, top_p=0.9))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    graph.clear_graph_cache(model)


def test_eager_mode_on_cuda_makes_no_host_sync_either(monkeypatch):
    """graph_mode="eager" runs the same step uncaptured: it must be sync-free too (what capture relies on)."""
    model = cuda_model("qwen3", torch.bfloat16)
    thinker = probe_thinker(model)
    think = ThinkConfig(policy="probe", max_think_tokens=6)
    b = batch()
    ref = thinker.generate(**b, think=think, engine="graph", max_new_tokens=20, graph_mode="eager")
    sizes = strict_segments(monkeypatch)
    out = thinker.generate(**b, think=think, engine="graph", max_new_tokens=20, graph_mode="eager")
    assert torch.equal(out, ref) and sizes and all(n <= 8 for n in sizes)
    graph.clear_graph_cache(model)


@pytest.mark.parametrize("mode", ["compile", "reduce-overhead"])
def test_compiled_controller_step_matches_hf_engine(mode):
    """fp32, probe policy with the Triton controller_step: "compile" captures the inductor forward + the kernel;
    "reduce-overhead" traces the whole step, the kernel included, and replays it through cudagraph trees."""
    model = cuda_model("qwen3", torch.float32)
    thinker = probe_thinker(model, impl="triton")
    b = batch()
    ref = thinker.generate(**b, think=PROBE, engine="hf", max_new_tokens=12, return_dict_in_generate=True,
                           output_logits=True)
    ref_reports = [r.to_dict() for r in thinker.last_reports]
    for _ in range(2):  # the second call reuses the compiled step
        out = thinker.generate(**b, think=PROBE, engine="graph", max_new_tokens=12, graph_mode=mode)
        # inductor may reorder fp32 sums over 3 layers: a near tie is within 64 fp32 ulps of the largest logit
        assert_same_or_near_tie(ref.sequences, out, ref.logits, b["input_ids"].shape[1],
                                rel_tol=64 * torch.finfo(torch.float32).eps)
        if torch.equal(out, ref.sequences):
            assert [r.to_dict() for r in thinker.last_reports] == ref_reports
    assert len(graph._RUNNERS[model]) == 1
    graph.clear_graph_cache(model)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_compile_mode_captures_the_whole_compiled_step_once(impl, monkeypatch):
    """fp32 greedy, probe policy: "compile" (the whole step through inductor; the Triton kernel between its two
    halves, the torch controller inside) is captured as one graph per runner, later calls only replay it, and
    its tokens are the eager step's (near ties aside: inductor may sum fp32 in another order)."""
    model = cuda_model("qwen3", torch.float32, seed=3)
    thinker = probe_thinker(model, impl)
    b = batch()
    kw = dict(think=PROBE, engine="graph", max_new_tokens=12, eos_token_id=None)
    ref = thinker.generate(**b, **kw, graph_mode="eager")
    ref_reports = [r.to_dict() for r in thinker.last_reports]
    graph.clear_graph_cache(model)  # only the compiled runner below
    hf = thinker.generate(**b, think=PROBE, engine="hf", max_new_tokens=12, eos_token_id=None,
                          return_dict_in_generate=True, output_logits=True)
    assert torch.equal(hf.sequences, ref)  # the eager step is the hf engine's
    thinker.generate(**b, **kw, graph_mode="compile")  # builds: compiles, captures
    (runner,) = graph._RUNNERS[model].values()
    assert list(runner.graphs) == [runner.length]  # one captured step (no attention tiers when compiled)
    replays = only_replays(monkeypatch, model)
    sizes = strict_segments(monkeypatch)
    out = thinker.generate(**b, **kw, graph_mode="compile", check_every=4)
    assert len(replays) == 11 and sizes == [4, 4, 3]
    assert_same_or_near_tie(ref, out, hf.logits, b["input_ids"].shape[1], rel_tol=64 * torch.finfo(torch.float32).eps)
    if torch.equal(out, ref):
        assert [r.to_dict() for r in thinker.last_reports] == ref_reports
    graph.clear_graph_cache(model)
