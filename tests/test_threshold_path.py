"""The calibration path's skip leg: part of a rung's error budget goes to skipping before early stops."""

import pytest

from adaptive_think.training.calibrate import NEVER, build_path, calibrate
from adaptive_think.training.train_config import TrainConfig


def _question(skip, nothink, length, stop_score, level):
    # one boundary checkpoint at half the thought, where a forced answer is right
    return {"full": True, "nothink": nothink, "length": length, "level": level, "skip": skip,
            "cps": [(length // 2, stop_score, True)]}


def _questions():
    easy = [_question(0.95, True, 10, 0.99, 1) for _ in range(10)]  # the no-think answer is right
    hard = [_question(s, False, 100, 0.97, 6) for s in (0.85, 0.80, 0.5, 0.4)]  # skipping them loses them
    return easy + hard


def _leg(path):
    """The pairs before the ready threshold first moves."""
    return path[: next(i for i, (r, _) in enumerate(path) if r != NEVER)]


def test_the_skip_leg_goes_down_while_skipping_loses_at_most_its_share():
    qs = _questions()
    leg = _leg(build_path(qs, skip_losses=1))
    assert leg[0] == (NEVER, NEVER) and all(r == NEVER for r, _ in leg)
    assert leg[-1][1] == 0.81  # at 0.81 one hard question is skipped (1 loss); at 0.80 a second one would be
    assert _leg(build_path(qs, skip_losses=2.5))[-1][1] == 0.51  # 0.50 skips a third
    # without a skip budget the path orders moves by tokens saved per loss alone: the ready head moves first
    assert _leg(build_path(qs)) == [(NEVER, NEVER)]


def test_every_pair_of_the_path_is_one_step_of_one_threshold():
    path = build_path(_questions(), skip_losses=1)
    assert path[-1] == (0.01, 0.01)
    for (r0, s0), (r1, s1) in zip(path, path[1:]):
        assert (r0 == r1) != (s0 == s1)  # exactly one threshold moves
        assert r1 <= r0 and s1 <= s0


def test_calibrate_spends_the_skip_share_on_its_own_path():
    records = []
    for i, q in enumerate(_questions() * 40):  # 560 questions: enough for epsilon 0.05 at delta 0.1
        qid = f"q{i}"
        base = {"qid": qid, "full_correct": q["full"], "nothink_correct": q["nothink"], "thought_len": q["length"],
                "level": q["level"], "label": True, "boundary": True}
        records.append({**base, "kind": 0, "pos": 0})
        records.append({**base, "kind": 1, "pos": q["cps"][0][0]})
    ready = [0.0 if r["kind"] == 0 else (0.99 if r["level"] == 1 else 0.97) for r in records]
    skip = []
    for i, r in enumerate(records):
        skip.append(_questions()[(i // 2) % 14]["skip"])
    path_from = [int(r["qid"][1:]) % 2 == 0 for r in records]
    is_calib = [not p for p in path_from]
    got = calibrate(records, ready, skip, is_calib, 0.05, 0.1, path_from=path_from, skip_share=0.5)
    assert got["by_decoding"]["greedy"]["achieved"]["accuracy_lost"] <= 0.05
    assert got["skip_threshold"] <= 0.95  # the easy questions skip


def test_skip_share_must_be_a_share():
    with pytest.raises(ValueError, match="skip_share"):
        TrainConfig(skip_share=1.5).rungs()


def _skip_question(rng):
    """Skip score u: the no-think answer is right with probability u. One stop checkpoint scored s, wrong
    with probability 0.1 (1 - s). True risk of (ready t, skip v): (1 - v)^2 / 2 + v * 0.05 (1 - t)^2."""
    u, s = rng.random(), rng.random()
    return {"full": True, "nothink": rng.random() < u, "length": 50, "level": 0, "skip": u,
            "cps": [(10, s, rng.random() >= 0.1 * (1 - s))]}


def _risk(ready_t, skip_t):
    v = min(skip_t, 1.0)
    return (1 - v) ** 2 / 2 + v * (0.05 * (1 - ready_t) ** 2 if ready_t <= 1 else 0.0)


def test_the_whole_policy_keeps_its_promise_with_a_skip_leg():
    import random

    from adaptive_think.training.metrics import binom_cdf

    epsilon, delta, n, trials = 0.02, 0.1, 400, 100
    grid = [round(1 - i / 50, 2) for i in range(51)]  # coarse, to keep the test fast
    rng = random.Random(1)
    fails = naive_fails = 0
    for _ in range(trials):
        path = build_path([_skip_question(rng) for _ in range(n)], grid=grid, skip_losses=0.5 * epsilon * n)
        assert path[1][0] == NEVER  # the walk starts on the skip leg
        calib = [_skip_question(rng) for _ in range(n)]
        records = []
        for i, q in enumerate(calib):
            base = {"qid": i, "full_correct": True, "nothink_correct": q["nothink"], "thought_len": 50,
                    "label": q["cps"][0][2], "boundary": True}
            records += [{**base, "kind": 0, "pos": 0}, {**base, "kind": 1, "pos": 10}]
        ready = [0.0 if r["kind"] == 0 else calib[r["qid"]]["cps"][0][1] for r in records]
        skip = [calib[r["qid"]]["skip"] for r in records]
        got = calibrate(records, ready, skip, [True] * len(records), epsilon, delta, path=path)
        fails += _risk(got["ready_threshold"], got["skip_threshold"]) > epsilon
        # the naive rule: the most aggressive pair of the same path whose calibration loss is within epsilon
        naive = [(r, v) for r, v in path if sum(
            not (q["nothink"] if q["skip"] >= v else (q["cps"][0][2] or q["cps"][0][1] < r)) for q in calib) <= epsilon * n]
        naive_fails += _risk(*naive[-1]) > epsilon
    # each run loses more than epsilon with probability <= delta: at most the 99.9% quantile of Binomial(trials, delta)
    limit = next(k for k in range(trials + 1) if 1 - binom_cdf(k, trials, delta) <= 1e-3)
    assert fails <= limit
    assert naive_fails > limit  # the check has teeth: picking the pair by its empirical loss breaks it


def _two_families():
    """Short questions skipped at scores 0.9-0.5 (half of each score's skips lose) and long ones never skipped."""
    short = [_question(0.9 - 0.1 * (i % 5), i < 10, 10, 0.5, 1) for i in range(20)]
    long = [_question(0.0, False, 100, 0.97, 6) for _ in range(20)]
    return short + long, ["short"] * 20 + ["long"] * 20


def test_with_strata_the_skip_leg_spends_each_strata_share_not_the_pooled_budget():
    qs, labels = _two_families()
    # pooled, the leg may lose 2 questions: skipping at >= 0.81 loses the two 0.9 skippers without a no-think answer
    assert _leg(build_path(qs, skip_losses=2))[-1][1] == 0.81
    # per stratum, the short one's share is 1 (20 of 40 questions): the leg stops before 0.9
    assert _leg(build_path(qs, skip_losses=2, labels=labels))[-1][1] == 0.905  # the grid step above 0.9


def test_with_strata_a_step_is_costed_by_the_stratum_whose_loss_rate_rises_most():
    # stratum a (10 questions): the ready step stops them all at half their thought, saving 500 tokens, losing one
    a = [_question(0.0, False, 100, 0.9, 1) for _ in range(10)]
    a[0]["cps"] = [(50, 0.9, False)]
    # stratum b (90): the skip step skips 11 of them, saving 400 tokens, losing one
    b = [_question(0.0, False, 100, 0.0, 2) for _ in range(90)]
    b[0]["skip"] = 0.9
    for q in b[1:11]:
        q.update(skip=0.9, nothink=True, length=30)
    grid = (0.9,)
    # pooled: one loss either way, the ready step saves more tokens
    assert build_path(a + b, grid=grid)[1] == (0.9, NEVER)
    # per stratum: the ready step raises a's loss rate by 10 points, the skip step b's by 1.1
    assert build_path(a + b, grid=grid, labels=["a"] * 10 + ["b"] * 90)[1] == (NEVER, 0.9)


def test_steps_that_save_nothing_come_after_every_step_that_saves():
    # every early stop costs something (one confident wrong stop), and no skip score is high: lowering the skip
    # threshold from 1.0 to 0.06 saves nothing here, so those steps only risk losses on unseen questions
    qs = [{"full": True, "nothink": False, "length": 100, "level": 1, "skip": 0.05,
           "cps": [(50, 0.95 if i == 0 else 0.9, i != 0)]} for i in range(10)]
    path = build_path(qs)
    first_skip = next(i for i, (_, s) in enumerate(path) if s != NEVER)
    ready_at_first_skip = path[first_skip][0]
    assert path[1][1] == NEVER and path[1][0] != NEVER  # the ready threshold moves first
    assert ready_at_first_skip <= 0.9  # and reaches every saving stop before the skip threshold moves at all
