"""A probe's route: each group of questions gets thresholds of its own, fitted and calibrated per group, kept in
the probe file, and resolved per row."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from adaptive_think import ThinkConfig
from adaptive_think.controller.params import NEVER, resolve_config
from adaptive_think.probe import Probe
from adaptive_think.probe.ladder import Rung
from adaptive_think.probe.route import Route
from adaptive_think.training.calibrate_ladder import calibrate_ladder
from adaptive_think.training.route import fit_route, route_groups
from adaptive_think.training.splits import CALIB, TRAIN, VAL
from tiny import make_model, make_tokenizer

MODEL = make_model("qwen3", len(make_tokenizer()), seed=2)


def _question_records(qid, category, early_right, decoding="greedy"):
    """One question of 100 thought tokens: a boundary at 30 (right or wrong) and a right one at 60."""
    base = {"qid": qid, "source": 0, "category": category, "decoding": decoding, "full_correct": True,
            "nothink_correct": False, "thought_len": 100, "level": 1}
    return [{**base, "kind": 0, "pos": 0, "boundary": False, "label": False},
            {**base, "kind": 1, "pos": 30, "boundary": True, "label": early_right},
            {**base, "kind": 1, "pos": 60, "boundary": True, "label": True}]


def _calibration_set(n=1200):
    """`easy` questions are settled at 30 (score 0.5 there); `hard` ones are not, and one in four scores its wrong
    early stop 0.9 (the rest 0.2)."""
    records, ready, skip, part, groups = [], [], [], [], []
    for i in range(n):
        category = "easy" if i % 2 == 0 else "hard"
        early = 0.5 if category == "easy" else (0.9 if i % 8 == 1 else 0.2)
        records += _question_records(f"q{i}", category, category == "easy")
        ready += [float("nan"), early, 0.95]
        skip += [0.0, float("nan"), float("nan")]
        p = TRAIN if i % 3 == 0 else CALIB
        part += [p] * 3
        groups += [0 if category == "easy" else 1] * 3
    return records, ready, skip, part, groups


class _Probe:
    """The two things calibrate_ladder needs of a probe."""

    def __init__(self, groups):
        self.route = SimpleNamespace(groups=groups, by="category")

    def set_ladder(self, ladder, default):
        self.ladder, self.default = ladder, default


def test_each_group_gets_its_own_thresholds_and_keeps_its_promise():
    records, ready, skip, part, groups = _calibration_set()
    probe = _Probe(["easy", "hard"])
    calibrate_ladder(probe, records, ready, skip, part, [("high", 0.01, 0.1)], 0.0, False, lambda m: None,
                     "category", groups=groups)
    rung = probe.ladder[0]
    easy, hard = rung.by_group["easy"]["greedy"], rung.by_group["hard"]["greedy"]
    assert easy[0] <= 0.5  # an easy question may stop at its first boundary
    assert 0.9 < hard[0] <= 0.95  # a hard question must wait past its wrong stops
    assert (rung.ready_threshold, rung.skip_threshold) == (max(easy[0], hard[0]), max(easy[1], hard[1]))
    for g in ("easy", "hard"):
        got = rung.calibration["by_group"][g]["by_decoding"]["greedy"]["achieved"]
        assert got["accuracy_lost"] <= 0.01
    # the routed policy saves 70% on easy questions and 40% on hard ones; one pair for both (> 0.9) would save 40%
    assert rung.calibration["by_decoding"]["greedy"]["achieved"]["think_tokens_saved"] == pytest.approx(0.55)


def test_a_group_without_calibration_questions_is_refused():
    records, ready, skip, part, groups = _calibration_set(60)
    part = [TRAIN if g == 0 else p for p, g in zip(part, groups)]  # no easy question left to calibrate on
    with pytest.raises(ValueError, match=r"no calibration question to group\(s\) \['easy'\]"):
        calibrate_ladder(_Probe(["easy", "hard"]), records, ready, skip, part, [("high", 0.05, 0.1)], 0.0, False,
                         lambda m: None, "category", groups=groups)


def _probe_with_route():
    probe = Probe.random_for(MODEL, layer=1, width=8, seed=0)
    d = probe.hidden_size
    w = torch.zeros(2, d)
    w[1, 0] = 1.0  # group 1 where feature 0 is positive
    probe.route = Route(w=w, b=torch.zeros(2), groups=["a", "b"])
    probe.set_ladder([Rung("high", 0.005, 0.1, 0.9, 0.8, by_group={"a": {"greedy": (0.6, 0.7)},
                                                                     "b": {"greedy": (0.9, 0.8)}})], "high")
    return probe


def test_the_route_and_the_groups_pairs_survive_the_probe_file(tmp_path):
    probe = _probe_with_route()
    probe.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "probe.json").read_text())
    assert cfg["format_version"] == 7 and cfg["route"]["groups"] == ["a", "b"]
    back = Probe.from_pretrained(tmp_path)
    assert back.route.groups == ["a", "b"] and torch.equal(back.route.w, probe.route.w)
    assert back.group_thresholds("high", "greedy") == [(0.6, 0.7), (0.9, 0.8)]
    assert "route_w" not in back.weights and back.tensors().route_w.shape == (2, probe.hidden_size)


def test_a_ladder_whose_groups_differ_from_the_route_is_refused(tmp_path):
    probe = _probe_with_route()
    with pytest.raises(ValueError, match=r"holds thresholds for groups \['a', 'c'\], but the probe's route has"):
        probe.set_ladder([Rung("high", 0.005, 0.1, 0.9, 0.8, by_group={"a": {"greedy": (0.6, 0.7)},
                                                                         "c": {"greedy": (0.9, 0.8)}})], "high")


def test_fit_route_separates_the_categories_on_held_out_prompts():
    probe = Probe.random_for(MODEL, layer=1, width=8, seed=0)
    d = probe.hidden_size
    gen = torch.Generator().manual_seed(0)
    records, rows, part = [], [], []
    for i in range(300):
        category = "x" if i % 2 else "y"
        h = torch.randn(d, generator=gen) + (4.0 if category == "x" else -4.0) * torch.ones(d) / d ** 0.5
        records.append({"kind": 0, "qid": f"q{i}", "source": 0, "category": category})
        records.append({"kind": 1, "qid": f"q{i}", "source": 0, "category": category})  # a thought record
        rows += [h, h]
        part += [TRAIN if i < 200 else VAL] * 2
    hidden = {"layer1": torch.stack(rows)}
    route = fit_route(probe, hidden, records, part, "category", log=lambda m: None)
    assert route.groups == ["x", "y"] and route.provenance["accuracy"]["validation"] >= 0.95
    groups = route_groups(probe, route, hidden, records)
    assert groups[0] == groups[1]  # a question's thought records take its prompt's group
    with pytest.raises(ValueError, match="route by one of"):
        fit_route(probe, hidden, records, part, "colour")


def test_resolve_config_gives_each_group_its_pair_unless_the_config_sets_one():
    probe = _probe_with_route()
    encode = lambda text: [5] * len(text)  # noqa: E731
    row = resolve_config(ThinkConfig(policy="probe", effort="high"), probe, encode=encode)
    assert (row.threshold, row.skip_threshold) == (0.6, 0.7) and row.group_thresholds == ((0.9, 0.8),)
    row = resolve_config(ThinkConfig(policy="probe", effort="high", threshold=0.5), probe, encode=encode)
    assert row.threshold == 0.5 and row.group_thresholds == ((0.5, 0.8),)
    row = resolve_config(ThinkConfig(policy="probe", effort="high", allow_skip=False), probe, encode=encode)
    assert row.skip_threshold == NEVER and row.group_thresholds == ((0.9, NEVER),)
