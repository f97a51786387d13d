"""The graph engine's "compile" mode on CPU: what goes into the compiled region and that it keeps the tokens.

A recording backend stands in for inductor (fast: the traced graphs run as they are), so these tests see the
graphs dynamo traced: the whole step (forward, sampling, forcing, done flags) in one graph when the controller
is the torch reference or absent; two graphs around the Triton controller kernel otherwise. Real inductor on
CPU: tests/test_graph_engine.py::test_compiled_step_keeps_tokens_and_the_hook (slow); on CUDA, captured:
tests/test_gpu_graph_engine.py."""

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.engines import graph, runner
from adaptive_think.engines.graph import generate_graph
from tiny import make_model, make_tokenizer

TOK = make_tokenizer()
PROMPTS = ["the answer is <think>\n", "check 3 , 4 and 5 again . so", "x <think>\n so"]
PROBE = ThinkConfig(policy="probe", threshold=0.5, skip_threshold=0.5, min_think_tokens=2, stop_at_boundary=False)


def recorded_compiles(monkeypatch) -> list:
    """From now on the runner's compile_step traces with dynamo and records each graph (no inductor)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(runner, "compile_step",
                        lambda fn: torch.compile(fn, backend=backend, fullgraph=True, dynamic=False))
    return graphs


def ops(gm) -> set[str]:
    """Names of the functions and methods a traced graph calls."""
    names = set()
    for node in gm.graph.nodes:
        if node.op == "call_method":
            names.add(node.target)
        elif node.op == "call_function":
            names.add(getattr(node.target, "__name__", str(node.target)))
    return names


def batch():
    return TOK(PROMPTS, return_tensors="pt", padding=True)


@pytest.mark.parametrize("policy", ["none", "probe"])
def test_whole_step_is_one_compiled_graph_and_keeps_tokens(policy, monkeypatch):
    from adaptive_think.probe import Probe

    model = make_model("qwen3", len(TOK), seed=5)
    probe = Probe.random_for(model, layer=1, width=16, seed=0)
    thinker = AdaptiveThinker(model, TOK, probe=probe, impl="torch")
    think = PROBE if policy == "probe" else ThinkConfig(policy="none")
    b = batch()
    ref = thinker.generate(**b, think=think, engine="graph", max_new_tokens=10, graph_mode="eager")
    ref_reports = [r.to_dict() for r in thinker.last_reports]
    graphs = recorded_compiles(monkeypatch)
    out = thinker.generate(**b, think=think, engine="graph", max_new_tokens=10, graph_mode="compile")
    assert torch.equal(out, ref)
    assert [r.to_dict() for r in thinker.last_reports] == ref_reports
    assert len(graphs) == 1  # one region: the forward and the whole tail
    names = ops(graphs[0])
    assert {"linear", "argmax", "index_copy_", "where", "all"} <= names, names
    # a second call of the same shape reuses the compiled step: no retrace
    again = thinker.generate(**TOK(list(reversed(PROMPTS)), return_tensors="pt", padding=True), think=think,
                             engine="graph", max_new_tokens=10, graph_mode="compile")
    assert len(graphs) == 1 and again.shape[0] == len(PROMPTS)
    graph.clear_graph_cache(model)


@pytest.mark.kernels
def test_triton_controller_runs_between_two_compiled_halves(monkeypatch):
    """impl="triton" (interpreted on CPU): the kernel launch stays outside the compiled region, the forward with
    sampling and the tail are compiled on either side of it, and the tokens and reports are the reference's."""
    from adaptive_think.probe import Probe

    model = make_model("qwen3", len(TOK), seed=5)
    probe = Probe.random_for(model, layer=1, width=16, seed=0)
    b = batch()
    ref_thinker = AdaptiveThinker(model, TOK, probe=probe, impl="torch")
    ref = ref_thinker.generate(**b, think=PROBE, engine="hf", max_new_tokens=10)
    ref_reports = [r.to_dict() for r in ref_thinker.last_reports]
    graphs = recorded_compiles(monkeypatch)
    thinker = AdaptiveThinker(model, TOK, probe=probe, impl="triton")
    out = thinker.generate(**b, think=PROBE, engine="graph", max_new_tokens=10, graph_mode="compile")
    assert torch.equal(out, ref)
    assert [r.to_dict() for r in thinker.last_reports] == ref_reports
    assert len(graphs) == 2
    head, tail = (ops(g) for g in graphs)
    assert {"linear", "argmax"} <= head and "all" not in head  # (the cache's update is an index_copy_ too)
    assert {"index_copy_", "where", "all"} <= tail and "linear" not in tail
    graph.clear_graph_cache(model)


@pytest.mark.slow
def test_compiled_tail_equals_the_eager_tail_on_random_states():
    """The tail (forcing, pad after eos, done flags, token record, positions) compiled by the real compiler
    against the same function run eagerly, from the same random state; integer work: exactly equal."""
    model = make_model("llama", len(TOK), seed=6)
    b = batch()
    generate_graph(model, None, b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=3,
                   eos_token_id=[1, 7], pad_token_id=0)
    run = next(iter(graph._RUNNERS[model].values()))
    g = torch.Generator().manual_seed(0)
    names = ("cur", "pos", "slot", "t", "done", "all_done", "tokens")

    def state():
        return {n: getattr(run, n).clone() for n in names}

    def load(s):
        for n in names:
            getattr(run, n).copy_(s[n])

    compiled = torch.compile(run._decode_tail, fullgraph=True, dynamic=False)
    for _ in range(4):
        run.done.copy_(torch.rand(run.batch, generator=g) < 0.3)
        run.t.fill_(int(torch.randint(0, 8, (1,), generator=g)))
        tok = torch.randint(0, 12, (run.batch,), generator=g)
        tok[0] = 7  # an eos
        forced = torch.where(torch.rand(run.batch, generator=g) < 0.5, torch.randint(0, 12, (run.batch,), generator=g), -1)
        start = state()
        run._decode_tail(tok, forced)
        eager = state()
        load(start)
        compiled(tok, forced)
        for n in names:
            assert torch.equal(getattr(run, n), eager[n]), n
        assert not torch.equal(eager["tokens"], start["tokens"])
    graph.clear_graph_cache(model)
