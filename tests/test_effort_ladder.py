"""Effort ladder: the probe file format (format 2, and format-1 files still load), rung selection by
`ThinkConfig(effort=...)`, its errors, and the default rung that meets the 0.5-point promise."""

import json
import warnings

import pytest

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.probe import Probe
from adaptive_think.probe.ladder import Rung, default_rung, parse_rungs
from adaptive_think.training.train_config import TrainConfig
from adaptive_think.training.splits import seen_questions
from tiny import make_model, make_tokenizer
from pipeline_helpers import R1_TEMPLATE

# "eager" stops at the first thinking step (ready >= 0), "never" neither stops nor skips
RUNGS = [Rung("never", 0.001, 0.1, 1.0, 2.0, {"achieved": {}}), Rung("eager", 0.5, 0.1, 0.0, 2.0, {"achieved": {}})]


@pytest.fixture(scope="module")
def model_tok():
    tok = make_tokenizer()
    tok.chat_template = R1_TEMPLATE
    return make_model("qwen3", len(tok)), tok


def _probe(model) -> Probe:
    probe = Probe.random_for(model, width=4)
    probe.set_ladder(RUNGS, "never")
    return probe


def test_ladder_round_trip(model_tok, tmp_path):
    model, _ = model_tok
    probe = _probe(model)
    assert (probe.ready_threshold, probe.skip_threshold) == (1.0, 2.0)  # the default rung's
    probe.save_pretrained(tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert cfg["format_version"] == 2 and cfg["default_effort"] == "never"
    assert [r["name"] for r in cfg["ladder"]] == ["never", "eager"]
    loaded = Probe.from_pretrained(tmp_path / "p")
    assert loaded.ladder == RUNGS and loaded.efforts == ["never", "eager"]
    assert loaded.thresholds("eager") == (0.0, 2.0) and loaded.thresholds() == (1.0, 2.0)


def test_format_1_probe_still_loads(model_tok, tmp_path):
    model, _ = model_tok
    probe = Probe.random_for(model, width=4)
    probe.ready_threshold, probe.skip_threshold = 0.7, 0.9
    probe.save_pretrained(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "probe.json").read_text())
    cfg["format_version"] = 1  # exactly what version 0.1 wrote: no ladder, no default effort
    del cfg["ladder"], cfg["default_effort"]
    (tmp_path / "old" / "probe.json").write_text(json.dumps(cfg))
    old = Probe.from_pretrained(tmp_path / "old")
    assert old.ladder == [] and old.thresholds() == (0.7, 0.9)
    with pytest.raises(ValueError, match="has no effort ladder|holds one calibrated point"):
        old.thresholds("high")
    cfg["format_version"] = 99
    (tmp_path / "old" / "probe.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format_version 99"):
        Probe.from_pretrained(tmp_path / "old")


def _ended_by(model, tok, probe, think):
    thinker = AdaptiveThinker(model, tok, probe=probe)
    batch = tok([tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                         tokenize=False)] * 2, return_tensors="pt", add_special_tokens=False)
    thinker.generate(**batch, max_new_tokens=6, do_sample=False, think=think)
    return [r.ended_by for r in thinker.last_reports]


def test_effort_picks_the_rung_and_thresholds_override(model_tok):
    model, tok = model_tok
    probe = _probe(model)
    base = dict(policy="probe", stop_at_boundary=False)
    assert _ended_by(model, tok, probe, ThinkConfig(**base, effort="eager")) == ["probe", "probe"]
    assert "probe" not in _ended_by(model, tok, probe, ThinkConfig(**base, effort="never"))
    assert "probe" not in _ended_by(model, tok, probe, ThinkConfig(**base))  # default rung: "never"
    # an explicit threshold overrides the rung's
    assert "probe" not in _ended_by(model, tok, probe, ThinkConfig(**base, effort="eager", threshold=1.0))


def test_effort_errors(model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="is not a rung of this probe; its rungs are"):
        _ended_by(model, tok, _probe(model), ThinkConfig(policy="probe", effort="turbo"))
    with pytest.raises(ValueError, match="holds one calibrated point"):
        _ended_by(model, tok, Probe.random_for(model, width=4), ThinkConfig(policy="probe", effort="high"))
    with pytest.raises(ValueError, match='only applies to policy="probe"'):
        ThinkConfig(policy="full", effort="high")
    with pytest.raises(ValueError, match="rung name"):
        ThinkConfig(policy="probe", effort="")
    with pytest.raises(ValueError, match="not one of its rungs"):
        Probe(**{**vars(Probe.random_for(model, width=4)), "ladder": RUNGS, "default_effort": "x"})


def test_rung_specs_and_default():
    assert parse_rungs(["low:0.05", "high:0.005:0.05"], 0.1) == [("high", 0.005, 0.05), ("low", 0.05, 0.1)]
    for bad, msg in [(["high"], "name:epsilon"), (["high:x"], "numbers"), (["high:1.5"], r"\(0, 1\)"),
                     (["a:0.1", "a:0.2"], "unique"), ([], "at least one rung")]:
        with pytest.raises(ValueError, match=msg):
            parse_rungs(bad, 0.1)
    rung = lambda n, e: Rung(n, e, 0.1, 0.9, 0.9)  # noqa: E731
    # the least conservative rung whose epsilon meets the 0.5-point promise
    assert default_rung([rung("high", 0.002), rung("mid", 0.005), rung("low", 0.05)]).name == "mid"
    assert default_rung([rung("a", 0.02), rung("b", 0.05)]).name == "a"  # none meets it: most conservative
    assert TrainConfig(epsilon=0.3, delta=0.2).rungs() == [("custom", 0.3, 0.2)]


def test_seen_questions_records_hashes_and_seeds():
    recs = [dict(qid="s11-0", qhash="aa"), dict(qid="s11-0", qhash="aa"), dict(qid="s11-1", qhash="bb"),
            dict(qid="s12-0", qhash="aa")]
    seen = seen_questions(recs)
    assert seen["sha256_16"] == ["aa", "bb"] and seen["n_questions"] == 3 and seen["n_distinct"] == 2
    assert seen["bundled_seeds"] == {"11": 2, "12": 1} and seen["complete"]
    assert not seen_questions([dict(qid="line1")])["complete"]


def test_per_row_efforts(model_tok):
    model, tok = model_tok
    probe = _probe(model)
    rows = [ThinkConfig(policy="probe", stop_at_boundary=False, effort=e) for e in ("eager", "never")]
    ended = _ended_by(model, tok, probe, rows)
    assert ended[0] == "probe" and ended[1] != "probe"
    with pytest.raises(ValueError, match="is not a rung of this probe"):
        _ended_by(model, tok, probe, [rows[0], ThinkConfig(policy="probe", effort="turbo")])


# "split": greedy stops at once (ready >= 0), sampled never stops (its calibration found no safe stop)
SPLIT = [Rung("split", 0.005, 0.1, 0.0, 2.0, {"achieved": {}}, by_decoding={"greedy": (0.0, 2.0), "sampled": (2.0, 2.0)})]


def test_each_decoding_takes_its_own_thresholds(model_tok, tmp_path):
    model, tok = model_tok
    probe = Probe.random_for(model, width=4)
    probe.set_ladder(SPLIT, "split")
    probe.save_pretrained(tmp_path / "p")
    loaded = Probe.from_pretrained(tmp_path / "p")
    assert loaded.ladder[0].by_decoding == {"greedy": (0.0, 2.0), "sampled": (2.0, 2.0)}
    assert loaded.thresholds("split", "sampled") == (2.0, 2.0) and loaded.thresholds("split") == (0.0, 2.0)
    thinker = AdaptiveThinker(model, tok, probe=loaded)
    batch = tok([tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                         tokenize=False)] * 2, return_tensors="pt", add_special_tokens=False)
    think = ThinkConfig(policy="probe", stop_at_boundary=False)

    def ended(**kw):
        thinker.generate(**batch, max_new_tokens=6, think=think, **kw)
        return [r.ended_by for r in thinker.last_reports]

    assert ended(do_sample=False) == ["probe", "probe"]
    assert "probe" not in ended(do_sample=True, temperature=0.6)  # the call samples: the sampled pair
    # a row's config may name the calibration; one batch may mix them
    rows = [ThinkConfig(policy="probe", stop_at_boundary=False, decoding=d) for d in ("sampled", "greedy")]
    thinker.generate(**batch, max_new_tokens=6, do_sample=False, think=rows)
    assert [r.ended_by for r in thinker.last_reports][1] == "probe" != thinker.last_reports[0].ended_by
    with pytest.raises(ValueError, match="decoding='beam' must be one of"):
        ThinkConfig(policy="probe", decoding="beam")
    with pytest.raises(ValueError, match='only applies to policy="probe"'):
        ThinkConfig(policy="budget", max_think_tokens=4, decoding="greedy")


def test_a_greedy_only_rung_warns_under_sampling(model_tok):
    model, _ = model_tok
    probe = _probe(model)
    with pytest.warns(UserWarning, match="calibrated on greedy decoding only"):
        assert probe.thresholds("eager", "sampled") == (0.0, 2.0)
    bad = {**Rung("x", 0.1, 0.1, 0.5, 0.5).to_dict(), "thresholds_by_decoding": {"beam": {"ready": 1, "skip": 1}}}
    with pytest.raises(ValueError, match="ladder rung is malformed.*beam"):
        Rung.from_dict(bad)


def test_sampling_unlike_the_calibration_warns(model_tok):
    model, tok = model_tok
    probe = Probe.random_for(model, width=4)
    probe.set_ladder(SPLIT, "split")
    probe.provenance["collections"] = [{"decoding": "greedy", "sampling": {}},
                                       {"decoding": "sampled", "sampling": {"do_sample": True, "temperature": 0.6,
                                                                            "top_p": 0.95}}]
    thinker = AdaptiveThinker(model, tok, probe=probe)
    batch = tok([tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                         tokenize=False)], return_tensors="pt", add_special_tokens=False)
    think = ThinkConfig(policy="probe", stop_at_boundary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as calibrated, or greedy: no warning
        thinker.generate(**batch, max_new_tokens=3, think=think, do_sample=True, temperature=0.6, top_p=0.95)
        thinker.generate(**batch, max_new_tokens=3, think=think, do_sample=False)
    with pytest.warns(UserWarning, match="not calibrated for these settings"):
        thinker.generate(**batch, max_new_tokens=3, think=think, do_sample=True, temperature=1.0)
