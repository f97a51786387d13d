"""A probe's route on both engines: each probe row runs its group's thresholds, placed by its prompt-end state, and
the hf and graph engines give the same tokens and reports (the reports name each row's group)."""

from __future__ import annotations

import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.controller.params import NEVER
from adaptive_think.probe import Probe
from adaptive_think.probe.ladder import Rung
from adaptive_think.probe.route import Route
from adaptive_think.training.guard import features, prompt_states
from tiny import make_model, make_tokenizer

TOK = make_tokenizer()
MODEL = make_model("qwen3", len(TOK), seed=11)
A, B = "check 3 , 4 and 5 again . so <think>\n", "x y x y x y <think>\n"  # R1-style: the thought is open
RAW = make_tokenizer()
RAW.chat_template = None  # prompt_states reads the prompts as they are
BUDGET = 9


def _probe() -> Probe:
    """A random probe whose route sends A to group "a" (never stops or skips) and B to "b" (skips at once)."""
    probe = Probe.random_for(MODEL, layer=1, width=16, seed=3)
    x = features(probe, prompt_states(MODEL, RAW, [A, B], probe.layer, log=lambda m: None))  # [2, D]
    # nearest of the two prompt-end states: argmax_g (x_g . x - |x_g|^2 / 2)
    probe.route = Route(w=x.clone(), b=-(x * x).sum(-1) / 2, groups=["a", "b"])
    assert probe.route.assign(x).tolist() == [0, 1]
    probe.set_ladder([Rung("high", 0.005, 0.1, NEVER, NEVER,
                           by_group={"a": {"greedy": (NEVER, NEVER)}, "b": {"greedy": (0.0, 0.0)}})], "high")
    return probe


PROBE = _probe()
THINKER = AdaptiveThinker(MODEL, TOK, probe=PROBE)


def _generate(prompts, configs, engine):
    batch = TOK(prompts, return_tensors="pt", padding=True)
    out = THINKER.generate(**batch, think=configs, engine=engine, max_new_tokens=16, do_sample=False)
    return out, [r.to_dict() for r in THINKER.last_reports]


def test_each_row_runs_its_groups_thresholds_on_both_engines():
    probe_row = dict(policy="probe", effort="high", stop_at_boundary=False, max_think_tokens=BUDGET)
    prompts = [A, B, B, A]
    configs = [ThinkConfig(**probe_row), ThinkConfig(**probe_row), ThinkConfig(**probe_row, allow_skip=False),
               ThinkConfig(policy="budget", max_think_tokens=BUDGET, exit_text=PROBE.policy_defaults["exit_text"])]
    out, reports = _generate(prompts, configs, "hf")
    graph_out, graph_reports = _generate(prompts, configs, "graph")
    assert torch.equal(graph_out, out) and graph_reports == reports
    assert [r["group"] for r in reports] == [0, 1, 1, None]  # a budget row is not routed
    assert reports[1]["ended_by"] == "skipped"  # group b's skip threshold 0
    # group a never stops or skips: the row thinks to its budget, as the budget row does
    assert reports[0]["ended_by"] == "budget" and torch.equal(out[0], out[3])
    # allow_skip=False holds in every group: row 2 does not skip, and b's ready threshold 0 stops it
    assert reports[2]["ended_by"] == "probe" and reports[2]["think_tokens"] < BUDGET
