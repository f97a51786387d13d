"""GPU: the graph engine's captured step (token identity with the hf engine in fp32 and bf16, the CUDA graph is
what runs, and a decode segment between two done-checks makes no host synchronisation). Skips without CUDA."""

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.engines import graph
from adaptive_think.engines.graph import generate_graph
from near_tie import assert_same_or_near_tie
from tiny import make_model, make_tokenizer

pytestmark = pytest.mark.gpu

TOK = make_tokenizer()
PROMPTS = ["the answer is <think>\n", "check 3 , 4 and 5 again . so", "x <think>\n so"]


def cuda_model(arch, dtype, seed=0):
    return make_model(arch, len(TOK), seed=seed).to("cuda", dtype)


def batch():
    return TOK(PROMPTS, return_tensors="pt", padding=True).to("cuda")


# bf16: two engines may round a near tie's last bit differently; 4 bf16 ulps of the largest logit is a near tie
BF16_TIE = 4 * torch.finfo(torch.bfloat16).eps


@pytest.mark.parametrize("think", [ThinkConfig(), ThinkConfig(policy="budget", max_think_tokens=3)], ids=["full", "budget"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_graph_engine_matches_hf_engine_on_cuda(arch, dtype, think):
    model = cuda_model(arch, dtype)
    b = batch()
    thinker = AdaptiveThinker(model, TOK)
    ref_out = thinker.generate(**b, think=think, engine="hf", max_new_tokens=16, do_sample=False,
                               return_dict_in_generate=True, output_logits=True)
    ref = ref_out.sequences
    ref_reports = [r.to_dict() for r in thinker.last_reports]
    out = thinker.generate(**b, think=think, engine="graph", max_new_tokens=16, do_sample=False)
    if dtype == torch.float32:
        assert torch.equal(ref, out)
    else:
        assert_same_or_near_tie(ref, out, ref_out.logits, b["input_ids"].shape[1], rel_tol=BF16_TIE)
    if torch.equal(ref, out):
        assert [r.to_dict() for r in thinker.last_reports] == ref_reports
    runner = next(iter(graph._RUNNERS[model].values()))
    assert runner.graph is not None  # the replayed CUDA graph produced these tokens
    graph.clear_graph_cache(model)


def test_probe_policy_on_cuda_uses_the_graph_and_matches_hf():
    from adaptive_think.probe import Probe

    model = cuda_model("qwen3", torch.float32)
    probe = Probe.random_for(model, layer=1, width=16, seed=0)
    think = ThinkConfig(policy="probe", threshold=0.5, min_think_tokens=2, stop_at_boundary=False)
    thinker = AdaptiveThinker(model, TOK, probe=probe)
    b = batch()
    ref = thinker.generate(**b, think=think, engine="hf", max_new_tokens=14)
    ref_reports = [r.to_dict() for r in thinker.last_reports]
    for _ in range(2):  # the second call replays the graph captured by the first
        out = thinker.generate(**b, think=think, engine="graph", max_new_tokens=14)
        assert torch.equal(out, ref)
        assert [r.to_dict() for r in thinker.last_reports] == ref_reports
    assert len(graph._RUNNERS[model]) == 1
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


@pytest.mark.parametrize("graph_mode", ["cudagraph", "eager"])
def test_decode_segment_makes_no_host_sync(graph_mode):
    from adaptive_think.probe import Probe

    model = cuda_model("qwen3", torch.bfloat16)
    probe = Probe.random_for(model, layer=1, width=16, seed=0)
    thinker = AdaptiveThinker(model, TOK, probe=probe)
    think = ThinkConfig(policy="probe", max_think_tokens=6)
    b = batch()
    ctl = thinker.controller(think)
    generate_graph(model, ctl, b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=20, probe_layer=1,
                   graph_mode=graph_mode)
    runner = next(iter(graph._RUNNERS[model].values()))
    assert (runner.graph is not None) == (graph_mode == "cudagraph")
    ctl.begin(b["input_ids"])
    runner.ctl.state.copy_(ctl.state)
    runner._active = True
    runner.prefill(b["input_ids"], b["attention_mask"])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        runner.decode_n_tokens(8)  # one segment between two done-checks
    finally:
        torch.cuda.set_sync_debug_mode("default")
        runner._active = False
    assert runner.all_finished() in (True, False)
    assert int(runner.t) == 9
    graph.clear_graph_cache(model)


@pytest.mark.slow
def test_compiled_and_captured_step_matches_hf_engine():
    model = cuda_model("qwen3", torch.float32)
    b = batch()
    ref = model.generate(**b, max_new_tokens=12, do_sample=False, return_dict_in_generate=True, output_logits=True)
    for mode in ("compile",):  # "reduce-overhead" is exercised by benchmarks/gpu_engines.py --graph-modes
        out = generate_graph(model, None, b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=12,
                             graph_mode=mode)
        # inductor may reorder fp32 sums over 3 layers: a near tie is within 64 fp32 ulps of the largest logit
        assert_same_or_near_tie(ref.sequences, out, ref.logits, b["input_ids"].shape[1],
                                rel_tol=64 * torch.finfo(torch.float32).eps)
    graph.clear_graph_cache(model)
