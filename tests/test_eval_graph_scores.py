"""Training-free score policies on the graph engine, on the one-family reasoner (bundled-v1; greedy, fp32): a batch
mixing score rows with every other policy gives the hf engine's tokens and reports, and `eval --engine graph` gives
the hf engine's report for score rows (uncalibrated and a calibrated rung) beside the other policies."""

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.evaluation.promise import promise_report
from adaptive_think.evaluation.run import Evaluator, evaluate
from adaptive_think.loading import chat_prompt
from adaptive_think.probe import Probe
from adaptive_think.probe.ladder import Rung
from adaptive_think.training.items import bundled_items, load_checker

# thresholds inside each score's range at that reasoner's step boundaries (close-margin 0-2e-5 until the
# model is about to close, the entropy score 0.73-0.99995), so that which boundary a row stops at depends on the
# exact score
THRESHOLDS = {"close-margin": (0.00001, 0.000015, 0.0001), "entropy": (0.999, 0.9999, 0.99993)}


@pytest.fixture(scope="module")
def bundled():
    from adaptive_think.loading import load_model_and_tokenizer

    return load_model_and_tokenizer("bundled-v1", "cpu", "float32")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["close-margin", "entropy"])
def test_a_batch_mixing_score_rows_with_every_policy_is_identical_on_both_engines(bundled, kind):
    model, tok = bundled
    thinker = AdaptiveThinker(model, tok, probe=Probe.training_free(kind, model))
    items = bundled_items(9, seed=77)
    batch = tok([chat_prompt(tok, it.question) for it in items], return_tensors="pt", padding=True,
                add_special_tokens=False)
    a, b, c = THRESHOLDS[kind]
    configs = [ThinkConfig(policy="probe", threshold=a, exit_text="\n\n", stop_at_boundary=True),
               ThinkConfig(),
               ThinkConfig(policy="budget", max_think_tokens=20, exit_text="\n\n"),
               ThinkConfig(policy="probe", threshold=b, exit_text="\n\n", stop_at_boundary=True),
               ThinkConfig(policy="none", exit_text="\n\n"),
               ThinkConfig(policy="probe", threshold=c, exit_text="\n\n", stop_at_boundary=False, min_think_tokens=8),
               ThinkConfig(policy="budget", max_think_tokens=40),
               ThinkConfig(policy="probe", threshold=b, exit_text="\n\n", smoothing=0.5, patience=2),
               ThinkConfig(policy="probe", threshold=a, exit_text="\n\n", max_think_tokens=30)]
    runs = {}
    for engine in ("hf", "graph"):
        out = thinker.generate(**batch, think=configs, engine=engine, max_new_tokens=160, do_sample=False)
        runs[engine] = (out, [r.to_dict() for r in thinker.last_reports])
    assert torch.equal(runs["hf"][0], runs["graph"][0]) and runs["hf"][1] == runs["graph"][1]
    reports = runs["graph"][1]
    stops = [r["decision_step"] for r, cfg in zip(reports, configs) if cfg.policy == "probe" and r["ended_by"] == "probe"]
    assert len(set(stops)) >= 2  # score rows stop mid-thought, at different steps
    assert {r["ended_by"] for r in reports} >= {"probe", "budget", "skipped", "natural"}


@pytest.mark.slow
def test_eval_on_the_graph_engine_reports_what_the_hf_engine_reports_for_score_policies(bundled):
    model, tok = bundled
    score = Probe.training_free("close-margin", model, provenance={"calibrated": True})
    score.set_ladder([Rung("mid", 0.2, 0.1, 0.00001, 2.0, {})], "mid")  # a hand-set rung: its thresholds, no test
    score.policy_defaults = {"exit_text": "\n\n", "stop_at_boundary": True}
    pols = ["full", "budget:20", "score-effort:close-margin:mid", "score:close-margin:0.000015", "score:entropy:0.99993",
            "none", "oracle"]
    got = {}
    for engine in ("hf", "graph"):
        ev = Evaluator(model, tok, bundled_items(8, seed=78), load_checker(None), batch_size=4, max_new_tokens=160,
                       engine=engine, progress=False, score_probes={"close-margin": score})
        res = evaluate(ev, pols, log=lambda *_: None)
        got[engine] = ({k: {f: v for f, v in row.items() if f != "wall_s"} for k, row in res.items()}, ev.outcomes,
                       promise_report(ev.full_rows, ev.outcomes, None, {"close-margin": score}))
    assert got["hf"] == got["graph"]
    res = got["graph"][0]
    full = res["full"]["think_tokens_mean"]
    assert all(0 < res[k]["think_tokens_mean"] < full for k in pols[2:5])  # every score policy stops some thoughts
    assert set(got["graph"][2]) == {"score-effort:close-margin:mid"}
