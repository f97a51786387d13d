"""benchmarks/step_timing.py, the per-step timing harness: alternation, pairing, differential cases, and the
graph engine's runner replayed from a rewound state (CPU clock on a tiny model)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from step_timing import Clock, StepCase, generate_case, measure, runner_case, table  # noqa: E402

from adaptive_think import AdaptiveThinker, ThinkConfig  # noqa: E402
from adaptive_think.engines import graph  # noqa: E402
from adaptive_think.engines.graph import generate_graph  # noqa: E402
from tiny import make_model, make_tokenizer  # noqa: E402

TOK = make_tokenizer()


class DriftingClock:
    """A fake clock: a run of n steps of a case costing c ms per step takes n * c * speed, where the machine's
    speed drifts by 0.2% per timed interval (9% over the run) (a warming card, a neighbour's job)."""

    kind = "fake"

    def __init__(self):
        self.calls = 0
        self.order = []
        self.cost = 0.0

    def time(self, fn):
        self.cost = 0.0
        fn()
        self.calls += 1
        return self.cost * (1 + 0.002 * self.calls)


def fake_case(clock, name, ms_per_step, fixed=0.0, base=0):
    def run(n):
        clock.order.append(name)
        clock.cost = fixed + n * ms_per_step

    return StepCase(name, run, base=base)


def test_paired_ratio_resolves_one_percent_under_drift_that_swamps_the_medians():
    clock = DriftingClock()
    cases = [fake_case(clock, "none", 2.0), fake_case(clock, "probe", 2.02), fake_case(clock, "other", 3.0)]
    doc = measure(cases, clock, steps=10, reps=15, baseline="none", warmup=0)
    none, probe = doc["cases"]["none"], doc["cases"]["probe"]
    assert none["n"] == probe["n"] == 15 and len(none["samples"]) == 15
    assert probe["p20"] < none["p80"]  # the unpaired spreads overlap: they cannot tell 1% apart
    r = doc["paired"]["probe"]
    assert 1.005 < r["p20"] <= r["median"] <= r["p80"] < 1.015  # the paired ratio can
    assert r["p80"] - r["p20"] < 0.01
    assert "none" not in doc["paired"] and set(doc["paired"]) == {"probe", "other"}
    assert "probe" in table(doc)


def test_cases_alternate_in_a_rotating_order():
    clock = DriftingClock()
    cases = [fake_case(clock, n, 1.0) for n in "abc"]
    measure(cases, clock, steps=4, reps=3, warmup=1)
    assert clock.order == list("abc") + list("abc") + list("bca") + list("cab")


def test_generate_case_is_differential():
    clock = DriftingClock()
    clock.time = lambda fn: (fn(), clock.cost)[1]  # no drift: exact arithmetic
    case = fake_case(clock, "hf", 3.0, fixed=40.0, base=8)
    doc = measure([case], clock, steps=16, reps=3, warmup=0)
    assert doc["cases"]["hf"]["median"] == pytest.approx(3.0, rel=1e-12)  # the fixed 40 ms cancels
    assert generate_case("x", lambda n: None, base=4).base == 4



def test_bad_arguments_say_what_is_wrong():
    clock = DriftingClock()
    a = fake_case(clock, "a", 1.0)
    with pytest.raises(ValueError, match="baseline 'z'"):
        measure([a], clock, steps=2, reps=2, baseline="z")
    with pytest.raises(ValueError, match="distinct"):
        measure([a, fake_case(clock, "a", 2.0)], clock, steps=2, reps=2)
    with pytest.raises(ValueError, match="clock must be one of"):
        Clock("sundial")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            Clock("cuda")


def test_runner_cases_replay_the_engine_step_from_a_rewound_state():
    """CPU clock, tiny Qwen3, no controller and the probe policy: every timed segment starts from the prompt,
    so after all repetitions the runner holds exactly the tokens of one plain generate call."""
    from adaptive_think.probe import Probe

    model = make_model("qwen3", len(TOK), seed=7)
    probe = Probe.random_for(model, layer=1, width=16, seed=0)
    thinker = AdaptiveThinker(model, TOK, probe=probe, impl="torch")
    think = ThinkConfig(policy="probe", threshold=0.5, skip_threshold=0.5, stop_at_boundary=False)
    b = TOK(["the answer is <think>\n", "x <think>\n so"], return_tensors="pt", padding=True)
    ids, mask = b["input_ids"], b["attention_mask"]
    kw = dict(eos_token_id=None, pad_token_id=0)
    steps = 9
    ref_none = generate_graph(model, None, ids, attention_mask=mask, max_new_tokens=steps + 1, **kw)
    ref_probe = generate_graph(model, thinker.controller(think, kw), ids, attention_mask=mask,
                               max_new_tokens=steps + 1, probe_layer=1, **kw)
    assert not torch.equal(ref_none, ref_probe)  # the controller changes the tokens: its state matters
    graph.clear_graph_cache(model)
    none = runner_case("graph_none", model, None, ids, mask, steps=steps, **kw)
    run_none = graph._RUNNERS[model][next(reversed(graph._RUNNERS[model]))]
    probe_case = runner_case("graph_probe", model, thinker.controller(think, kw), ids, mask, steps=steps,
                             probe_layer=1, **kw)
    run_probe = graph._RUNNERS[model][next(reversed(graph._RUNNERS[model]))]
    assert run_none is not run_probe
    doc = measure([none, probe_case], Clock("cpu"), steps=steps, reps=15, baseline="graph_none")
    for name, c in doc["cases"].items():
        assert c["n"] == 15 and all(x > 0 for x in c["samples"]), name
    assert doc["paired"]["graph_probe"]["median"] > 0
    new = ids.shape[1]
    assert torch.equal(run_none.tokens[:, : steps + 1], ref_none[:, new:])
    assert torch.equal(run_probe.tokens[:, : steps + 1], ref_probe[:, new:])
    assert not run_probe.active  # its hook is off between timed segments
    with pytest.raises(ValueError, match="overflow"):
        probe_case.per_step_ms(Clock("cpu"), run_probe.length)
    graph.clear_graph_cache(model)


def test_engine_benchmark_step_plan_writes_paired_cases(tmp_path):
    """gpu_engines.py --plan step on the CPU (a tiny Qwen3 shape): every case timed 15 times, the probe's paired
    overhead and HF's paired ratio in the summary, the JSON written."""
    import json

    import gpu_engines

    out = tmp_path / "step.json"
    doc = gpu_engines.main(["--plan", "step", "--device", "cpu", "--threads", "1", "--clock", "cpu", "--models",
                            "qwen3-tiny", "--batches", "2", "--step-steps", "4", "--out", str(out)])
    assert json.loads(out.read_text())["cases"] == doc["cases"]
    assert not doc["skipped"], doc["skipped"]
    by_case = {c["case"]: c for c in doc["cases"]}
    assert set(by_case) == {"graph_none", "graph_probe", "hf_eager"}
    assert all(c["ms_per_step"]["n"] == 15 and c["clock"] == "cpu" for c in by_case.values())
    assert by_case["graph_none"]["paired_vs_graph_none"] is None
    (overhead,) = doc["summary"]["controller_overhead_paired"]
    assert overhead["batch"] == 2 and overhead["p20"] <= overhead["median"] <= overhead["p80"]
    (speedup,) = doc["summary"]["speedup_vs_hf_paired"]
    assert speedup["case"] == "hf_eager" and speedup["graph_probe_speedup"]["n"] == 15
    with pytest.raises(SystemExit):
        gpu_engines.main(["--plan", "step", "--device", "cpu", "--step-reps", "5"])  # cannot resolve 1%


def test_engine_benchmark_score_row_cost_is_paired_against_budget_rows(tmp_path):
    """--step-cases graph_budget graph_score hf_engine_budget hf_engine_score on a tiny Qwen3: the score rows
    read the logits and the budget rows do not, and the JSON holds each engine's paired score / budget ratio."""
    import json

    import gpu_engines

    out = tmp_path / "score.json"
    gpu_engines.main(["--plan", "step", "--device", "cpu", "--threads", "1", "--clock", "cpu", "--models",
                      "qwen3-tiny", "--batches", "2", "--step-steps", "4", "--step-cases", "graph_budget",
                      "graph_score", "hf_engine_budget", "hf_engine_score", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert not doc["skipped"], doc["skipped"]
    by_case = {c["case"]: c for c in doc["cases"]}
    assert set(by_case) == {"graph_budget", "graph_score", "hf_engine_budget", "hf_engine_score"}
    assert {c: by_case[c]["reads_logits"] for c in by_case} == {
        "graph_budget": False, "graph_score": True, "hf_engine_budget": False, "hf_engine_score": True}
    cost = {o["case"]: o for o in doc["summary"]["score_row_cost_paired"]}
    assert {c: cost[c]["vs"] for c in cost} == {"graph_score": "graph_budget", "hf_engine_score": "hf_engine_budget"}
    for name, o in cost.items():
        assert o["batch"] == 2 and o["n"] >= 13 and 0 < o["p20"] <= o["median"] <= o["p80"], name
        assert o["median"] == by_case[name]["paired_vs_budget"]["median"]
    assert "paired_vs_budget" not in by_case["graph_budget"]
