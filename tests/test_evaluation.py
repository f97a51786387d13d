"""`eval` on a tiny model: every policy family runs, baselines stop at boundaries, trial tokens count."""

import dataclasses
import json
import re

import pytest
import torch

from adaptive_think import ThinkConfig
from adaptive_think.evaluation.policies import check_policies, default_policies, parse_policy
from adaptive_think.evaluation.report import envelope, pareto_check
from adaptive_think.evaluation.run import Evaluator, evaluate, think_tokens_of
from adaptive_think.markers import resolve_markers
from adaptive_think.probe import Probe
from adaptive_think.training.items import Item
from tiny import make_model, make_tokenizer
from pipeline_helpers import R1_TEMPLATE, checker


@pytest.fixture(scope="module")
def ev():
    tok = make_tokenizer()
    tok.chat_template = R1_TEMPLATE
    model = make_model("qwen3", len(tok))
    # a model that writes "." forever: every thought token is a step boundary
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tok.convert_tokens_to_ids(".")] = 5.0
    model.lm_head = head
    items = [Item(f"q{i}", f"the answer is {i}", str(i), level=1 + i % 2) for i in range(6)]
    probe = Probe.random_for(model, width=8)
    return Evaluator(model, tok, items, checker, probe=probe, batch_size=3, max_new_tokens=16,
                     pattern=re.compile(r"\."), progress=False)


def test_all_policy_families_run(ev):
    pols = ["full", "none", "budget:4", "marker", "confidence:0.0", "consistency:2", "consistency:2:3", "probe",
            "probe:0.0", "router", "oracle"]
    res = evaluate(ev, pols, log=lambda *_: None)
    assert list(res) == pols
    for name, v in res.items():
        assert 0 <= v["accuracy"] <= 1 and set(v["per_level"]) == {"1", "2"}
        assert v["forward_tokens_mean"] >= v["think_tokens_mean"]
    assert res["none"]["think_tokens_mean"] == 0 and res["none"]["skip_rate"] == 1.0
    assert res["budget:4"]["think_tokens_mean"] <= 4
    assert res["full"]["think_tokens_mean"] == 16  # a random model never closes its thought
    # confidence 0.0 stops at the first boundary; its trial answers are counted as forward tokens
    conf = res["confidence:0.0"]
    assert conf["think_tokens_mean"] == 1
    assert conf["forward_tokens_mean"] > 16  # one trial answer (close + exit + up to 12 tokens) on top
    assert res["marker"]["think_tokens_mean"] == 1 and res["marker"]["forward_tokens_mean"] == 16
    json.dumps(res)
    # a random model never closes its thought: no point is "right and stays right", the oracle thinks it all
    assert res["oracle"]["think_tokens_mean"] == 16 and res["oracle"]["accuracy"] == res["full"]["accuracy"]
    # consistency checks every boundary (every token here) or every 3rd token: at least 2 trials, then stops
    assert res["consistency:2"]["think_tokens_mean"] >= 2 and res["consistency:2:3"]["think_tokens_mean"] >= 6


def test_router_rows_skip_or_think_to_the_end(ev):
    """The router takes the probe's skip decision alone: each row skips (0 thinking tokens) or thinks to the end,
    even where the ready head would stop it at its first token."""
    thinker = ev.thinker
    trace = ThinkConfig(policy="probe", threshold=1.0, skip_threshold=1.0, trace=True)
    skip_scores = []
    for _, batch in ev._batches():
        thinker.generate(**batch, think=trace, max_new_tokens=1, do_sample=False)
        skip_scores += [r.scores[0] for r in thinker.last_reports]  # step 0: the skip head at the prompt's end
    cut = sorted(skip_scores)[len(skip_scores) // 2]
    # the rows at or above the median skip score skip; the ready head passes its threshold at every step
    probe = dataclasses.replace(thinker.probe, ready_threshold=0.0, skip_threshold=cut)
    skipped, thought = [], []
    for item in ev.items:  # one question per run: the row's own numbers
        alone = Evaluator(ev.model, ev.tok, [item], checker, probe=probe, batch_size=1, max_new_tokens=16,
                          pattern=ev.pattern, progress=False)
        got = alone.run(parse_policy("router"))
        assert (got["think_tokens_mean"], got["skip_rate"]) in ((0, 1.0), (16, 0.0)), item.id
        (skipped if got["skip_rate"] else thought).append(alone)
    assert skipped and thought  # both kinds of row occur
    # the same probe without the router stops a thinking row at its first token
    assert thought[0].run(parse_policy("probe"))["think_tokens_mean"] == 1


def test_policy_specs():
    assert parse_policy("budget:32").value == 32
    assert parse_policy("effort:high").effort == "high" and parse_policy("stops:low").kind == "stops"
    assert (parse_policy("consistency:3").value, parse_policy("consistency:3").every) == (3, None)
    assert parse_policy("consistency:3:16").every == 16
    for bad, msg in [("budget", "needs a cap"), ("sometimes", "Unknown policy"), ("probe:1.5", r"\[0, 1\]"),
                     ("full:3", "takes no value"), ("budget:x", "not a number"), ("effort", "rung name"),
                     ("router:1", "takes no value"), ("oracle:2", "takes no value"), ("consistency", "needs M"),
                     ("consistency:1", ">= 2"), ("consistency:3:0", "K must")]:
        with pytest.raises(ValueError, match=msg):
            parse_policy(bad)
    assert "probe" in default_policies(100, True) and "probe" not in default_policies(100, False)
    assert {"effort:high", "effort:low", "stops:high", "router", "oracle"} <= set(default_policies(100, True, ["high", "low"]))


def test_policies_checked_before_running():
    specs = [parse_policy(t) for t in ("full", "marker", "effort:high", "effort:turbo", "stops:x", "router", "oracle")]
    why = check_policies(specs, has_probe=True, efforts=["high"], has_pattern=False)
    assert set(why) == {"marker", "effort:turbo", "stops:x"} and "answer pattern" in why["marker"]
    why = check_policies(specs, has_probe=False, efforts=[], has_pattern=True)
    assert set(why) == {"effort:high", "effort:turbo", "stops:x", "router"}
    assert "no effort ladder" in check_policies(specs[2:3], has_probe=True, efforts=[], has_pattern=True)["effort:high"]


def _row(f, a):
    return {"forward_tokens_mean": f, "accuracy": a}


def test_pareto_verdicts_on_known_points():
    # probe points (10, 0.5), (20, 0.9), (40, 1.0): their envelope is 0.7 at 15 and 0.95 at 30
    res = {"probe:0.2": _row(10, 0.5), "effort:low": _row(20, 0.9), "effort:high": _row(40, 1.0),
           "budget:8": _row(8, 0.3),  # cheaper than every probe point: not beaten
           "budget:15": _row(15, 0.69),  # under the segment between two probe points: beaten by mixing them
           "marker": _row(15, 0.71),  # above that segment: not beaten
           "confidence:0.9": _row(30, 0.95),  # exactly on the envelope: beaten (tie goes to the probe)
           "consistency:3": _row(50, 0.99), "router": _row(60, 1.0),  # more tokens, no better: beaten
           "full": _row(90, 1.0), "oracle": _row(5, 1.0)}  # not baselines: never judged
    got = pareto_check(res)
    assert sorted(got["beaten"]) == ["budget:15", "confidence:0.9", "consistency:3", "router"]
    assert sorted(got["not_beaten"]) == ["budget:8", "marker"] and not got["dominates_all"]
    # the rungs alone (no probe:0.2) reach nothing below 20 forward tokens
    assert sorted(pareto_check(res, ("effort",))["not_beaten"]) == ["budget:15", "budget:8", "marker"]
    assert envelope([(10, 0.5), (20, 0.9)], 15) == pytest.approx(0.7) and envelope([(10, 0.5)], 9) is None
    assert pareto_check({"full": _row(1, 1)}) == {}


def test_think_token_counting():
    tok = make_tokenizer()
    m = resolve_markers(tok)
    ids = tok.encode("<think>so so .</think>\n\nok", add_special_tokens=False)
    assert think_tokens_of(ids, m, False) == (5, True)
    assert think_tokens_of(tok.encode("ok", add_special_tokens=False), m, False) == (0, False)


def test_empty_block_counts_no_thinking():
    tok = make_tokenizer()
    m = resolve_markers(tok)
    ids = tok.encode("<think>\n\n</think>\n\nok", add_special_tokens=False)
    assert think_tokens_of(ids, m, False) == (2, True)
    assert think_tokens_of(ids, m, False, tok) == (0, True)


def test_training_free_score_policy_specs():
    s = parse_policy("score:close-margin:0.05")
    assert (s.kind, s.score, s.value) == ("score", "close-margin", 0.05)
    s = parse_policy("score-effort:entropy:high")
    assert (s.kind, s.score, s.effort) == ("score-effort", "entropy", "high")
    for bad in ("score:close-margin", "score:margin:0.1", "score:entropy:1.5", "score-effort:entropy", "score:entropy:x"):
        with pytest.raises(ValueError, match=re.escape(bad)):
            parse_policy(bad)
    specs = [parse_policy(t) for t in ("score-effort:entropy:high", "score-effort:close-margin:high", "score:entropy:0.1")]
    why = check_policies(specs, has_probe=False, efforts=[], has_pattern=True, score_efforts={"close-margin": ["low"]})
    assert set(why) == {"score-effort:entropy:high", "score-effort:close-margin:high"}
    assert "--score-file" in why["score-effort:entropy:high"] and "['low']" in why["score-effort:close-margin:high"]
    sweep = default_policies(100, False, score_efforts={"entropy": ["high", "low"]})
    assert {"score-effort:entropy:high", "score-effort:entropy:low", "score:entropy:0.05"} <= set(sweep)
    assert not any(p.startswith("score") for p in default_policies(100, False))


@pytest.mark.slow
def test_eval_cli_runs_training_free_scores_beside_the_baselines(tmp_path, capsys):
    """calibrate-score on the bundled reasoner, then eval with its rung, explicit thresholds, a budget and the oracle."""
    from adaptive_think.cli import main

    score = tmp_path / "score"
    assert main(["calibrate-score", "--model", "bundled", "--n", "24", "--seed", "5", "--out", str(score),
                 "--efforts", "low:0.3", "--batch-size", "12", "--max-new-tokens", "160"]) == 0
    out = tmp_path / "eval.json"
    pols = ["full", "budget:20", "score-effort:close-margin:low", "score:close-margin:0.05", "score:entropy:0.3", "oracle"]
    assert main(["eval", "--model", "bundled", "--score-file", str(score), "--n", "6", "--seed", "77", "--device", "cpu",
                 "--include-seen", "--json", str(out), "--policies", *pols]) == 0
    capsys.readouterr()
    payload = json.loads(out.read_text())
    assert list(payload["policies"]) == pols and payload["n"] == 6
    res = payload["policies"]
    assert res["budget:20"]["think_tokens_mean"] <= 20
    # entropy >= 0.3 stops at a boundary early on this model: fewer thinking tokens than full thinking
    assert res["score:entropy:0.3"]["think_tokens_mean"] < res["full"]["think_tokens_mean"]
    assert res["score-effort:close-margin:low"]["think_tokens_mean"] <= res["full"]["think_tokens_mean"]
    assert [r["name"] for r in payload["score_files"]["close-margin"]["rungs"]] == ["low"]
    assert "score-effort:close-margin:low" in payload["oracle_share"]
    # the score rung's promise beside the others: loss against full thinking with its interval, vs its epsilon
    prom = payload["promise"]["score-effort:close-margin:low"]
    assert (prom["rung"], prom["epsilon"], prom["pooled"]["n"]) == ("low", 0.3, 6) and prom["per_level"]
    assert set(payload["promise"]) == {"score-effort:close-margin:low"}
    assert set(payload["vs_full_scores"]) == {"score-effort:close-margin:low", "score:close-margin:0.05",
                                              "score:entropy:0.3"}
    assert payload["pareto_score_rungs"]["close-margin"]["beaten"] + \
        payload["pareto_score_rungs"]["close-margin"]["not_beaten"] == ["budget:20"]
    assert out.with_suffix(".png").stat().st_size > 0
