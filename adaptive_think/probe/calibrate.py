"""calibrate: thresholds with a risk guarantee (Learn-then-Test, fixed-sequence, binomial tail bound).

Risk = the fraction of questions that full thinking answers correctly and the probe policy does not
(accuracy lost against full thinking). On held-out calibration questions, candidate thresholds are
tested from the most conservative down; each rejects "risk > epsilon" when the binomial tail
P(Binom(n, epsilon) <= losses) is at most delta; the most aggressive threshold reached before the
first failure is kept. The skip and stop thresholds each get epsilon/2 and delta/2 (union bound), so
the combined policy loses at most epsilon accuracy with probability at least 1 - delta.
(Angelopoulos et al. 2021, "Learn then Test".)

The simulation mirrors the online policy's calibrated settings: stop at the first step boundary whose
ready score passes the threshold (patience 1, no smoothing); skip when the prompt's skip score passes.
"""

from __future__ import annotations

from collections import defaultdict

from adaptive_think.probe.metrics import binom_cdf

GRID = [round(1.0 - i / 100, 2) for i in range(0, 100)]  # 1.00, 0.99, ..., 0.01


def _questions(records, ready, skip, mask):
    qs = defaultdict(lambda: {"cps": []})
    for r, rs, ss, m in zip(records, ready, skip, mask):
        if not m:
            continue
        q = qs[r["qid"]]
        q.update(full=bool(r["full_correct"]), nothink=bool(r["nothink_correct"]), length=int(r["thought_len"]),
                 level=r.get("level", 0))
        if r["kind"] == 0:
            q["skip"] = ss
        elif r["boundary"]:
            q["cps"].append((int(r["pos"]), rs, bool(r["label"])))
    for q in qs.values():
        q["cps"].sort()
        q.setdefault("skip", float("nan"))
    return list(qs.values())


def simulate_stop(q: dict, threshold: float) -> tuple[bool, int]:
    """(correct, thinking tokens) of one question when thinking stops at the first boundary >= threshold."""
    for pos, score, label in q["cps"]:
        if score >= threshold:  # NaN compares False
            return label, pos
    return q["full"], q["length"]


def simulate(q: dict, ready_threshold: float, skip_threshold: float) -> tuple[bool, int, bool]:
    """(correct, thinking tokens, skipped) under the whole probe policy."""
    if q["skip"] >= skip_threshold:
        return q["nothink"], 0, True
    ok, tokens = simulate_stop(q, ready_threshold)
    return ok, tokens, False


def _fixed_sequence(losses_at, n: int, epsilon: float, delta: float):
    """Walk GRID from conservative to aggressive; the last threshold whose test rejects, and the path."""
    chosen, path = 2.0, []
    for t in GRID:
        k = losses_at(t)
        p = binom_cdf(k, n, epsilon)
        path.append({"threshold": t, "losses": k, "p_value": p})
        if p > delta:
            break
        chosen = t
    return chosen, path


def calibrate(records, ready, skip, is_calib, epsilon: float, delta: float) -> dict:
    """Thresholds for the ready and skip heads from the calibration questions' scores."""
    if not 0 < epsilon < 1 or not 0 < delta < 1:
        raise ValueError(f"epsilon={epsilon} and delta={delta} must both lie in (0, 1).")
    qs = _questions(records, ready, skip, is_calib)
    n = len(qs)
    if n == 0:
        raise ValueError("No calibration questions: collect more questions or raise the calibration fraction.")
    eps, dlt = epsilon / 2, delta / 2
    stop_t, stop_path = _fixed_sequence(
        lambda t: sum(q["full"] and not simulate_stop(q, t)[0] for q in qs), n, eps, dlt)
    skip_t, skip_path = _fixed_sequence(
        lambda t: sum(q["full"] and not q["nothink"] and q["skip"] >= t for q in qs), n, eps, dlt)
    full_acc = sum(q["full"] for q in qs) / n
    runs = [simulate(q, stop_t, skip_t) for q in qs]
    acc = sum(r[0] for r in runs) / n
    full_tokens = sum(q["length"] for q in qs) / n
    tokens = sum(r[1] for r in runs) / n
    lost = sum(q["full"] and not r[0] for q, r in zip(qs, runs)) / n
    min_n = 0
    while (1 - eps) ** (min_n + 1) > dlt and min_n < 10**6:
        min_n += 1
    return {
        "method": "learn-then-test (fixed sequence, binomial tail), epsilon and delta split between skip and stop",
        "epsilon": epsilon,
        "delta": delta,
        "n_questions": n,
        "min_questions_for_any_threshold": min_n + 1,
        "ready_threshold": stop_t,
        "skip_threshold": skip_t,
        "achieved": {
            "full_accuracy": full_acc,
            "policy_accuracy": acc,
            "accuracy_lost": lost,
            "full_think_tokens_mean": full_tokens,
            "policy_think_tokens_mean": tokens,
            "think_tokens_saved": 1 - tokens / full_tokens if full_tokens else 0.0,
            "skip_rate": sum(r[2] for r in runs) / n,
        },
        "ready_path": stop_path[-3:],
        "skip_path": skip_path[-3:],
    }
