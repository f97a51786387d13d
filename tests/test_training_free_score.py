"""Training-free score files (close-margin, entropy): mixed batches on both engines, the score the controller
reads, the file's round trip and fingerprint check, and `calibrate-score` end to end on the bundled reasoner."""

import json
import math

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.controller.logit_score import close_margin
from adaptive_think.probe import Probe
from adaptive_think.probe.probe import CONFIG_NAME, WEIGHTS_NAME
from tiny import make_model, make_tokenizer

TOK = make_tokenizer()
MODEL = make_model("qwen3", len(TOK), seed=11)
PROMPTS = ["the answer is {open}\n", "check 3 , 4 and 5 again . so {open}\n", "x y", "x {open}\n so"]


def _batch(thinker):
    return TOK([p.format(open=thinker.markers.open_text) for p in PROMPTS * 2], return_tensors="pt", padding=True)


# explicit thresholds inside each score's range on the tiny random model (close-margin 0.6-1, entropy near 0.02),
# so which step a row stops at depends on the exact score
THRESHOLDS = {"close-margin": (0.9, 0.93, 0.85, 0.96, 0.85), "entropy": (0.0199, 0.02, 0.0201, 0.0202, 0.0199)}


def _configs(kind):
    """Every policy in one batch of 8 rows, with score rows at several explicit thresholds."""
    a, b, c, d, skip = THRESHOLDS[kind]
    return [ThinkConfig(policy="probe", threshold=a, min_think_tokens=1, stop_at_boundary=False),
            ThinkConfig(),
            ThinkConfig(policy="budget", max_think_tokens=3, exit_text="\n\n"),
            ThinkConfig(policy="none", exit_text="\n\n"),
            ThinkConfig(policy="probe", threshold=b, stop_at_boundary=False, skip_threshold=skip),
            ThinkConfig(policy="probe", threshold=c, smoothing=0.5, patience=2, stop_at_boundary=False),
            ThinkConfig(policy="budget", max_think_tokens=6),
            ThinkConfig(policy="probe", threshold=d, stop_at_boundary=False, max_think_tokens=9)]


@pytest.mark.parametrize("kind", ["close-margin", "entropy"])
@pytest.mark.parametrize("skip", [False, True], ids=["no-skip", "skip"])
def test_mixed_batch_is_identical_on_both_engines_and_each_row_gets_what_it_gets_alone(kind, skip):
    thinker = AdaptiveThinker(MODEL, TOK, probe=Probe.training_free(kind, MODEL, skip=skip))
    batch, configs = _batch(thinker), _configs(kind)
    runs = {}
    for engine in ("hf", "graph"):
        out = thinker.generate(**batch, think=configs, engine=engine, max_new_tokens=16, do_sample=False)
        runs[engine] = (out, [r.to_dict() for r in thinker.last_reports])
    assert torch.equal(runs["hf"][0], runs["graph"][0]) and runs["hf"][1] == runs["graph"][1]
    out, reports = runs["graph"]
    ended = {r["ended_by"] for r in reports}
    assert "probe" in ended  # the score did stop rows, beside the budget and skip rows
    stops = [r["decision_step"] for r, c in zip(reports, configs) if c.policy == "probe" and r["ended_by"] == "probe"]
    if kind == "close-margin":
        assert len(set(stops)) > 1  # rows stop at different steps: the thresholds meet the scores mid-thought
    for i, config in enumerate(configs):
        alone = thinker.generate(**batch, think=[config] * len(configs), engine="graph", max_new_tokens=16,
                                 do_sample=False)
        n = min(out.shape[1], alone.shape[1])
        assert torch.equal(out[i, :n], alone[i, :n]) and reports[i] == thinker.last_reports[i].to_dict()


def test_the_ready_score_is_close_margin_of_the_steps_logits():
    """A score row that never stops traces p(close) / p(top) of exactly the logits the model produced."""
    thinker = AdaptiveThinker(MODEL, TOK, probe="close-margin")  # uncalibrated: threshold given explicitly
    batch = _batch(thinker)
    out = thinker.generate(**batch, think=ThinkConfig(policy="probe", threshold=0.5, min_think_tokens=99, trace=True), max_new_tokens=8,
                           do_sample=False, output_scores=True, return_dict_in_generate=True)
    close = thinker.markers.close_ids[0]
    for t, logits in enumerate(out.scores):
        want = close_margin(logits, close)  # [B]
        got = torch.tensor([r.scores[t] for r in thinker.last_reports])
        first = t == 0  # step 0: the skip score, NaN without a skip score
        if first:
            assert torch.isnan(got).all()
        else:
            torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_an_uncalibrated_score_never_stops_without_an_explicit_threshold():
    thinker = AdaptiveThinker(MODEL, TOK, probe="close-margin")
    batch = _batch(thinker)
    thinker.generate(**batch, think=ThinkConfig(policy="probe"), max_new_tokens=16, do_sample=False)
    assert "probe" not in {r.ended_by for r in thinker.last_reports}


def test_score_file_round_trip_and_fingerprint_refusal(tmp_path):
    probe = Probe.training_free("entropy", MODEL, skip=True)
    probe.ready_threshold = 0.4
    probe.save_pretrained(tmp_path / "s")
    assert (tmp_path / "s" / CONFIG_NAME).is_file() and not (tmp_path / "s" / WEIGHTS_NAME).exists()
    back = Probe.from_pretrained(tmp_path / "s")
    assert back.config_dict() == probe.config_dict() and back.reads_logits and back.skip_kind == "entropy"
    cfg = json.loads((tmp_path / "s" / CONFIG_NAME).read_text())
    assert cfg["format_version"] == 4 and cfg["kind"] == "entropy"
    other = make_model("qwen3", len(TOK) + 8, seed=1)
    with pytest.raises(ValueError, match="calibrate-score") as err:
        AdaptiveThinker(other, TOK, probe=tmp_path / "s")
    assert "vocab_size" in str(err.value)
    with pytest.raises(ValueError, match="no weights"):
        Probe(layer=-1, kind="close-margin", weights={"mean": torch.zeros(2)}, fingerprint={})


@pytest.mark.slow
def test_calibrate_score_end_to_end_on_the_bundled_reasoner(tmp_path, capsys):
    from adaptive_think.cli import main
    from adaptive_think.loading import load_model_and_tokenizer

    out = tmp_path / "score"
    assert main(["calibrate-score", "--model", "bundled", "--n", "24", "--seed", "5", "--out", str(out),
                 "--efforts", "low:0.3", "--batch-size", "12", "--max-new-tokens", "160"]) == 0
    probe = Probe.from_pretrained(out)
    assert probe.kind == "close-margin" and probe.efforts == ["low"]
    assert probe.provenance["questions_seen"]["n_questions"] == 24
    assert (out / "collection" / "index-r0.json").is_file()
    assert not list((out / "collection").glob("*.safetensors")) or all(
        p.stat().st_size < 1024 for p in (out / "collection").glob("*.safetensors"))  # no hidden states stored
    records = json.loads(next((out / "collection").glob("shard-*.json")).read_text())
    assert all(0 <= r["close_margin"] <= 1 and 0 < r["entropy_score"] <= 1 for r in records)
    assert probe.provenance["score_config"]["strata"] == "none"
    # the calibration flags are honoured on existing collections too (--route is refused: nothing to route by)
    again = tmp_path / "again"
    assert main(["calibrate-score", "--model", "bundled", "--data", str(out / "collection"), "--out", str(again),
                 "--efforts", "low:0.3", "--strata", "level", "--patience", "sampled=2"]) == 0
    redone = Probe.from_pretrained(again)
    assert redone.provenance["score_config"]["strata"] == "level"
    assert redone.ladder[0].calibration["strata"]["by"] == "level"
    assert redone.policy_defaults["patience"] == {"greedy": 1, "sampled": 2}
    capsys.readouterr()
    assert main(["calibrate-score", "--model", "bundled", "--data", str(out / "collection"), "--out",
                 str(tmp_path / "r"), "--route", "level"]) == 2
    assert "no hidden states to route by" in capsys.readouterr().err
    model, tok = load_model_and_tokenizer("bundled", device="cpu")
    thinker = AdaptiveThinker(model, tok, probe=out)
    ids = tok(["<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"], return_tensors="pt")
    thinker.generate(**ids, think=ThinkConfig(policy="probe", effort="low"), max_new_tokens=40, do_sample=False)
    assert thinker.last_reports[0].think_tokens >= 0
