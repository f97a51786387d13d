"""The probe pipeline end to end through the CLI on a tiny saved model and a JSONL question file."""

import json

from adaptive_think.cli import main
from tiny import make_model, make_tokenizer
from pipeline_helpers import R1_TEMPLATE


def test_collect_train_eval_from_the_cli(tmp_path, capsys):
    tok = make_tokenizer()
    tok.chat_template = R1_TEMPLATE
    model = make_model("qwen3", len(tok))
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": f"the answer is {i}", "answer": str(i % 3), "level": 1 + i % 2})
                                 + "\n" for i in range(24)))
    checker = "pipeline_helpers:checker"
    common = ["--model", str(tmp_path / "model"), "--questions", str(questions), "--checker", checker]
    assert main(["collect", *common, "--out", str(tmp_path / "c"), "--every", "3", "--batch-size", "8",
                 "--max-new-tokens", "10", "--max-answer-tokens", "3", "--no-fail-fast"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["questions"] == 24
    assert main(["train-probe", "--data", str(tmp_path / "c"), "--out", str(tmp_path / "p"), "--epochs", "20",
                 "--width", "8", "--epsilon", "0.3"]) == 0
    capsys.readouterr()
    # 3 of these 9 questions were collected on: left out by default, and said so
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"question": f"the answer is {i}", "answer": str(i % 3), "level": 1 + i % 2})
                            + "\n" for i in range(21, 30)))
    common = ["--model", str(tmp_path / "model"), "--questions", str(held), "--checker", checker]
    assert main(["eval", *common, "--probe", str(tmp_path / "p"), "--policies", "full", "budget:3", "effort:custom",
                 "oracle", "--max-new-tokens", "10", "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert set(result["policies"]) == {"full", "budget:3", "effort:custom", "oracle"}
    assert result["policies"]["budget:3"]["think_tokens_mean"] <= 3
    assert result["n"] == 6 and result["held_out"]["excluded"] == 3 and result["held_out"]["excluded_per_level"] == {
        "1": 1, "2": 2}
    assert set(result["oracle_share"]) == {"effort:custom"}


def test_cli_reports_bad_policy_before_loading(capsys):
    assert main(["eval", "--model", "/nowhere", "--policies", "budget"]) == 2
    assert "needs a cap" in capsys.readouterr().err
    assert main(["eval", "--model", "/nowhere", "--temperature", "0.6"]) == 2
    assert "only apply with --do-sample" in capsys.readouterr().err
    assert main(["eval", "--model", "/nowhere", "--do-sample", "--top-p", "1.5"]) == 2
    assert "--top-p must lie in (0, 1]" in capsys.readouterr().err


def test_eval_checks_policies_before_generating(tmp_path, capsys, monkeypatch):
    import adaptive_think.evaluation.run as run_mod
    from adaptive_think.probe import Probe
    from adaptive_think.probe.ladder import Rung

    tok = make_tokenizer()
    tok.chat_template = R1_TEMPLATE
    model = make_model("qwen3", len(tok))
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    probe = Probe.random_for(model, width=4)
    probe.set_ladder([Rung("high", 0.005, 0.1, 0.9, 0.9)], "high")
    probe.save_pretrained(tmp_path / "p")
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": f"q {i}", "answer": "1"}) + "\n" for i in range(3)))
    ran = []

    def fake_evaluate(ev, policies, log=print):
        ran.extend(policies)
        row = dict(accuracy=1.0, think_tokens_mean=10.0, forward_tokens_mean=12.0, skip_rate=0.0, wall_s=0.0,
                   per_level={"0": dict(n=3, accuracy=1.0, think_tokens_mean=10.0, forward_tokens_mean=12.0, skip_rate=0.0)})
        return {p: row for p in policies}

    monkeypatch.setattr(run_mod, "evaluate", fake_evaluate)
    common = ["eval", "--model", str(tmp_path / "model"), "--questions", str(questions), "--probe", str(tmp_path / "p")]
    # explicit policies that cannot run on a JSONL set: refused, all named at once, before anything runs
    assert main([*common, "--policies", "full", "marker", "effort:low", "effort:high"]) == 2
    err = capsys.readouterr().err
    assert "marker: needs the task's answer pattern" in err and "effort:low: the probe has no rung 'low'" in err
    assert ran == []
    # the default sweep leaves out what does not apply and says so
    assert main(common) == 0
    out = capsys.readouterr().out
    assert "left out of the default sweep: marker" in out
    assert "marker" not in ran and {"full", "effort:high", "router", "consistency:3", "oracle"} <= set(ran)
