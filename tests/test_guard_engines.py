"""The out-of-distribution guard on both engines: a batch mixing guarded and unguarded rows, in- and
out-of-distribution prompts and a non-probe row gets the same tokens and reports on hf and graph; a flagged row
thinks as a budget row does (fallback "full" under its budget) and says so; an unflagged one follows the probe."""

from __future__ import annotations

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.probe import Probe
from adaptive_think.probe.guard import Guard
from adaptive_think.training.guard import features, prompt_states
from tiny import make_model, make_tokenizer

TOK = make_tokenizer()
MODEL = make_model("qwen3", len(TOK), seed=11)
# R1-style prompts: the thought is open at the prompt's end
IN, OUT = "check 3 , 4 and 5 again . so <think>\n", "x y x y x y <think>\n"
RAW = make_tokenizer()
RAW.chat_template = None  # prompt_states reads the prompts as they are
BUDGET = 9


def _probe() -> Probe:
    """A random probe with a guard centred on IN's prompt-end features, threshold halfway to OUT's score."""
    probe = Probe.random_for(MODEL, layer=1, width=16, seed=3)
    x = features(probe, prompt_states(MODEL, RAW, [IN, OUT], probe.layer, log=lambda m: None))  # [2, D]
    d = x.shape[1]
    dirs = torch.linalg.qr(torch.randn(d, 2, generator=torch.Generator().manual_seed(0)))[0].t().contiguous()
    probe.guard = Guard(mean=x[0], dirs=dirs, var=torch.ones(2), res_var=1.0, threshold=float("inf"), alpha=0.05,
                        n_fit=1, n_calibration=1)
    scores = probe.guard.score(x)
    assert float(scores[0]) < 1e-3 * float(scores[1])  # IN sits at the centre, OUT far from it
    probe.guard.threshold = float(scores[1]) / 2
    return probe


PROBE = _probe()
THINKER = AdaptiveThinker(MODEL, TOK, probe=PROBE)
# thresholds 0: an unflagged probe row skips at once, and would stop at once if it thought
EAGER = dict(policy="probe", threshold=0.0, skip_threshold=0.0, stop_at_boundary=False, max_think_tokens=BUDGET)


def _generate(prompts, configs, engine):
    batch = TOK(prompts, return_tensors="pt", padding=True)
    out = THINKER.generate(**batch, think=configs, engine=engine, max_new_tokens=16, do_sample=False)
    return out, [r.to_dict() for r in THINKER.last_reports]


def test_guarded_and_unguarded_rows_mix_on_both_engines():
    prompts = [IN, OUT, OUT, OUT, IN]
    configs = [ThinkConfig(**EAGER), ThinkConfig(**EAGER), ThinkConfig(**EAGER, guard=False),
               ThinkConfig(policy="budget", max_think_tokens=BUDGET, exit_text=PROBE.policy_defaults["exit_text"]),
               ThinkConfig(**EAGER, guard=False)]
    out, reports = _generate(prompts, configs, "hf")
    graph_out, graph_reports = _generate(prompts, configs, "graph")
    assert torch.equal(graph_out, out) and graph_reports == reports
    assert [r["guard"] for r in reports] == ["pass", "fallback", "off", "off", "off"]
    assert [r["ended_by"] for r in reports[:3]] == ["skipped", reports[3]["ended_by"], "skipped"]
    assert reports[1]["think_tokens"] > 0 and reports[1]["guard_score"] > PROBE.guard.threshold
    assert reports[0]["guard_score"] <= PROBE.guard.threshold and reports[3]["guard_score"] is None
    # the flagged row is the budget row: same tokens, same thought (fallback "full" keeps the row's budget)
    assert torch.equal(out[1], out[3])
    assert {k: reports[1][k] for k in ("think_tokens", "ended_by", "decision_step")} == \
        {k: reports[3][k] for k in ("think_tokens", "ended_by", "decision_step")}


def test_fit_guard_from_the_cli(tmp_path, capsys):
    """fit-guard on a saved tiny model: the written probe carries a guard whose threshold is the conformal quantile
    of its calibration prompts; too few calibration questions for alpha are refused with the count needed."""
    import json

    from adaptive_think.cli import main
    from adaptive_think.training.guard import conformal_threshold, split_for_guard

    MODEL.save_pretrained(tmp_path / "model")
    TOK.save_pretrained(tmp_path / "model")
    PROBE.save_pretrained(tmp_path / "probe")
    texts = [f"check {i % 10} , {i // 10} and {(7 * i) % 10} again . so" for i in range(40)]  # 40 distinct
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": q, "answer": "1"}) + "\n" for q in texts))
    common = ["fit-guard", "--model", str(tmp_path / "model"), "--probe", str(tmp_path / "probe"), "--questions",
              str(questions), "--checker", "exact", "--rank", "3", "--seed", "4"]
    assert main([*common, "--alpha", "0.1", "--out", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    guard = Probe.from_pretrained(tmp_path / "out").guard
    assert printed["n_calibration"] == guard.n_calibration == 20 and guard.rank == 3
    _, cal = split_for_guard(40, 0.5, 4)
    x = features(PROBE, prompt_states(MODEL, TOK, [texts[i] for i in cal], PROBE.layer, log=lambda m: None))
    assert guard.threshold == conformal_threshold(guard.score(x), 0.1)  # the 19th smallest of 20
    assert main([*common, "--alpha", "0.04", "--out", str(tmp_path / "bad")]) == 2
    assert "20 calibration questions are too few for alpha=0.04" in capsys.readouterr().err

    # --strata category: each category's calibration prompts get their own conformal threshold, the guard the largest
    kinds = ["near" if i % 2 else "far" for i in range(40)]
    questions.write_text("".join(json.dumps({"question": q, "answer": "1", "category": k}) + "\n"
                                 for q, k in zip(texts, kinds)))
    assert main([*common, "--alpha", "0.1", "--strata", "category", "--out", str(tmp_path / "strata")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    guard = Probe.from_pretrained(tmp_path / "strata").guard
    scores = guard.score(x)
    own = {k: conformal_threshold(scores[[kinds[i] == k for i in cal.tolist()]], 0.1) for k in ("near", "far")}
    assert printed["strata"] == {f"category {k}": t for k, t in own.items()}
    assert guard.threshold == max(own.values()) and guard.provenance["strata"] == "category"


def test_eval_runs_probe_policies_with_and_without_the_guard_and_reports_per_category():
    """eval: a flagged row falls back (counted in guard_fallback_rate, per category too); POLICY+noguard runs the
    same policy with the guard off, its own family on the plot, held to the same rung's promise."""
    from adaptive_think.evaluation.policies import parse_policy
    from adaptive_think.evaluation.promise import _rung_of
    from adaptive_think.evaluation.report import _family
    from adaptive_think.evaluation.run import Evaluator
    from adaptive_think.training.items import Item

    import copy

    probe = copy.deepcopy(PROBE)
    probe.policy_defaults = {**probe.policy_defaults, "stop_at_boundary": False}  # probe:0.0 stops at once
    items = [Item("a", IN, "1", 1, "seen"), Item("b", OUT, "1", 1, "unseen"), Item("c", IN, "1", 2, "seen")]
    ev = Evaluator(MODEL, RAW, items, lambda text, answer: False, probe=probe, batch_size=3, max_new_tokens=16,
                   progress=False)
    spec = parse_policy("probe:0.0")
    guarded, unguarded = ev.run(spec), ev.run(parse_policy("probe:0.0+noguard"))
    assert guarded["guard_fallback_rate"] == 1 / 3 and "guard_fallback_rate" not in unguarded
    assert guarded["per_category"]["unseen"]["guard_fallback_rate"] == 1.0
    assert guarded["per_category"]["seen"]["guard_fallback_rate"] == 0.0 and guarded["per_category"]["seen"]["n"] == 2
    # the unseen row thinks under the guard (fallback "full") and skips at once without it; the seen rows skip both ways
    # the unseen row thinks to the end under the guard (fallback "full") and stops at once without it
    assert guarded["per_category"]["unseen"]["think_tokens_mean"] == 16  # the prompt opened the thought
    assert unguarded["per_category"]["unseen"]["think_tokens_mean"] == 0
    assert guarded["per_category"]["seen"] == {k: v for k, v in unguarded["per_category"]["seen"].items()} | {
        "guard_fallback_rate": 0.0}
    assert parse_policy("effort:high+noguard").guard is False and parse_policy("effort:high").guard is None
    assert _family("effort:high+noguard") == "effort+noguard" and _family("effort:high") == "effort"
    from adaptive_think.bundled import probe_path

    shipped = Probe.from_pretrained(probe_path())
    assert _rung_of("effort:high+noguard", shipped)[0].name == "high" and _rung_of("effort:high+noguard", shipped)[1] is shipped
    with pytest.raises(ValueError, match=r"\+noguard turns a probe's guard off, so it applies to probe, effort"):
        parse_policy("budget:8+noguard")
