"""Patience counted in boundaries: the calibration's simulated stop (training/patience.py) matches the controller's,
a probe carries its calibrated patience per decoding, and a row without its own runs with it."""

import json
import math
import random

import pytest
import torch

from adaptive_think.config import ThinkConfig
from adaptive_think.controller import controller_step
from adaptive_think.controller.params import RowParams, RowSettings, resolve_config
from adaptive_think.controller.state import ENDED_PROBE, POLICY_PROBE, THINKING, ControllerSpec, ControllerState, ProbeTensors
from adaptive_think.probe import Probe
from adaptive_think.training.calibrate import questions_of, simulate_stop
from adaptive_think.training.patience import parse_patience, patience_spec, with_patience

OPEN, CLOSE, EXIT, EOS, BOUNDARY, WORD = 20, 21, 23, 25, 7, 1


def test_parse_patience_reads_one_count_or_one_per_decoding():
    assert parse_patience("2") == {"greedy": 2, "sampled": 2}
    assert parse_patience("sampled=3") == {"greedy": 1, "sampled": 3}
    assert parse_patience(" greedy=2 , sampled=1 ") == {"greedy": 2, "sampled": 1}
    for spec in ("1", "3", "greedy=1,sampled=2", "greedy=2,sampled=1"):
        assert patience_spec(parse_patience(spec)) == spec
    for bad, why in (("0", "int >= 1"), ("two", "int >= 1"), ("beam=2", "unknown decoding 'beam'"),
                     ("sampled=0", "sampled must be an int >= 1")):
        with pytest.raises(ValueError, match=why):
            parse_patience(bad)


def test_with_patience_takes_the_minimum_of_the_last_k_boundaries_of_each_thought():
    nan = float("nan")

    def rec(qid, decoding, pos, boundary=True, kind=1):
        return dict(qid=qid, decoding=decoding, pos=pos, boundary=boundary, kind=kind)

    records = [rec("a", "sampled", 0, False, 0), rec("a", "sampled", 9), rec("a", "sampled", 3),
               rec("a", "sampled", 5, False), rec("a", "sampled", 12), rec("a", "greedy", 3), rec("a", "greedy", 9),
               rec("b", "sampled", 4), rec("b", "sampled", 8)]
    ready = [0.1, 0.9, 0.6, 0.99, 0.8, 0.6, 0.9, nan, 0.7]
    out = with_patience(records, ready, {"greedy": 1, "sampled": 2})
    # sampled "a" in position order: 3 -> 0.6, 9 -> 0.9, 12 -> 0.8; the non-boundary record at 5 is not a step
    assert out[2] != out[2] and out[1] == 0.6 and out[4] == 0.8 and out[3] == 0.99 and out[0] == 0.1
    assert out[5:7] == [0.6, 0.9]  # greedy keeps patience 1
    assert all(x != x for x in out[7:])  # a NaN inside the window: no stop there
    assert with_patience(records, ready, {"greedy": 1, "sampled": 1}) == ready


def _score_probe() -> ProbeTensors:
    """ready = sigmoid(h[0]); the skip score never passes."""
    z = torch.zeros
    return ProbeTensors(mean=z(4), inv_std=torch.ones(4), ready_w1=torch.eye(4)[:1], ready_b1=z(1),
                        ready_w2=torch.ones(1), ready_b2=z(1), skip_w1=z(1, 4), skip_b1=z(1), skip_w2=torch.ones(1),
                        skip_b2=torch.tensor([-20.0]), relu=False)


def _online_stop(tokens: list[int], scores: list[float], threshold: float, patience: int) -> int | None:
    """Thinking tokens when the torch controller stops a boundary-only probe row fed `tokens` (scores[i] the ready
    score of step i + 1), or None."""
    is_boundary = torch.zeros(32, dtype=torch.bool)
    is_boundary[BOUNDARY] = True
    spec = ControllerSpec.build((OPEN,), (CLOSE,), (EOS,), is_boundary=is_boundary, probe=_score_probe())
    row = RowSettings(policy=POLICY_PROBE, min_think=0, max_think=10_000, threshold=threshold, skip_threshold=2.0,
                      alpha=1.0, patience=patience, boundary_only=True, trace=False, exit_ids=(EXIT,), stop_ids=())
    params = RowParams.pack([row], (OPEN,), (), (CLOSE,), 8, "cpu")
    state = ControllerState.allocate(1, "cpu")
    state.phase.fill_(THINKING)
    state.blocks.fill_(1)
    for t, s in zip([0] + tokens, [0.5] + scores):
        h = torch.zeros(1, 4)
        h[0, 0] = math.log(s / (1 - s))
        controller_step(h, torch.tensor([t]), state, params, spec, impl="torch")
        if int(state.ended_by) == ENDED_PROBE:
            return int(state.think_count)
    return None


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_calibration_stops_where_the_controller_does(patience):
    rng = random.Random(patience)
    for trial in range(25):
        n = rng.randint(5, 40)
        tokens = [BOUNDARY if rng.random() < 0.35 else WORD for _ in range(n)]
        scores = [rng.choice([0.2, 0.4, 0.6, 0.8]) for _ in range(n)]
        records = [dict(qid="q", decoding="greedy", kind=0, pos=0, boundary=False, full_correct=True,
                        nothink_correct=False, thought_len=n, label=False)]
        ready = [float("nan")]
        for i, t in enumerate(tokens):  # a record per boundary: pos = thinking tokens written through it
            if t == BOUNDARY:
                records.append(dict(records[0], kind=1, pos=i + 1, boundary=True, label=True))
                ready.append(scores[i])
        ready = with_patience(records, ready, {"greedy": patience, "sampled": 1})
        (q,) = questions_of(records, ready, [float("nan")] * len(records), [True] * len(records))
        _, simulated = simulate_stop(q, 0.5)
        online = _online_stop(tokens, scores, 0.5, patience)
        assert (online if online is not None else n) == simulated, (trial, tokens, scores)


def _probe(patience: dict | None) -> Probe:
    w = {"mean": torch.zeros(4), "inv_std": torch.ones(4)}
    for head in ("ready", "skip"):
        w.update({f"{head}_w1": torch.zeros(1, 4), f"{head}_b1": torch.zeros(1), f"{head}_w2": torch.ones(1),
                  f"{head}_b2": torch.zeros(1)})
    probe = Probe(layer=1, kind="linear", weights=w, fingerprint={"hidden_size": 4})
    probe.ready_threshold, probe.skip_threshold = 0.7, 2.0
    if patience is not None:
        probe.policy_defaults = {**probe.policy_defaults, "patience": patience}
    return probe


def test_a_probe_row_takes_the_calibrated_patience_of_its_decoding(tmp_path):
    _probe({"greedy": 1, "sampled": 2}).save_pretrained(tmp_path / "p")
    # an older reader would run these thresholds at patience 1: the file says it needs a newer one
    assert json.loads((tmp_path / "p" / "probe.json").read_text())["format_version"] == 8
    probe = Probe.from_pretrained(tmp_path / "p")
    row = ThinkConfig(policy="probe", exit_text="")
    assert resolve_config(row, probe, decoding="greedy").patience == 1
    assert resolve_config(row, probe, decoding="sampled").patience == 2
    assert resolve_config(ThinkConfig(policy="probe", exit_text="", decoding="sampled"), probe).patience == 2
    assert resolve_config(ThinkConfig(policy="probe", exit_text="", patience=3), probe, decoding="sampled").patience == 3
    assert resolve_config(ThinkConfig(policy="budget", max_think_tokens=9), probe, decoding="sampled").patience == 1
    _probe(None).save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "probe.json").read_text())["format_version"] == 2
    assert resolve_config(row, Probe.from_pretrained(tmp_path / "plain"), decoding="sampled").patience == 1


@pytest.mark.parametrize("bad", [{"sampled": 0}, {"beam": 2}, {"sampled": "2"}, [2]])
def test_a_probe_file_with_a_bad_patience_is_refused(tmp_path, bad):
    _probe({"greedy": 1, "sampled": 2}).save_pretrained(tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "probe.json").read_text())
    cfg["policy_defaults"]["patience"] = bad
    (tmp_path / "p" / "probe.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="policy_defaults.patience must map greedy / sampled"):
        Probe.from_pretrained(tmp_path / "p")
