"""Calibration by strata: a pair passes only if its test passes in every stratum; the strata are recorded and
reproduced by `calibrate`; the flags; the promise per stratum checked over many synthetic calibration sets."""

import json
import random

import pytest

from adaptive_think.cli import main
from adaptive_think.probe import Probe
from adaptive_think.training.calibrate import NEVER, calibrate, min_questions
from adaptive_think.training.splits import CALIB
from adaptive_think.training.calibrate_ladder import calibrate_ladder, recalibrate
from adaptive_think.training.collect import collect
from adaptive_think.training.items import Item, load_jsonl
from adaptive_think.training.metrics import binom_cdf
from adaptive_think.training.strata import Strata, parse_strata
from adaptive_think.training.train_config import TrainConfig
from adaptive_think.training.train import train_probe
from pipeline_helpers import CFG, checker

QUIET = dict(log=lambda *_: None)
EPS, DELTA = 0.05, 0.1


class _Holder:
    """Stands in for a Probe: calibrate_ladder only installs the ladder."""

    def set_ladder(self, rungs, default):
        self.ladder, self.default = rungs, default


def _questions(n_right, n_wrong, level, length, part, tag=""):
    """Questions never skipped whose one step boundary (ready score 0.8) stops right or wrong."""
    records, ready = [], []
    for q in range(n_right + n_wrong):
        base = dict(qid=f"{part}{tag}{level}-{q}", full_correct=True, nothink_correct=False, thought_len=length,
                    level=level)
        records += [dict(base, kind=0, pos=0, label=False, boundary=False),
                    dict(base, kind=1, pos=length // 2, label=q < n_right, boundary=True)]
        ready += [float("nan"), 0.8]
    return records, ready, [part] * len(records)


def _pooled_passes_one_stratum_fails():
    """Two levels of 200 calibration questions: level 1 loses nothing at the 0.8 stop, level 2 loses k, where k of
    the pooled 400 passes the test and k of level 2's 200 does not."""
    n = 200
    k = max(k for k in range(n) if binom_cdf(k, 2 * n, EPS) <= DELTA)
    assert binom_cdf(k, n, EPS) > DELTA  # the built case: only the pooled test accepts the pair
    records, ready, part = [], [], []
    for args in ((60, 0, 1, 20, "train"), (60, 0, 2, 80, "train"), (n, 0, 1, 20, CALIB), (n - k, k, 2, 80, CALIB)):
        r, s, p = _questions(*args)
        records += r
        ready += s
        part += p
    return records, ready, part, k


@pytest.mark.parametrize("strata", ["none", "level", "length:2"])
def test_a_pair_the_pooled_test_accepts_fails_in_one_stratum(strata):
    records, ready, part, k = _pooled_passes_one_stratum_fails()
    holder = _Holder()
    calibrate_ladder(holder, records, ready, [float("nan")] * len(records), part, [("low", EPS, DELTA)],
                     skip_share=0.0, strata=strata, **QUIET)
    cal = holder.ladder[0].calibration
    got = cal["by_decoding"]["greedy"]
    if strata == "none":
        assert got["ready_threshold"] <= 0.8 and got["achieved"]["accuracy_lost"] == k / 400
        assert "strata" not in got and cal["strata"] == {"by": "none", "spec": "none"}
        return
    # the stratified test stops before the first pair that stops at 0.8: level 2 (the long thoughts) rejects it
    assert got["ready_threshold"] > 0.8 and got["achieved"]["accuracy_lost"] == 0.0
    rep = got["strata"]
    second = "level 2" if strata == "level" else "length bin 2 [80, inf)"
    assert rep["stopped_by"] == second and rep["sizes"] == {"level 1" if strata == "level" else "length bin 1 [0, 80)":
                                                            200, second: 200}
    assert rep["too_small"] == [] and rep["min_questions"] == min_questions(EPS, DELTA)
    assert got["path_tail"][-1]["by_stratum"][second]["losses"] == k
    assert cal["strata"]["by"] == strata.split(":")[0]
    if strata == "length:2":  # the cut point comes from the training questions' thought lengths
        assert cal["strata"]["cuts"] == [80]


def test_a_stratum_too_small_is_reported_and_tested_with_the_other_small_ones(capsys):
    records, ready, part, k = _pooled_passes_one_stratum_fails()
    need = min_questions(EPS, DELTA)
    for level in (3, 4):  # two levels too small alone, enough together
        r, s, p = _questions(need - 10, 0, level, 20, CALIB)
        records += r
        ready += s
        part += p
    holder = _Holder()
    calibrate_ladder(holder, records, ready, [float("nan")] * len(records), part, [("low", EPS, DELTA)],
                     skip_share=0.0, strata="level", log=print)
    rep = holder.ladder[0].calibration["by_decoding"]["greedy"]["strata"]
    assert rep["too_small"] == ["level 3", "level 4"] and rep["tested_together"] == ["level 3", "level 4"]
    assert rep["not_covered"] == [] and set(rep["achieved"]) == {"level 1", "level 2", "level 3", "level 4"}
    assert set(holder.ladder[0].calibration["by_decoding"]["greedy"]["path_tail"][0]["by_stratum"]) == {
        "level 1", "level 2", "together: level 3, level 4"}
    assert "WARNING: level 3, level 4: fewer than the" in capsys.readouterr().out
    # one small level alone: too few even together, so not covered (and said so), the others still tested
    records = [r for r in records if r["level"] != 4]
    holder = _Holder()
    calibrate_ladder(holder, records, ready[:len(records)], [float("nan")] * len(records), part[:len(records)],
                     [("low", EPS, DELTA)], skip_share=0.0, strata="level", log=print)
    rep = holder.ladder[0].calibration["by_decoding"]["greedy"]["strata"]
    assert rep["not_covered"] == ["level 3"] and rep["tested_together"] == []
    assert "NOT COVERED" in capsys.readouterr().out


def _true_risk(scale, t):
    # score s ~ U(0, 1), a stop at s is wrong with probability scale (1 - s): P(s >= t, wrong) = scale (1 - t)^2 / 2
    return scale * (1 - t) ** 2 / 2 if t <= 1 else 0.0


def test_every_stratum_keeps_the_promise_at_the_same_delta_over_many_calibration_sets():
    """An easy and a hard stratum, half the questions each: the pooled calibration breaks the hard stratum's
    promise almost always; the stratified one (each stratum at delta, no split) in at most a delta fraction."""
    eps, delta, n, trials = 0.02, 0.1, 300, 100
    scales = {1: 0.02, 2: 0.3}
    rng = random.Random(0)
    fails = {"none": 0, "level": 0}
    for _ in range(trials):
        records, ready = [], []
        for level, scale in scales.items():
            for q in range(n):
                s = rng.random()
                base = dict(qid=f"{level}-{q}", full_correct=True, nothink_correct=False, thought_len=50, level=level)
                records += [dict(base, kind=0, pos=0, label=False, boundary=False),
                            dict(base, kind=1, pos=10, label=rng.random() >= scale * (1 - s), boundary=True)]
                ready += [0.0, s]
        skip = [float("nan")] * len(records)
        for strata in fails:
            t = calibrate(records, ready, skip, [True] * len(records), eps, delta, strata=strata)["ready_threshold"]
            fails[strata] += any(_true_risk(scale, t) > eps for scale in scales.values())
    limit = next(k for k in range(trials + 1) if 1 - binom_cdf(k, trials, delta) <= 1e-3)
    assert fails["level"] <= limit
    assert fails["none"] > limit  # the check has teeth: the pooled test's pair loses too much on the hard level


def test_strata_specs():
    assert parse_strata("length:4") == Strata("length", 4) and parse_strata(None) == Strata()
    for bad in ("levels", "length", "length:1", "length:x", "none:2", "category:3"):
        with pytest.raises(ValueError, match="--strata"):
            parse_strata(bad)
    # equal cut points merge: most thoughts run to the same cap
    fitted = Strata("length", 4).fit([{"length": v} for v in [10, 20] + [100] * 8])
    assert fitted.cuts == (100,) and fitted.label({"length": 99}) == "length bin 1 [0, 100)"
    with pytest.raises(ValueError, match="carry no level"):
        Strata("level").check([{"level": 0}, {"level": 0}])
    with pytest.raises(ValueError, match="1 of 2 calibration questions carry no category"):
        Strata("category").check([{"category": "algebra"}, {"category": None}])


def test_question_files_carry_a_category(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"question": "a", "answer": "1", "category": "geometry"}) + "\n"
                 + json.dumps({"question": "b", "answer": "1"}) + "\n")
    assert [it.category for it in load_jsonl(p)] == ["geometry", ""]
    p.write_text(json.dumps({"question": "a", "answer": "1", "category": ["x"]}) + "\n")
    with pytest.raises(ValueError, match='"category" must be a string'):
        load_jsonl(p)


@pytest.fixture(scope="module")
def leveled(pipeline_setup, tmp_path_factory):
    """A tiny collection whose questions have levels 1 and 2 and categories."""
    tok, model, items = pipeline_setup
    root = tmp_path_factory.mktemp("strata")
    items = [Item(it.id, it.question, it.answer, level=1 + i % 2, category="ab"[i % 2]) for i, it in enumerate(items)]
    collect(model, tok, items, root / "g", checker, CFG, progress=False)
    return root / "g"


def test_strata_recorded_and_reproduced_by_calibrate(leveled, tmp_path, capsys):
    cfg = TrainConfig(seed=1, epochs=20, width=4, efforts=("high:0.4:0.3", "low:0.6:0.3"), calib_fraction=0.5,
                      strata="level")
    probe = train_probe(leveled, cfg, **QUIET)
    assert probe.provenance["train_config"]["strata"] == "level"
    for r in probe.ladder:
        assert r.calibration["strata"] == {"by": "level", "spec": "level"}
        assert set(r.calibration["by_decoding"]["greedy"]["strata"]["sizes"]) == {"level 1", "level 2"}
    probe.save_pretrained(tmp_path / "p")
    # the same collections, no --strata: the probe's own strata, the same ladder
    again = recalibrate(Probe.from_pretrained(tmp_path / "p"), [leveled], **QUIET)
    assert [r.to_dict() for r in again.ladder] == [r.to_dict() for r in probe.ladder]
    assert again.provenance["train_config"]["strata"] == "level"
    # from the command line, with other strata: recorded in the new probe
    args = ["calibrate", "--probe", str(tmp_path / "p"), "--data", str(leveled), "--out", str(tmp_path / "q")]
    assert main(args + ["--strata", "category"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ladder"]["high"]["strata"] == {"by": "category", "spec": "category"}
    saved = Probe.from_pretrained(tmp_path / "q")
    assert saved.provenance["train_config"]["strata"] == "category"
    assert set(saved.ladder[0].calibration["by_decoding"]["greedy"]["strata"]["sizes"]) == {"category a", "category b"}
    # and back to today's calibration
    assert main(args[:-1] + [str(tmp_path / "r"), "--strata", "none"]) == 0
    capsys.readouterr()
    plain = Probe.from_pretrained(tmp_path / "r")
    assert plain.provenance["train_config"]["strata"] == "none"
    assert "strata" not in plain.ladder[0].calibration["by_decoding"]["greedy"]


def test_strata_flags(leveled, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train-probe", "--data", str(leveled), "--out", str(tmp_path / "p"), "--strata", "length:1"])
    assert "K must be a whole number >= 2" in capsys.readouterr().err
    assert main(["train-probe", "--data", str(leveled), "--out", str(tmp_path / "p"), "--epochs", "5", "--width", "4",
                 "--epsilon", "0.5", "--delta", "0.3", "--calib-fraction", "0.5", "--strata", "length:3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ladder"]["custom"]["strata"]["spec"] == "length:3"
    assert Probe.from_pretrained(tmp_path / "p").provenance["train_config"]["strata"] == "length:3"


def test_never_is_kept_when_no_stratum_can_be_tested():
    records, ready, _ = _questions(5, 0, 1, 20, CALIB)
    got = calibrate(records, ready, [float("nan")] * len(records), [True] * len(records), EPS, DELTA, strata="level")
    assert (got["ready_threshold"], got["skip_threshold"]) == (NEVER, NEVER)
    assert got["by_decoding"]["greedy"]["strata"]["not_covered"] == ["level 1"]


def test_path_cost_is_recorded_and_a_probe_without_one_recalibrates_on_the_pooled_path(leveled, tmp_path, capsys):
    cfg = TrainConfig(seed=1, epochs=20, width=4, efforts=("high:0.4:0.3", "low:0.6:0.3"), calib_fraction=0.5,
                      strata="level", path_cost="pooled")
    pooled = train_probe(leveled, cfg, **QUIET)
    assert pooled.provenance["train_config"]["path_cost"] == "pooled"
    # an older probe records no path_cost: it was calibrated on the pooled path, and recalibrating reproduces it
    pooled.provenance["train_config"].pop("path_cost")
    pooled.save_pretrained(tmp_path / "old")
    again = recalibrate(Probe.from_pretrained(tmp_path / "old"), [leveled], **QUIET)
    assert [r.to_dict() for r in again.ladder] == [r.to_dict() for r in pooled.ladder]
    assert again.provenance["train_config"]["path_cost"] == "pooled"
    # --path-cost on the command line replaces it and is recorded
    args = ["calibrate", "--probe", str(tmp_path / "old"), "--data", str(leveled), "--out", str(tmp_path / "new")]
    assert main(args + ["--path-cost", "per-stratum"]) == 0
    capsys.readouterr()
    assert Probe.from_pretrained(tmp_path / "new").provenance["train_config"]["path_cost"] == "per-stratum"
    with pytest.raises(ValueError, match="path_cost"):
        TrainConfig(path_cost="cheapest").rungs()
