"""`adaptive-think doctor` and collect's fail-fast checks on scripted tiny models: one that never opens a
thought, one that thinks but answers in another format, one whose thoughts never close, one that works."""

import json
import re

import pytest

from adaptive_think import loading
from adaptive_think.cli import main
from adaptive_think.training import collect as collect_mod
from adaptive_think.training.collect import CollectConfig, CollectionUnusable, collect
from adaptive_think.training.items import Item, load_checker
from adaptive_think.training.health import KIND_THOUGHT
from adaptive_think.training.shards import load_records
from adaptive_think.training.train_config import TrainConfig
from adaptive_think.training.train import train_probe
from tiny import make_scripted, make_tokenizer

CFG = CollectConfig(every=2, batch_size=4, max_new_tokens=24, max_answer_tokens=8, shard_questions=4)


def items(n=12, offset=0):
    """Questions whose answer is their number (the scripted models answer it after a long enough thought)."""
    return [Item(f"q{i}", f"what is {i % 20}", str((i + offset) % 20)) for i in range(n)]


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    """Make `--model NAME` load a scripted model: NAME is its behaviour (see tiny.ScriptedLM)."""
    tok = make_tokenizer()

    def load(model, device="auto", dtype="auto", device_map=None):
        return make_scripted(model, tok), tok

    monkeypatch.setattr(loading, "load_model_and_tokenizer", load)
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"question": it.question, "answer": it.answer, "id": it.id}) + "\n"
                            for it in items(8)))
    return tok, str(path)


def doctor(capsys, *args):
    code = main(["doctor", *args])
    return code, capsys.readouterr().out


def row(out, name):
    return next(line.split() for line in out.splitlines() if line.strip().startswith(name))


def test_doctor_passes_a_model_that_works(scripted, capsys):
    _, questions = scripted
    code, out = doctor(capsys, "--model", "works", "--questions", questions)
    assert code == 0 and "verdict: ready" in out
    assert row(out, "opens a thought")[3:5] == ["ok", "4/4"]
    assert row(out, "closes it on its own")[5:7] == ["ok", "4/4;"]
    assert row(out, "checker reads answers")[3:6] == ["ok", "answer-is:", "8/8"]
    assert row(out, "accuracy, full thinking")[3:5] == ["ok", "4/4"]
    assert row(out, "accuracy, no thinking")[3:5] == ["info", "0/4"]  # an empty thought answers wrong
    assert "the checker read: '0' -> right" in out  # the first question is "what is 0"
    assert main(["doctor", "--model", "works", "--samples", "0"]) == 2
    assert "DoctorConfig.samples must be a positive integer, got 0" in capsys.readouterr().err


def test_doctor_prints_what_collecting_n_questions_costs_per_engine(scripted, capsys):
    _, questions = scripted
    code, out = doctor(capsys, "--model", "works", "--questions", questions, "--collect-n", "50")
    assert code == 0
    for engine in ("hf", "vllm"):
        line = next(l for l in out.splitlines() if l.strip().startswith(f"collect cost, {engine}"))
        assert line.split()[3:7] == ["info", "50", "questions", "in"] and "thoughts of 6 tokens" in line
        assert f"({engine} engine; " in line and "tokens generated" in line and "answer tokens" in line
    assert main(["doctor", "--model", "works", "--collect-n", "0"]) == 2
    assert "DoctorConfig.collect_n must be a positive integer, got 0" in capsys.readouterr().err


def test_doctor_fails_a_model_that_never_thinks(scripted, capsys):
    _, questions = scripted
    code, out = doctor(capsys, "--model", "no-think", "--questions", questions)
    assert code == 1 and "verdict: NOT READY: 2 check(s) fail" in out
    assert row(out, "opens a thought")[3:5] == ["FAIL", "0/4"]
    assert "- opens a thought: the model never wrote '<think>': pass the markers it really thinks" in out
    assert row(out, "accuracy, full thinking")[3:5] == ["FAIL", "0/4"]
    assert "- accuracy, full thinking: follows from the failing checks above" in out


def test_doctor_names_a_checker_that_reads_the_other_format(scripted, capsys):
    _, questions = scripted
    code, out = doctor(capsys, "--model", "other-format", "--questions", questions)
    assert code == 1
    assert row(out, "checker reads answers")[3:6] == ["FAIL", "answer-is:", "0/8"]
    assert "--checker last-number reads 8/8, 4 right" in out  # the full-thinking answers are the right ones
    assert "the checker read: nothing -> wrong" in out
    code, out = doctor(capsys, "--model", "other-format", "--questions", questions, "--checker", "last-number")
    assert code == 0 and row(out, "checker reads answers")[3:6] == ["ok", "last-number:", "8/8"]


def test_doctor_fails_thoughts_that_never_close(scripted, capsys):
    code, out = doctor(capsys, "--model", "never-closes", "--max-new-tokens", "20", "--samples", "2")
    assert code == 1
    assert row(out, "closes it on its own")[5:7] == ["FAIL", "0/2;"]
    assert "thoughts ran past --max-new-tokens 20: raise it" in out


def test_doctor_fails_wrong_reference_answers_and_missing_markers(scripted, capsys, monkeypatch, tmp_path):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text("".join(json.dumps({"question": it.question, "answer": it.answer}) + "\n" for it in items(4, 5)))
    code, out = doctor(capsys, "--model", "works", "--questions", str(wrong))
    assert code == 1 and row(out, "accuracy, full thinking")[3:5] == ["FAIL", "0/4"]
    assert "verdict: NOT READY: 1 check(s) fail" in out and "check the reference answers, the checker" in out
    tok = make_tokenizer(think_special=False)
    monkeypatch.setattr(loading, "load_model_and_tokenizer", lambda *a, **k: (make_scripted("works", make_tokenizer()), tok))
    code, out = doctor(capsys, "--model", "works")
    assert code == 1 and row(out, "think markers")[2:5] == ["FAIL", "not", "found"]
    assert "No think markers found" in out and "--think-tokens" in out


def test_collect_stops_after_the_first_batch(tmp_path, monkeypatch):
    tok = make_tokenizer()
    calls = []
    real = collect_mod.collect_batch
    monkeypatch.setattr(collect_mod, "collect_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    cases = [("no-think", items(), None, "no_thought", "no question opened a thought ('<think>' ... '</think>'"),
             ("other-format", items(), None, "no_parse", "the checker read no answer from any output"),
             ("works", items(offset=3), None, "none_right", "full thinking got no question right: the reference"),
             ("never-closes", items(), None, "none_right", "because no thought closed within --max-new-tokens 24")]
    for behaviour, qs, checker, key, cause in cases:
        calls.clear()
        lines = []
        with pytest.raises(CollectionUnusable) as err:
            collect(make_scripted(behaviour, tok), tok, qs, tmp_path / behaviour, load_checker(checker), CFG,
                    progress=False, log=lines.append, doctor="adaptive-think doctor --model M")
        assert err.value.key == key and cause in str(err.value), (behaviour, str(err.value))
        assert "adaptive-think doctor --model M" in str(err.value)
        assert len(calls) == 1 and not (tmp_path / behaviour / "index-r0.json").exists()  # nothing else spent
        assert lines[0].startswith("collect, first batch: 4 questions: opened a thought")


def test_collect_summarises_a_healthy_run(tmp_path):
    tok = make_tokenizer()
    lines = []
    summary = collect(make_scripted("works", tok), tok, items(), tmp_path, load_checker(None), CFG,
                      progress=False, log=lines.append)
    assert len(lines) == 3 and lines[1].startswith("collect, all collected: 12 questions: opened a thought 100%")
    assert lines[2].startswith("collect, cost: 12 questions in ") and "forced exits" in lines[2]
    thought_records = sum(r["kind"] == 1 for r in load_records(tmp_path))  # one forced exit each
    assert summary["cost"]["questions"] == 12 and summary["cost"]["forced_exits"] == thought_records > 12
    assert summary["health"] == {"questions": 12, "opened_rate": 1.0, "closed_rate": 1.0, "mean_thought_len": 6.0,
                                 "parse_rate": 1.0, "full_accuracy": 1.0, "nothink_accuracy": 0.0}


def test_collect_cli_names_the_doctor_command(scripted, capsys, tmp_path):
    _, questions = scripted
    code = main(["collect", "--model", "other-format", "--questions", questions, "--out", str(tmp_path / "c"),
                 "--batch-size", "4", "--max-new-tokens", "24"])
    err = capsys.readouterr().err
    assert code == 2 and "the checker read no answer" in err
    assert f"adaptive-think doctor --model other-format --questions {questions} --max-new-tokens 24" in err
    assert "the end of one raw output: '<think>waitcheckagainok" in err


def test_train_probe_says_why_there_are_too_few_checkpoints(tmp_path):
    tok = make_tokenizer()
    cfg = CollectConfig(**{**CFG.__dict__, "fail_fast": False})
    collect(make_scripted("no-think", tok), tok, items(24), tmp_path, load_checker(None), cfg, progress=False,
            log=lambda _: None)
    with pytest.raises(ValueError, match=r"too few thought checkpoints.*no question opened a thought.*more questions "
                                         r"will not help.*adaptive-think doctor"):
        train_probe(tmp_path, TrainConfig(epochs=2), log=lambda *_: None)


def right_or_wrong(text, answer):
    """A user's checker that only says right or wrong."""
    return f"answer is {answer}." in text


def test_no_think_prompt_for_templates_without_the_switch():
    from adaptive_think.markers import resolve_markers
    from adaptive_think.training.thoughts import no_think_prompt

    tok = make_tokenizer()
    m = resolve_markers(tok)
    assert no_think_prompt(tok, "what is 3", m) == "user: what is 3\nassistant:\n<think>\n\n</think>\n\n"  # its own
    tok.chat_template = "Q: {{ messages[0]['content'] }}\nA:"  # no enable_thinking: an empty block is appended
    assert no_think_prompt(tok, "what is 3", m) == "Q: what is 3\nA:<think>\n\n</think>\n\n"
    tok.chat_template = "Q: {{ messages[0]['content'] }}\nA: <think>"  # R1-style: the prompt opens the thought
    assert no_think_prompt(tok, "what is 3", m) == "Q: what is 3\nA: <think>\n</think>\n\n"
    tok.chat_template = None  # no template: the raw question
    assert no_think_prompt(tok, "what is 3", m, exit_text="\n") == "what is 3<think>\n\n</think>\n"


def test_doctor_on_an_r1_style_template_and_a_users_checker(scripted, capsys, monkeypatch):
    tok, questions = scripted
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:\n<think>\n"
    code, out = doctor(capsys, "--model", "works", "--questions", questions, "--checker", "test_doctor:right_or_wrong")
    assert code == 0, out
    assert "the prompt opens the thought (ends inside '<think>')" in out
    assert "the template has no enable_thinking switch; collect appends an empty think block" in out
    assert row(out, "checker reads answers")[3:5] == ["info", "test_doctor:right_or_wrong:"]
    assert "(this checker only says right or wrong) -> right" in out
    assert row(out, "accuracy, full thinking")[3:5] == ["ok", "4/4"]


def test_doctor_loads_a_saved_model_folder(tmp_path, capsys):
    from tiny import make_model

    tok = make_tokenizer()
    model = make_model("qwen3", len(tok))
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    code, out = doctor(capsys, "--model", str(tmp_path / "m"), "--samples", "2", "--max-new-tokens", "6")
    names = [m.group(1) for m in re.finditer(r"^  (\S.*?) +(?:ok|warn|FAIL|info)  ", out, re.M)]
    assert names[:4] == ["think markers", "thinking on", "thinking off", "opens a thought"]
    assert names[-2:] == ["accuracy, full thinking", "accuracy, no thinking"]
    assert code == (0 if "verdict: ready" in out else 1) and "verdict: " in out


def _pairwise_auroc(scores, labels):
    """AUROC by counting pairs (right above wrong, ties half): independent of training/metrics.py."""
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.slow
def test_doctor_reports_each_training_free_scores_auroc_on_the_bundled_reasoner(tmp_path, capsys):
    common = ["--model", "bundled", "--seed", "5", "--every", "8", "--max-new-tokens", "512",
              "--max-answer-tokens", "16", "--device", "cpu"]
    code, out = doctor(capsys, *common, "--samples", "3")
    assert code == 0
    # the same checkpoints, labelled by `collect` (one batch of the same three questions, no states)
    assert main(["collect", *common, "--n", "3", "--batch-size", "3", "--no-states", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    cps = [r for r in load_records(tmp_path) if r["kind"] == KIND_THOUGHT]
    labels = [bool(r["label"]) for r in cps]
    assert 0 < sum(labels) < len(labels)  # both classes: the AUROC is defined
    for kind, field in (("close-margin", "close_margin"), ("entropy", "entropy_score")):
        want = (f"AUROC {_pairwise_auroc([r[field] for r in cps], labels):.3f} at {len(cps)} checkpoints "
                f"({sum(labels)} right, {len(labels) - sum(labels)} wrong forced exits)")
        assert " ".join(row(out, f"score {kind}")[3:]) == want


def test_doctor_says_when_a_score_has_no_auroc():
    from adaptive_think.training.doctor import format_auroc

    nan = float("nan")
    assert format_auroc({"ready_auroc": nan, "checkpoints": 7, "right": 7, "wrong": 0}) == "n/a (all right) at 7 checkpoints"
    assert format_auroc({"ready_auroc": nan, "checkpoints": 5, "right": 0, "wrong": 5}) == "n/a (all wrong) at 5 checkpoints"
    assert format_auroc({"ready_auroc": nan, "checkpoints": 0, "right": 0, "wrong": 0}) == "n/a (no checkpoints labelled)"
