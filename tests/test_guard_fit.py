"""The out-of-distribution guard: conformal threshold arithmetic, its false-alarm rate on a large Gaussian case,
the probe file that carries it, and the ThinkConfig settings that turn it off or pick the fallback."""

from __future__ import annotations

import json
import math

import pytest
import torch

from adaptive_think import ThinkConfig
from adaptive_think.controller.params import NEVER, NO_GUARD, resolve_config
from adaptive_think.probe import Probe
from adaptive_think.probe.guard import Guard
from adaptive_think.probe.ladder import Rung
from adaptive_think.training.guard import (conformal_rank, conformal_threshold, fit_guard, fit_shape,
                                          stratified_threshold)
from tiny import make_model, make_tokenizer

MODEL = make_model("qwen3", len(make_tokenizer()), seed=2)


def resolve(config, probe):
    return resolve_config(config, probe, encode=lambda text: [5] * len(text))


def test_conformal_rank_is_the_finite_sample_quantile():
    assert conformal_rank(19, 0.1) == 18  # ceil(20 * 0.9): exact products stay exact
    assert conformal_rank(20, 0.05) == 20
    assert conformal_rank(100, 0.05) == 96  # ceil(101 * 0.95) = ceil(95.95)
    with pytest.raises(ValueError, match=r"18 calibration questions are too few for alpha=0.05.*at least 19"):
        conformal_rank(18, 0.05)
    with pytest.raises(ValueError, match=r"alpha=1.5 must lie in \(0, 1\)"):
        conformal_rank(100, 1.5)


def test_conformal_threshold_is_the_kth_smallest_score():
    scores = torch.randperm(19, generator=torch.Generator().manual_seed(0)).float() + 1.0  # 1 .. 19 shuffled
    assert conformal_threshold(scores, 0.1) == 18.0  # one of 19 above: 1/19 <= 0.1 < 2/19
    assert conformal_threshold(scores, 0.2) == 16.0  # ceil(20 * 0.8) = 16
    with pytest.raises(ValueError, match="NaN or inf"):
        conformal_threshold(torch.tensor([1.0, float("nan")] * 20), 0.1)


def _gaussian(n: int, gen: torch.Generator, shift: torch.Tensor | None = None) -> torch.Tensor:
    """[n, 24] states: 4 strong directions (sd 6, 4, 3, 2) and 20 of sd 1, in a fixed random basis."""
    basis = torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(99)))[0]  # fixed
    z = torch.randn(n, 24, generator=gen)
    z[:, :4] *= torch.tensor([6.0, 4.0, 3.0, 2.0])
    x = z @ basis.t() + 1.5
    return x if shift is None else x + shift


def test_false_alarms_on_fresh_in_distribution_draws_are_at_most_alpha():
    """Fit on 4000 draws, calibrate on 4000 more at alpha 0.05, score 200000 fresh draws. Given the calibration
    set, the fresh rate is Beta(n + 1 - k, k)-distributed around (n + 1 - k)/(n + 1) = 0.04998 (sd 0.0034); the
    fresh sample adds a binomial sd of 0.0005: the rate lies within 3 sd of that, and a threshold one rank
    lower or higher (or no finite-sample correction at a smaller n) moves it by 1/(n + 1) only, so the large
    case checks the score's calibration and the small cases above the rank arithmetic."""
    gen = torch.Generator().manual_seed(7)
    guard = fit_guard(_gaussian(4000, gen), _gaussian(4000, gen), rank=4, alpha=0.05)
    assert guard.provenance["conformal_rank"] == 3801
    rate = float((guard.score(_gaussian(200_000, gen)) > guard.threshold).float().mean())
    n, k = 4000, 3801
    mean = (n + 1 - k) / (n + 1)
    sd = math.sqrt(mean * (1 - mean) / (n + 2) + mean * (1 - mean) / 200_000)
    assert abs(rate - mean) <= 3 * sd, f"false-alarm rate {rate:.4f}, expected {mean:.4f} +- {3 * sd:.4f}"
    # the fit recovers the strong directions' variances and the unit residual
    torch.testing.assert_close(guard.var, torch.tensor([36.0, 16.0, 9.0, 4.0]), rtol=0.08, atol=0.0)
    assert abs(guard.res_var - 1.0) < 0.05
    # a shift of 8 sds along a weak direction (less than the strong directions' spread) is caught: the residual
    off = torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(99)))[0][:, 10] * 8.0
    assert float((guard.score(_gaussian(5000, gen, off)) > guard.threshold).float().mean()) > 0.9


def test_stratified_threshold_holds_alpha_in_each_stratum_where_a_pooled_one_does_not():
    """Two families: "far" prompts spread 1.3 times as wide as "near" ones. Calibrated pooled at alpha 0.05, "far"
    falls back about twice as often as alpha; with strata each family's fresh draws fall back at most alpha (+ 3 sd)."""
    gen = torch.Generator().manual_seed(3)

    def far(n: int) -> torch.Tensor:
        return (_gaussian(n, gen) - 1.5) * 1.3 + 1.5

    fit = torch.cat([_gaussian(2000, gen), far(2000)])
    cal = torch.cat([_gaussian(2000, gen), far(2000)])
    labels = ["near"] * 2000 + ["far"] * 2000
    pooled = fit_guard(fit, cal, rank=4, alpha=0.05)
    strat = fit_guard(fit, cal, rank=4, alpha=0.05, cal_strata=labels)
    fresh = {"near": _gaussian(50_000, gen), "far": far(50_000)}
    rate = {name: {g: float((guard.score(x) > guard.threshold).float().mean()) for g, x in fresh.items()}
            for name, guard in (("pooled", pooled), ("strat", strat))}
    assert rate["pooled"]["far"] > 0.07  # the pooled promise holds for the mix only
    sd = math.sqrt(0.05 * 0.95 / 2000)
    assert all(r <= 0.05 + 3 * sd for r in rate["strat"].values()), rate
    record = strat.provenance["stratified"]
    assert set(record["strata"]) == {"far", "near"} and record["not_covered"] == []
    assert strat.threshold == max(r["threshold"] for r in record["strata"].values())
    # strata too small to rank alone (19 needed at alpha 0.05) are ranked together; alone and too small: uncovered
    scores = torch.arange(60, dtype=torch.float32)
    thr, rec = stratified_threshold(scores, ["a"] * 40 + ["b"] * 10 + ["c"] * 10, 0.05)
    assert set(rec["strata"]) == {"a", "small strata: b, c"} and rec["strata"]["a"]["threshold"] == 38.0  # ceil(41 * 0.95) = 39th smallest
    assert thr == 59.0  # b and c hold the 20 largest scores: their group's 20th smallest of 20
    thr, rec = stratified_threshold(scores[:45], ["a"] * 40 + ["b"] * 5, 0.05)
    assert rec["not_covered"] == ["b"] and thr == 38.0
    with pytest.raises(ValueError, match="No stratum holds the 19"):
        stratified_threshold(scores[:10], ["a"] * 5 + ["b"] * 5, 0.05)
    with pytest.raises(ValueError, match="labels for"):
        fit_guard(fit, cal, rank=4, alpha=0.05, cal_strata=labels[:10])


def test_train_probe_stratifies_the_guard_by_its_calibration_strata():
    from adaptive_think.training.guard import guard_from_collection
    from adaptive_think.training.splits import CALIB, TRAIN
    from adaptive_think.training.train import guard_strata

    gen = torch.Generator().manual_seed(5)
    n = 400
    records = [{"kind": 0, "qid": f"q{i}", "level": 1 + i % 2, "category": "ab"[i % 2], "thought_len": 10 + i,
                "full_correct": True, "nothink_correct": False} for i in range(n)]
    part = [TRAIN if i < n // 2 else CALIB for i in range(n)]
    rows = torch.arange(n)
    assert guard_strata(records, [0.0] * n, [0.0] * n, part, rows, "none") is None
    labels = guard_strata(records, [0.0] * n, [0.0] * n, part, rows, "category")
    assert labels[:2] == ["category a", "category b"]
    bins = guard_strata(records, [0.0] * n, [0.0] * n, part, rows, "length:2")  # cut at the training lengths' median
    assert bins[0] == "length bin 1 [0, 110)" and bins[-1] == "length bin 2 [110, inf)"
    # "b" prompts spread wider: its own threshold is the guard's
    x = torch.cat([_gaussian(n, gen)[:, None], (_gaussian(n, gen)[:, None] - 1.5) * 1.5 + 1.5], 1).reshape(2 * n, 24)[:n]
    probe = Probe.random_for(MODEL, layer=0, width=4, seed=0)
    probe.weights["mean"], probe.weights["inv_std"] = torch.zeros(24), torch.ones(24)
    cal = torch.tensor([p == CALIB for p in part])
    guard = guard_from_collection(probe, x, ~cal, cal, rank=4, alpha=0.05, log=lambda m: None, strata=labels)
    record = guard.provenance["stratified"]["strata"]
    assert {g: r["n"] for g, r in record.items()} == {"category a": 100, "category b": 100}
    assert guard.threshold == record["category b"]["threshold"] > record["category a"]["threshold"]


def test_fit_refuses_too_few_calibration_states_and_bad_rank():
    x = torch.randn(50, 8)
    with pytest.raises(ValueError, match="too few for alpha=0.05"):
        fit_guard(x[:40], x[40:], rank=2, alpha=0.05)
    with pytest.raises(ValueError, match=r"rank=8 must lie in \[0, D - 1\]"):
        fit_shape(x, 8)


def _guarded_probe() -> Probe:
    probe = Probe.random_for(MODEL, layer=1, width=8, seed=1)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(400, probe.hidden_size, generator=gen)
    probe.guard = fit_guard(x[:200], x[200:], rank=3, alpha=0.1, provenance={"test": True})
    return probe


def test_probe_file_carries_the_guard_and_a_probe_without_one_is_unchanged(tmp_path):
    probe = _guarded_probe()
    probe.save_pretrained(tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "probe.json").read_text())
    assert cfg["format_version"] == 5 and cfg["guard"]["threshold"] == probe.guard.threshold
    again = Probe.from_pretrained(tmp_path / "g")
    assert again.guard.threshold == probe.guard.threshold and again.guard.rank == 3
    for name in ("mean", "dirs", "var"):
        assert torch.equal(getattr(again.guard, name), getattr(probe.guard, name))
    assert sorted(again.weights) == sorted(Probe.weight_names())  # the guard's tensors are not head weights
    x = torch.randn(5, probe.hidden_size)
    assert torch.equal(again.guard.score(x), probe.guard.score(x))

    plain = Probe.random_for(MODEL, layer=1, width=8, seed=1)
    plain.save_pretrained(tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert cfg["format_version"] == 2 and "guard" not in cfg and Probe.from_pretrained(tmp_path / "p").guard is None
    assert resolve(ThinkConfig(policy="probe"), plain).guard_threshold == NO_GUARD

    cfg = json.loads((tmp_path / "g" / "probe.json").read_text())
    del cfg["guard"]["threshold"]
    (tmp_path / "g" / "probe.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="guard is incomplete.*fit-guard"):
        Probe.from_pretrained(tmp_path / "g")


def test_think_config_turns_the_guard_off_or_picks_the_fallback():
    probe = _guarded_probe()
    probe.set_ladder([Rung("high", 0.01, 0.1, 0.9, 0.95), Rung("low", 0.05, 0.1, 0.6, 0.7)], "low")
    on = resolve(ThinkConfig(policy="probe"), probe)
    assert on.guard_threshold == probe.guard.threshold and (on.fallback_threshold, on.fallback_skip_threshold) == \
        (NEVER, NEVER)
    assert (on.threshold, on.skip_threshold) == (0.6, 0.7)
    rung = resolve(ThinkConfig(policy="probe", guard_fallback="high"), probe)
    assert (rung.fallback_threshold, rung.fallback_skip_threshold) == (0.9, 0.95)
    no_skip = resolve(ThinkConfig(policy="probe", guard_fallback="high", allow_skip=False), probe)
    assert no_skip.fallback_skip_threshold == NEVER
    assert resolve(ThinkConfig(policy="probe", guard=False), probe).guard_threshold == NO_GUARD
    with pytest.raises(ValueError, match="guard_fallback='medium' is neither 'full' nor an effort rung"):
        resolve(ThinkConfig(policy="probe", guard_fallback="medium"), probe)
    plain = Probe.random_for(MODEL, layer=1, width=8, seed=1)
    with pytest.raises(ValueError, match="guard=True.*needs a probe with an out-of-distribution guard.*fit-guard"):
        resolve(ThinkConfig(policy="probe", guard=True, threshold=0.5, skip_threshold=0.5), plain)
    with pytest.raises(ValueError, match='guard / guard_fallback only apply to policy="probe"'):
        ThinkConfig(policy="budget", max_think_tokens=8, guard=True)
    with pytest.raises(ValueError, match="guard must be True, False or None"):
        ThinkConfig(policy="probe", guard="yes")
    with pytest.raises(ValueError, match="no effect with guard=False"):
        ThinkConfig(policy="probe", guard=False, guard_fallback="high")


def test_guard_refuses_bad_shapes():
    with pytest.raises(ValueError, match="Guard shapes"):
        Guard(torch.zeros(4), torch.zeros(2, 3), torch.ones(2), 1.0, 1.0, 0.1, 1, 1)
    with pytest.raises(ValueError, match="variances must be positive"):
        Guard(torch.zeros(4), torch.zeros(2, 4), torch.zeros(2), 1.0, 1.0, 0.1, 1, 1)


def test_vllm_requests_with_bad_guard_settings_are_refused_up_front(tmp_path, monkeypatch):
    """The frontend check (no vLLM needed): a guard the served probe lacks, a fallback rung it does not have."""
    from types import SimpleNamespace

    from adaptive_think.integrations.vllm.context import validate_request
    from adaptive_think.integrations.vllm.requests import ENV_VAR, ServingSettings

    plain = Probe.random_for(MODEL, layer=1, width=8, seed=1)
    plain.save_pretrained(tmp_path / "plain")
    _guarded_probe().save_pretrained(tmp_path / "guarded")

    def request(folder, fields):
        monkeypatch.setenv(ENV_VAR, ServingSettings(probe=str(tmp_path / folder)).to_json())
        return validate_request(SimpleNamespace(extra_args={"adaptive_think": fields}, temperature=0.0))

    with pytest.raises(ValueError, match="needs a probe with an out-of-distribution guard"):
        request("plain", {"policy": "probe", "guard": True})
    with pytest.raises(ValueError, match="guard_fallback='high' is neither 'full' nor an effort rung"):
        request("guarded", {"policy": "probe", "guard_fallback": "high"})
    assert request("guarded", {"policy": "probe", "guard": "true"}).guard is True
