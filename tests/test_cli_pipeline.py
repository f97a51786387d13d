"""The probe pipeline end to end through the CLI on a tiny saved model and a JSONL question file."""

import json

from adaptive_think.cli import main
from tiny import make_model, make_tokenizer
from test_probe_pipeline import R1_TEMPLATE


def test_collect_train_eval_from_the_cli(tmp_path, capsys):
    tok = make_tokenizer()
    tok.chat_template = R1_TEMPLATE
    model = make_model("qwen3", len(tok))
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": f"the answer is {i}", "answer": str(i % 3), "level": 1 + i % 2})
                                 + "\n" for i in range(24)))
    checker = "test_probe_pipeline:checker"
    common = ["--model", str(tmp_path / "model"), "--questions", str(questions), "--checker", checker]
    assert main(["collect", *common, "--out", str(tmp_path / "c"), "--every", "3", "--batch-size", "8",
                 "--max-new-tokens", "10", "--max-answer-tokens", "3", "--no-fail-fast"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["questions"] == 24
    assert main(["train-probe", "--data", str(tmp_path / "c"), "--out", str(tmp_path / "p"), "--epochs", "20",
                 "--width", "8", "--epsilon", "0.3"]) == 0
    capsys.readouterr()
    assert main(["eval", *common, "--probe", str(tmp_path / "p"), "--policies", "full", "budget:3", "probe",
                 "--max-new-tokens", "10", "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert set(result["policies"]) == {"full", "budget:3", "probe"}
    assert result["policies"]["budget:3"]["think_tokens_mean"] <= 3


def test_cli_reports_bad_policy_before_loading(capsys):
    assert main(["eval", "--model", "/nowhere", "--policies", "budget"]) == 2
    assert "needs a cap" in capsys.readouterr().err
