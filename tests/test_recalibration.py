"""Calibration-only collections (`train-probe --calib-data`), re-calibrating a trained probe without touching its
heads (`adaptive-think calibrate`), and the family-wise delta shared by a ladder's rungs and decoding modes."""

import json
import math

import pytest

from adaptive_think.cli import main
from adaptive_think.probe import Probe
from adaptive_think.training.splits import CALIB, DROPPED, assign_parts
from adaptive_think.training.calibrate_ladder import calibrate_ladder, recalibrate
from adaptive_think.training.collect import collect
from adaptive_think.training.items import Item, question_hash
from adaptive_think.training.metrics import binom_cdf
from adaptive_think.training.train_config import TrainConfig
from adaptive_think.training.splits import split_questions
from adaptive_think.training.train import train_probe
from pipeline_helpers import CFG, checker

QUIET = dict(log=lambda *_: None)


class _Holder:
    """Stands in for a Probe: calibrate_ladder only installs the ladder."""

    def set_ladder(self, rungs, default):
        self.ladder, self.default = rungs, default


def _records(decoding, n_right, n_wrong, part):
    """n questions never skipped whose one step boundary (score 0.8) stops right or wrong; thought 50 tokens."""
    records, ready, parts = [], [], []
    for q in range(n_right + n_wrong):
        base = dict(qid=f"{part}{q}", decoding=decoding, full_correct=True, nothink_correct=False, thought_len=50,
                    level=3)
        records += [dict(base, kind=0, pos=0, label=False, boundary=False),
                    dict(base, kind=1, pos=10, label=q < n_right, boundary=True)]
        ready += [float("nan"), 0.8]
        parts += [part, part]
    return records, ready, parts


def _k_between(n, eps, low, high):
    """Losses k whose binomial p-value lies in (low, high]: a test at `high` passes, one at `low` fails."""
    return next(k for k in range(n) if low < binom_cdf(k, n, eps) <= high)


@pytest.mark.parametrize("family_wise", [True, False])
def test_family_wise_delta_splits_delta_over_rungs_and_decodings(family_wise):
    n, eps, delta = 400, 0.05, 0.2
    k = _k_between(n, eps, delta / 4, delta)  # passes at delta, fails at delta / (2 rungs x 2 decodings)
    records, ready, part = [], [], []
    for mode in ("greedy", "sampled"):
        for r, s, p in (_records(mode, 200, 0, "train"), _records(mode, n - k, k, CALIB)):
            records += r
            ready += s
            part += p
    holder = _Holder()
    calibrate_ladder(holder, records, ready, [float("nan")] * len(records), part,
                     [("high", 0.01, delta), ("low", eps, delta)], skip_share=0.0, family_wise=family_wise, **QUIET)
    low = holder.ladder[1]
    fam = low.calibration["family"]
    assert fam == {"family_wise": family_wise, "tests": 4 if family_wise else 1, "delta": delta,
                   "delta_per_test": delta / 4 if family_wise else delta}
    assert low.calibration["delta"] == fam["delta_per_test"] and low.delta == delta
    for mode in ("greedy", "sampled"):
        got = low.calibration["by_decoding"][mode]
        # the pair at 0.8 loses k of n: only the per-rung test accepts it
        assert (got["ready_threshold"] <= 0.8) is (not family_wise)
        assert got["achieved"]["accuracy_lost"] == (0.0 if family_wise else k / n)


def test_calibration_only_questions_are_calibration_unless_trained_on():
    recs = [dict(qid="a", qhash="h1", source=0), dict(qid="b", qhash="h2", source=0), dict(qid="c", qhash="h3", source=0),
            dict(qid="x", qhash="h1", source=1), dict(qid="y", qhash="h3", source=1), dict(qid="z", qhash="h9", source=1)]
    split = {"h1": "train", "h2": "val", "h3": "calib"}
    assert assign_parts(recs, 1, split) == ["train", "val", "calib", DROPPED, CALIB, CALIB]


@pytest.fixture(scope="module")
def collections(pipeline_setup, tmp_path_factory):
    tok, model, items = pipeline_setup
    root = tmp_path_factory.mktemp("recal")
    collect(model, tok, items, root / "g", checker, CFG, progress=False)
    # calibration-only: 10 new questions and the 20 distinct texts of the training collection drawn again
    extra = [Item(f"c{i}", f"what is {i} plus one", str(i % 7)) for i in range(10)]
    extra += [Item(f"d{i}", it.question, it.answer) for i, it in enumerate(items[:20])]
    collect(model, tok, extra, root / "c", checker, CFG, progress=False)
    return root, items, extra


def test_train_probe_with_calibration_only_data_and_recalibrate_reproduces_it(collections, tmp_path):
    root, items, extra = collections
    cfg = TrainConfig(seed=1, epochs=20, width=4, efforts=("high:0.3:0.3", "low:0.5:0.3"), calib_fraction=0.35)
    probe = train_probe(root / "g", cfg, calib_data=[root / "c"], **QUIET)
    split = split_questions([question_hash(it.question) for it in items], 1, cfg.val_fraction, cfg.calib_fraction)
    in_training = sum(split.get(question_hash(it.question)) in ("train", "val") for it in extra)
    only = probe.provenance["calibration_only"]
    assert only["questions"] == 30 and only["dropped_seen_in_training"] == in_training
    assert [c["role"] for c in probe.provenance["collections"]] == ["training", "calibration only"]
    # calibration questions: the training collection's calibration split plus the extra ones not trained on
    n_cal = sum(split[question_hash(it.question)] == "calib" for it in items) + 30 - in_training
    assert all(r.calibration["n_questions"] == n_cal for r in probe.ladder)
    # eval leaves out every question the probe was calibrated on
    seen = set(probe.provenance["questions_seen"]["sha256_16"])
    assert {question_hash(it.question) for it in extra} <= seen
    # the heads never see calibration-only questions: the same weights as without them
    plain = train_probe(root / "g", cfg, **QUIET)
    for k, w in plain.weights.items():
        assert probe.weights[k].equal(w), k
    probe.save_pretrained(tmp_path / "p")

    # re-calibrating the saved probe on the same collections gives the same ladder, heads untouched
    again = recalibrate(Probe.from_pretrained(tmp_path / "p"), [root / "g"], [root / "c"], **QUIET)
    assert [r.to_dict() for r in again.ladder] == [r.to_dict() for r in probe.ladder]
    assert again.provenance["recalibrations"][-1]["calib_data"] == [str(root / "c")]
    # without the extra collection: fewer calibration questions, and they are no longer recorded as seen
    alone = recalibrate(Probe.from_pretrained(tmp_path / "p"), [root / "g"], **QUIET)
    assert alone.ladder[0].calibration["n_questions"] == n_cal - (30 - in_training)
    assert "calibration_only" not in alone.provenance
    assert question_hash(extra[0].question) not in set(alone.provenance["questions_seen"]["sha256_16"])
    # other collections than the training ones would mislabel trained questions as calibration ones
    with pytest.raises(ValueError, match="give exactly the collections it was trained on"):
        recalibrate(Probe.from_pretrained(tmp_path / "p"), [root / "c"], **QUIET)


def test_calibrate_command(collections, tmp_path, capsys):
    root, _, _ = collections
    probe = train_probe(root / "g", TrainConfig(seed=1, epochs=20, width=4, efforts=("high:0.3:0.3",)), **QUIET)
    probe.save_pretrained(tmp_path / "p")
    args = ["calibrate", "--probe", str(tmp_path / "p"), "--data", str(root / "g"), "--calib-data", str(root / "c")]
    assert main(args + ["--out", str(tmp_path / "p")]) == 2
    assert "the probe's own folder" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "q"), "--efforts", "a:0.2", "b:0.4", "--per-rung-delta"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(out["ladder"]) == ["a", "b"] and out["ladder"]["a"]["family"]["tests"] == 1
    saved = Probe.from_pretrained(tmp_path / "q")
    assert saved.efforts == ["a", "b"] and saved.provenance["train_config"]["family_wise"] is False
    assert math.isclose(saved.ladder[0].delta, 0.1)  # --delta's default: the probe's own
    for k, w in probe.weights.items():
        assert saved.weights[k].equal(w)
    assert saved.policy_defaults["patience"] == {"greedy": 1, "sampled": 1}
    # a patience travels with the probe, and a later calibrate without --patience keeps it
    assert main(args + ["--out", str(tmp_path / "w"), "--patience", "greedy=2"]) == 0
    waits = Probe.from_pretrained(tmp_path / "w")
    assert waits.policy_defaults["patience"] == {"greedy": 2, "sampled": 1}
    assert waits.provenance["train_config"]["patience"] == "greedy=2,sampled=1"
    assert json.loads((tmp_path / "w" / "probe.json").read_text())["format_version"] == 8
    assert main(["calibrate", "--probe", str(tmp_path / "w"), "--data", str(root / "g"), "--out", str(tmp_path / "k")]) == 0
    assert Probe.from_pretrained(tmp_path / "k").policy_defaults["patience"] == {"greedy": 2, "sampled": 1}
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "bad"), "--patience", "beam=2"])
    assert "unknown decoding 'beam'" in capsys.readouterr().err


def test_train_probe_with_a_route_and_recalibrate_without_it(pipeline_setup, tmp_path):
    """train-probe --route category on two categories: a route of both, each rung's pairs per category, kept by the
    probe file; calibrate --route none drops both; a collection without categories is refused with the reason."""
    tok, model, _ = pipeline_setup
    items = [Item(f"r{i}", (f"the answer is {i % 20}" if i % 2 else f"x y x y {i % 20} ."), str(i % 7),
                  category="ab"[i % 2]) for i in range(60)]
    collect(model, tok, items, tmp_path / "g", checker, CFG, progress=False)
    cfg = TrainConfig(seed=1, epochs=20, width=4, efforts=("high:0.3:0.3",), calib_fraction=0.4, strata="category",
                      route="category")
    probe = train_probe(tmp_path / "g", cfg, **QUIET)
    assert probe.route.groups == ["a", "b"] and set(probe.ladder[0].by_group) == {"a", "b"}
    assert probe.ladder[0].calibration["route"]["groups"] == ["a", "b"]
    probe.save_pretrained(tmp_path / "p")
    back = Probe.from_pretrained(tmp_path / "p")
    assert back.group_thresholds("high") == probe.group_thresholds("high")
    plain = recalibrate(back, [tmp_path / "g"], route="none", **QUIET)
    assert plain.route is None and not plain.ladder[0].by_group and plain.group_thresholds("high") is None
    untagged = [Item(f"u{i}", f"the answer is {i}", str(i % 7)) for i in range(24)]  # no category
    collect(model, tok, untagged, tmp_path / "u", checker, CFG, progress=False)
    with pytest.raises(ValueError, match="carries no 'category'"):
        train_probe(tmp_path / "u", TrainConfig(seed=1, epochs=20, width=4, efforts=("high:0.3:0.3",),
                                                route="category"), **QUIET)
