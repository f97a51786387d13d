"""One batch, many policies, on both engines: each row of a mixed-policy batch gets exactly the tokens and report
it gets when the same batch (same padding) runs with that row's config on every row; the graph engine equals
the hf engine; and one graph runner serves every policy of a sweep (budgets and probe thresholds alike)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.engines import graph
from adaptive_think.probe import Probe
from tiny import make_model, make_tokenizer

TOK = make_tokenizer()
MODEL = make_model("qwen3", len(TOK), seed=11)
PROBE = Probe.random_for(MODEL, layer=1, width=16, seed=3)
MARKERS = {"single": None, "multi": ("<reason>", "</reason>")}
# R1-style prompts (the thought is open at the end of the prompt) and one that opens none
PROMPTS = ["the answer is {open}\n", "check 3 , 4 and 5 again . so {open}\n", "x y", "x {open}\n so"]
THINKERS = {name: AdaptiveThinker(MODEL, TOK, think_tokens=markers, probe=PROBE) for name, markers in MARKERS.items()}

CONFIGS = st.one_of(
    st.just(ThinkConfig()),
    st.builds(lambda e: ThinkConfig(policy="none", exit_text=e), st.sampled_from(["", "\n\n"])),
    # the budget counts the stop text (" ok ." is 4 tokens): shorter budgets go without it
    st.builds(lambda b, e, s: ThinkConfig(policy="budget", max_think_tokens=b, exit_text=e, stop_text=s if b >= 4 else ""),
              st.integers(1, 8), st.sampled_from(["", "\n\n", " so : "]), st.sampled_from(["", " ok ."])),
    st.builds(lambda t, k, m: ThinkConfig(policy="probe", threshold=t, skip_threshold=k, allow_skip=k is not None,
                                          min_think_tokens=m, stop_at_boundary=False, max_think_tokens=9),
              st.floats(0.3, 0.7), st.sampled_from([0.4, 0.6, None]), st.integers(0, 3)),
)


def generate(thinker, batch, think, engine):
    out = thinker.generate(**batch, think=think, engine=engine, max_new_tokens=14, do_sample=False)
    return out, [r.to_dict() for r in thinker.last_reports]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs=st.lists(CONFIGS, min_size=1, max_size=4), marker=st.sampled_from(sorted(MARKERS)), data=st.data())
def test_each_row_of_a_mixed_batch_gets_what_it_gets_alone_on_both_engines(configs, marker, data):
    thinker = THINKERS[marker]
    open_text = thinker.markers.open_text
    prompts = [data.draw(st.sampled_from(PROMPTS)).format(open=open_text) for _ in configs]
    batch = TOK(prompts, return_tensors="pt", padding=True)
    mixed = {engine: generate(thinker, batch, configs, engine) for engine in ("hf", "graph")}
    assert torch.equal(mixed["graph"][0], mixed["hf"][0]) and mixed["graph"][1] == mixed["hf"][1]
    out, reports = mixed["graph"]
    for i, config in enumerate(configs):
        alone, alone_reports = generate(thinker, batch, config, "graph")
        n = min(out.shape[1], alone.shape[1])  # HF stops at the step every row is done: lengths may differ
        assert torch.equal(out[i, :n], alone[i, :n]) and reports[i] == alone_reports[i]
    # one runner per (marker shape, batch size), whatever the policies
    assert len(graph.cache_info(MODEL)) <= len(MARKERS) * 4


def test_a_sweep_over_budgets_and_thresholds_holds_one_runner():
    graph.clear_graph_cache(MODEL)
    thinker = THINKERS["single"]
    batch = TOK([p.format(open="<think>") for p in PROMPTS], return_tensors="pt", padding=True)
    sweep = [ThinkConfig(policy="budget", max_think_tokens=b, exit_text="\n\n") for b in (1, 2, 4, 8, 16)]
    sweep += [ThinkConfig(policy="probe", threshold=t, skip_threshold=0.5, stop_at_boundary=False)
              for t in (0.3, 0.4, 0.5, 0.6, 0.7)]
    for think in sweep:
        out, reports = generate(thinker, batch, think, "graph")
        ref, ref_reports = generate(thinker, batch, think, "hf")
        assert torch.equal(out, ref) and reports == ref_reports
    info = graph.cache_info(MODEL)
    assert len(info) == 1 and info[0]["batch"] == len(PROMPTS)
    graph.clear_graph_cache(MODEL)


def test_mixed_batch_on_the_graph_engine_steers_each_row_its_own_way():
    """A hand-checked batch: full, none, budget 3 with exit text, probe: four different endings."""
    thinker = THINKERS["single"]
    batch = TOK([PROMPTS[0].format(open="<think>")] * 4, return_tensors="pt", padding=True)
    configs = [ThinkConfig(), ThinkConfig(policy="none"), ThinkConfig(policy="budget", max_think_tokens=3,
                                                                      exit_text="\n\n"),
               ThinkConfig(policy="probe", threshold=0.0, skip_threshold=0.0, allow_skip=False, min_think_tokens=2,
                           stop_at_boundary=False)]
    out, reports = generate(thinker, batch, configs, "graph")
    assert [r["ended_by"] for r in reports] == ["unfinished", "skipped", "budget", "probe"]
    assert [r["think_tokens"] for r in reports[1:]] == [0, 3, 2]
    gen = out[:, batch["input_ids"].shape[1]:]
    close = thinker.markers.close_ids[0]
    assert gen[2, 3] == close and gen[2, 4:6].tolist() == TOK.encode("\n\n", add_special_tokens=False)
    assert gen[3, 2] == close and gen[1, 0] == close


def _strip_wall(obj):
    if isinstance(obj, dict):
        return {k: _strip_wall(v) for k, v in obj.items() if k != "wall_s"}
    if isinstance(obj, list):
        return [_strip_wall(v) for v in obj]
    return obj


@pytest.mark.slow
def test_eval_over_the_default_sweep_gives_the_same_results_on_both_engines(tmp_path, capsys):
    import json

    from adaptive_think.cli import main

    from adaptive_think.bundled import probe_path, reasoner_path

    reasoner_path(), probe_path()  # committed with the package: missing files are a packaging break, not a skip
    results = {}
    for engine in ("hf", "graph"):
        out = tmp_path / f"{engine}.json"
        assert main(["eval", "--model", "bundled", "--probe", "bundled", "--n", "4", "--seed", "5", "--batch-size", "4",
                     "--max-new-tokens", "64", "--engine", engine, "--device", "cpu", "--json", str(out)]) == 0
        results[engine] = json.loads(out.read_text())
    assert len(results["hf"]["policies"]) >= 5  # full, none, budgets, probe levels, baselines
    assert _strip_wall(results["graph"]["policies"]) == _strip_wall(results["hf"]["policies"])
