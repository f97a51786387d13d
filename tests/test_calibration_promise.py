"""The calibration's promise, checked rather than assumed: over many synthetic calibration sets whose
true loss is known, Learn-then-Test's thresholds lose more than epsilon in at most a delta fraction; and
fixed-sequence testing stops at the first threshold that fails, even where a lower one passes again."""

import random

from adaptive_think.training.calibrate import GRID, calibrate
from adaptive_think.training.metrics import binom_cdf

FULL = dict(full_correct=True, nothink_correct=False, thought_len=50)


def _records(scored_checkpoints):
    """Records of questions whose checkpoints are [(pos, ready score, stop right?)]; never skipped."""
    records, ready = [], []
    for q, cps in enumerate(scored_checkpoints):
        records.append(dict(FULL, qid=q, kind=0, pos=0, label=False, boundary=False))
        ready.append(0.0)
        for pos, score, ok in cps:
            records.append(dict(FULL, qid=q, kind=1, pos=pos, label=ok, boundary=True))
            ready.append(score)
    skip = [float("nan")] * len(records)  # a NaN skip score never passes: only the stop head is calibrated
    return records, ready, skip


def _true_risk(t: float) -> float:
    # score s ~ U(0, 1), a stop at s is wrong with probability 0.1 (1 - s): P(s >= t, wrong) = 0.05 (1 - t)^2
    return 0.05 * (1 - t) ** 2 if t <= 1 else 0.0


def _draw(rng, n):
    out = []
    for _ in range(n):
        s = rng.random()
        out.append([(10, s, rng.random() >= 0.1 * (1 - s))])
    return out


def test_learn_then_test_keeps_its_promise_over_many_calibration_sets():
    epsilon, delta, n, trials = 0.01, 0.1, 400, 200
    rng = random.Random(0)
    lte_fail = naive_fail = 0
    for _ in range(trials):
        qs = _draw(rng, n)
        records, ready, skip = _records(qs)
        res = calibrate(records, ready, skip, [True] * len(records), epsilon, delta)
        assert res["achieved"]["skip_rate"] == 0.0  # a NaN skip score never passes
        lte_fail += _true_risk(res["ready_threshold"]) > epsilon
        # the naive rule: the lowest threshold whose calibration loss is within epsilon
        naive = min((t for t in GRID if sum(s >= t and not ok for ((_, s, ok),) in qs) <= epsilon * n), default=2.0)
        naive_fail += _true_risk(naive) > epsilon
    # the guarantee: each set loses more than epsilon with probability <= delta, so the count of such sets is
    # at most Binomial(trials, delta); `limit` is that count's 99.9% quantile (the test's own error rate)
    limit = next(k for k in range(trials + 1) if 1 - binom_cdf(k, trials, delta) <= 1e-3)
    assert lte_fail <= limit
    assert naive_fail > limit  # the check has teeth: picking the threshold by its empirical loss breaks it


def test_fixed_sequence_stops_at_the_first_failed_threshold():
    # 60 questions: a right checkpoint at pos 10 scored 0.85, a wrong one at pos 20 scored 0.895.
    # thresholds 1.00..0.90 stop nowhere (no loss); 0.89 stops at the wrong one (60 losses: fails);
    # 0.85 and below stop at the right one (no loss: passes again) but must never be reached.
    records, ready, skip = _records([[(10, 0.85, True), (20, 0.895, False)]] * 60 +
                                    [[(10, 0.99, True)]] * 440)
    res = calibrate(records, ready, skip, [True] * len(records), epsilon=0.1, delta=0.2)
    assert res["ready_threshold"] == 0.9
    assert res["path_tail"][-1]["ready"] == 0.89 and res["path_tail"][-1]["losses"] == 60
    assert res["achieved"]["accuracy_lost"] == 0.0
