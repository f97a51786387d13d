"""eval's check of each rung against its promise: losses against full thinking with exact intervals, pooled,
per level and per the probe's strata; `eval --levels` picks the mix."""

import json

import pytest

from adaptive_think.cli import main
from adaptive_think.evaluation.promise import format_promise, loss_row, promise_report
from adaptive_think.probe import Probe
from adaptive_think.probe.ladder import Rung
from adaptive_think.training.metrics import binom_cdf, binom_interval
from tiny import make_model, make_tokenizer
from pipeline_helpers import R1_TEMPLATE


def test_exact_interval_is_clopper_pearson():
    lo, hi = binom_interval(3, 50)
    # the bounds are where the tails of Binomial(50, p) hold 2.5% each
    assert abs((1 - binom_cdf(2, 50, lo)) - 0.025) < 1e-9 and abs(binom_cdf(3, 50, hi) - 0.025) < 1e-9
    assert binom_interval(0, 20)[0] == 0.0 and binom_interval(20, 20)[1] == 1.0
    with pytest.raises(ValueError, match="0 <= k <= n"):
        binom_interval(5, 4)


def test_loss_counts_questions_full_thinking_gets_right_and_the_rung_does_not():
    full = [True] * 6 + [False] * 4
    ok = [True] * 4 + [False] * 2 + [True] * 2 + [False] * 2  # loses 2, gains 2
    row = loss_row(full, ok, 0.05)
    assert (row["n"], row["lost"], row["loss"]) == (10, 2, 0.2) and row["accuracy_points_lost"] == 0.0
    assert row["verdict"] == "consistent"  # 2 of 10: the interval [0.025, 0.556] holds 0.05
    assert loss_row([True] * 100, [False] * 20 + [True] * 80, 0.05)["verdict"] == "above"
    assert loss_row([True] * 400, [True] * 400, 0.05)["verdict"] == "below"


def _probe(strata):
    probe = Probe.random_for(make_model("qwen3", len(make_tokenizer())), width=4)
    cal = {"strata": strata}
    probe.set_ladder([Rung("high", 0.01, 0.1, 0.9, 0.9, cal), Rung("low", 0.2, 0.1, 0.5, 0.5, cal)], "high")
    return probe


def test_promise_report_per_level_and_per_length_bin():
    probe = _probe({"by": "length", "spec": "length:2", "cuts": [50]})
    # 4 questions of level 1 (thoughts of 10 tokens), 4 of level 2 (100 tokens); full right on all
    full_rows = [dict(level=1 + i // 4, think=10 if i < 4 else 100, correct=True) for i in range(8)]
    outcomes = {"full": [True] * 8, "effort:low": [True] * 4 + [False, True, True, True],
                "probe": [True] * 8, "budget:3": [False] * 8}
    rep = promise_report(full_rows, outcomes, probe)
    assert set(rep) == {"effort:low", "probe"}  # rung policies only; `probe` is the default rung
    low = rep["effort:low"]
    assert low["rung"] == "low" and low["pooled"]["lost"] == 1 and low["strata"] == "length:2"
    assert {k: v["lost"] for k, v in low["per_level"].items()} == {"level 1": 0, "level 2": 1}
    assert {k: v["n"] for k, v in low["per_stratum"].items()} == {"length bin 1 [0, 50)": 4,
                                                                  "length bin 2 [50, inf)": 4}
    assert rep["probe"]["rung"] == "high" and rep["probe"]["epsilon"] == 0.01
    text = format_promise(rep, "greedy")
    assert "effort:low" in text and "length bin 2 [50, inf)" in text and "level 2" in text
    # a probe calibrated by level reports levels once
    assert "per_stratum" not in promise_report(full_rows, outcomes, _probe({"by": "level", "spec": "level"}))["probe"]
    with pytest.raises(ValueError, match="same questions"):
        promise_report(full_rows, {"effort:low": [True]}, probe)


def test_promise_report_per_category_when_the_questions_mix_several():
    probe = _probe({"by": "length", "spec": "length:2", "cuts": [50]})
    full_rows = [dict(level=1, think=10, correct=True, category="walk" if i % 2 else "last_digit") for i in range(8)]
    outcomes = {"effort:low": [True, False, True, False, True, True, True, True]}  # loses two walk questions
    low = promise_report(full_rows, outcomes, probe)["effort:low"]
    assert {k: (v["n"], v["lost"]) for k, v in low["per_category"].items()} == {"category last_digit": (4, 0),
                                                                                "category walk": (4, 2)}
    assert "category walk" in format_promise({"effort:low": low}, "greedy")
    # one category, or strata that already are the categories: no second report
    one = [dict(r, category="walk") for r in full_rows]
    assert "per_category" not in promise_report(one, outcomes, probe)["effort:low"]
    by_cat = promise_report(full_rows, outcomes, _probe({"by": "category", "spec": "category"}))["effort:low"]
    assert "per_category" not in by_cat and set(by_cat["per_stratum"]) == {"category last_digit", "category walk"}


def test_promise_report_of_training_free_score_rungs_per_level_and_per_their_own_strata():
    """score-effort:KIND:NAME rungs are checked against their own file's epsilon and strata, beside the probe's."""
    score = Probe.training_free("close-margin", make_model("qwen3", len(make_tokenizer())))
    cal = {"strata": {"by": "length", "spec": "length:2", "cuts": [30]}}
    score.set_ladder([Rung("high", 0.02, 0.1, 0.4, 2.0, cal), Rung("low", 0.3, 0.1, 0.1, 2.0, cal)], "high")
    probe = _probe({"by": "level", "spec": "level"})
    full_rows = [dict(level=1 + i // 4, think=10 if i % 2 else 100, correct=i != 7) for i in range(8)]
    outcomes = {"full": [i != 7 for i in range(8)], "effort:high": [True] * 8,
                "score-effort:close-margin:low": [True, False, True, True, False, True, True, True],
                "score-effort:close-margin:high": [True] * 8, "score:close-margin:0.05": [False] * 8,
                "score-effort:entropy:low": [False] * 8}  # no entropy file passed: not a rung here
    rep = promise_report(full_rows, outcomes, probe, {"close-margin": score})
    assert set(rep) == {"effort:high", "score-effort:close-margin:low", "score-effort:close-margin:high"}
    low = rep["score-effort:close-margin:low"]
    assert (low["rung"], low["epsilon"], low["strata"]) == ("low", 0.3, "length:2")
    assert low["pooled"]["lost"] == 2 and low["pooled"]["interval"] == list(binom_interval(2, 8))
    assert {k: v["lost"] for k, v in low["per_level"].items()} == {"level 1": 1, "level 2": 1}
    # questions 1, 3, 5, 7 think 10 tokens (bin 1), the others 100 (bin 2); question 1 and 4 are lost
    assert {k: (v["n"], v["lost"]) for k, v in low["per_stratum"].items()} == {"length bin 1 [0, 30)": (4, 1),
                                                                               "length bin 2 [30, inf)": (4, 1)}
    assert rep["score-effort:close-margin:high"]["epsilon"] == 0.02 and "per_stratum" not in rep["effort:high"]
    assert "score-effort:close-margin:low" in format_promise(rep, "greedy")
    assert promise_report(full_rows, outcomes, None, {"close-margin": score}).keys() == {
        "score-effort:close-margin:low", "score-effort:close-margin:high"}  # score files without a probe


def test_eval_levels_and_the_promise_from_the_cli(tmp_path, capsys, monkeypatch):
    import adaptive_think.evaluation.run as run_mod

    tok = make_tokenizer()
    tok.chat_template = R1_TEMPLATE
    model = make_model("qwen3", len(tok))
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    _probe({"by": "level", "spec": "level"}).save_pretrained(tmp_path / "p")
    seen = {}

    def fake_evaluate(ev, policies, log=print):  # full right everywhere, effort:high loses the first question
        seen["levels"] = sorted({it.level for it in ev.items})
        n = len(ev.items)
        ev.full_rows = [dict(level=it.level, category="", think=20, correct=True) for it in ev.items]
        ev.outcomes = {"full": [True] * n, "effort:high": [False] + [True] * (n - 1)}
        row = dict(accuracy=1.0, think_tokens_mean=10.0, forward_tokens_mean=12.0, skip_rate=0.0, wall_s=0.0,
                   per_level={"4": dict(n=n, accuracy=1.0, think_tokens_mean=10.0, forward_tokens_mean=12.0,
                                        skip_rate=0.0)})
        return {p: row for p in policies}

    monkeypatch.setattr(run_mod, "evaluate", fake_evaluate)
    args = ["eval", "--model", str(tmp_path / "model"), "--probe", str(tmp_path / "p"), "--n", "30", "--seed", "5",
            "--levels", "4", "6", "--policies", "full", "effort:high", "--json", str(tmp_path / "e.json")]
    assert main(args) == 0
    assert seen["levels"] == [4, 6]
    out = capsys.readouterr().out
    assert "promise (greedy)" in out and "all evaluated" in out
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["levels"] == [4, 6]
    high = got["promise"]["effort:high"]
    assert high["pooled"]["n"] == got["n"] and high["pooled"]["lost"] == 1
    assert set(high["per_level"]) == {"level 4", "level 6"}
    # --levels picks bundled questions only
    assert main(args[:5] + ["--questions", str(tmp_path / "q.jsonl"), "--levels", "4"]) == 2
    assert "--levels picks bundled questions" in capsys.readouterr().err
