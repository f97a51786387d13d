"""calibrate: thresholds with a risk guarantee (Learn-then-Test, fixed-sequence, binomial tail bound).

Risk = the fraction of questions that full thinking answers correctly and the probe policy does not
(accuracy lost against full thinking). The (ready, skip) threshold pairs are ordered into one path from
the most conservative (never stop, never skip) to the most aggressive, on questions that are NOT
calibration questions (`build_path`: first the skip threshold alone, while skipping spends at most a
share of the rung's budget there, then at each step whichever threshold saves thinking tokens at the
least cost in accuracy there). On the held-out calibration questions the pairs are then tested along
that path; each rejects "risk > epsilon" when the binomial tail P(Binom(n, epsilon) <= losses) is at
most delta; the most aggressive pair reached before the first failure is kept. The path is fixed before
the calibration questions are seen, so the whole policy (skip and stop together) loses at most epsilon
accuracy with probability at least 1 - delta, with no split of epsilon between the heads.
(Angelopoulos et al. 2021, "Learn then Test".)

Several decoding modes (greedy and sampled collections, `decoding` on each record): each mode's
calibration questions walk the same path with their own test and get their own thresholds, so a rung
holds under greedy decoding with its greedy pair and under sampling with its sampled pair (each with
probability at least 1 - delta); the generate() call picks the pair of its decoding.

Strata (strata.py: level, category or thought-length bins): a pair passes only if its test passes in every
stratum, at the same delta (an intersection-union test; strata.py says why that is valid and needs no split
of delta). The rung then loses at most epsilon in each stratum, hence for any mix of them.

The simulation mirrors the online policy's calibrated settings: stop at the first step boundary whose
ready score passes the threshold (patience 1, no smoothing); skip when the prompt's skip score passes.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from adaptive_think.training.metrics import binom_cdf
from adaptive_think.training.strata import Strata, natural_order, parse_strata

GRID = [round(1.0 - i / 100, 2) for i in range(0, 100)]  # 1.00, 0.99, ..., 0.01
# the path's grid: GRID plus log-spaced steps between 0.99 and 0.9999, where a sure probe's scores crowd,
# half steps above 0.9
# and quarter steps above 0.95 (a ready head at a strict rung stops there)
PATH_GRID = sorted(set(GRID) | {round(1 - 10 ** (-k / 4), 5) for k in range(9, 17)}
                   | {round(0.9 + i / 200, 3) for i in range(20)} | {round(0.95 + i / 400, 4) for i in range(20)},
                   reverse=True)
NEVER = 2.0  # a threshold no probability reaches


def questions_of(records, ready, skip, mask) -> list[dict]:
    """Per question in `mask`: full / no-think correctness, thought length, skip score, boundary checkpoints."""
    qs = defaultdict(lambda: {"cps": []})
    for r, rs, ss, m in zip(records, ready, skip, mask):
        if not m:
            continue
        q = qs[(r.get("decoding", "greedy"), r["qid"])]  # one question per draw and decoding
        q.update(full=bool(r["full_correct"]), nothink=bool(r["nothink_correct"]), length=int(r["thought_len"]),
                 level=r.get("level", 0), category=r.get("category"))
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


def _totals(qs, ready_t: float, skip_t: float) -> tuple[int, int]:
    """(questions lost against full thinking, thinking tokens) of the whole policy on `qs`."""
    lost = tokens = 0
    for q in qs:
        ok, t, _ = simulate(q, ready_t, skip_t)
        lost += q["full"] and not ok
        tokens += t
    return lost, tokens


class _Tables:
    """Every question's outcome at every grid threshold, so a (ready, skip) pair's totals are one vector op.

    Index 0 of each table is NEVER; index k >= 1 is grid[k - 1].
    """

    def __init__(self, qs, grid, groups: list[int] | None = None):
        thresholds = [NEVER] + list(grid)
        self.group = torch.tensor(groups if groups is not None else [0] * len(qs), dtype=torch.long)  # [Q]
        self.n_groups = int(self.group.max()) + 1 if len(qs) else 1
        stops = [[simulate_stop(q, t) for t in thresholds] for q in qs]
        self.stop_ok = torch.tensor([[ok for ok, _ in row] for row in stops], dtype=torch.bool)  # [Q, G+1]
        self.stop_tok = torch.tensor([[t for _, t in row] for row in stops], dtype=torch.float64)  # [Q, G+1]
        skip = torch.tensor([q["skip"] for q in qs], dtype=torch.float64)  # [Q], NaN never skips
        self.skip_on = skip[:, None] >= torch.tensor(thresholds, dtype=torch.float64)[None, :]  # [Q, G+1]
        self.full = torch.tensor([q["full"] for q in qs], dtype=torch.bool)
        self.nothink = torch.tensor([q["nothink"] for q in qs], dtype=torch.bool)

    def totals(self, i: int, j: int) -> tuple[int, float]:
        """(questions lost, thinking tokens) with the ready threshold at index i and the skip one at j."""
        on = self.skip_on[:, j]
        ok = torch.where(on, self.nothink, self.stop_ok[:, i])
        tokens = torch.where(on, torch.zeros_like(self.stop_tok[:, i]), self.stop_tok[:, i])
        return int((self.full & ~ok).sum()), float(tokens.sum())

    def group_losses(self, i: int, j: int) -> torch.Tensor:
        """Questions lost in each group ([n_groups]) with the thresholds at indices i and j."""
        on = self.skip_on[:, j]
        lost = self.full & ~torch.where(on, self.nothink, self.stop_ok[:, i])
        return torch.bincount(self.group, weights=lost.double(), minlength=self.n_groups)


def build_path(qs, grid=PATH_GRID, skip_losses: float = 0.0, labels: list[str] | None = None) -> list[tuple[float, float]]:
    """(ready, skip) pairs from (NEVER, NEVER) to (grid[-1], grid[-1]), one grid step of one threshold at a
    time: the threshold whose way down (looking at every further step) saves thinking tokens on `qs` at the
    least cost in questions lost per token saved; among ways that lose nothing, the one saving most.

    skip_losses (> 0): before that, lower the skip threshold alone while skipping loses at most this many of `qs`.
    A skip saves a short thought, so by cost per token it comes late; this first leg reserves part of a
    rung's error budget for it, so that easy questions skip thinking outright (as a hybrid model does).
    Without questions the two thresholds move in lockstep.

    labels: each question's stratum, for a rung that must pass in every stratum. The skip leg then spends at most
    each stratum's share of skip_losses (pro rata to its questions), and a step's cost is the largest rise of a
    stratum's loss rate per share of tokens saved: a step whose losses fall in one stratum costs what it costs
    that stratum, which is where the calibration's walk will stop.
    """
    if not qs:
        return [(NEVER, NEVER)] + [(t, t) for t in grid]
    names = sorted(set(labels)) if labels is not None else [None]
    groups = [names.index(g) for g in labels] if labels is not None else None
    tab, last = _Tables(qs, grid, groups), len(grid)
    sizes = torch.bincount(tab.group, minlength=tab.n_groups).double()  # [G]
    at = [0, 0]
    path = [(NEVER, NEVER)]
    allowed = skip_losses * sizes / len(qs)  # [G], the leg's budget per stratum
    while skip_losses > 0 and at[1] < last and bool((tab.group_losses(0, at[1] + 1) <= allowed).all()):
        at[1] += 1  # ready stays at NEVER
        path.append((NEVER, grid[at[1] - 1]))
    while at != [last, last]:
        lost, tokens = tab.group_losses(*at), tab.totals(*at)[1]
        best = None
        for head in (0, 1):
            for k in range(at[head] + 1, last + 1):
                idx = list(at)
                idx[head] = k
                l2, t2 = tab.group_losses(*idx), tab.totals(*idx)[1]
                # the worst stratum's rise in loss rate, against the share of all tokens saved (one stratum:
                # questions lost per token saved, up to a constant)
                dl, ds = float(((l2 - lost) / sizes).max()), (tokens - t2) / len(qs)
                # a way that saves nothing here only risks losses on unseen questions: it comes after every
                # way that saves, however dear (else a free skip leg can end the walk before a cheap ready step)
                key = (0, dl / ds, -ds) if ds > 0 else (1, dl, 0.0)
                if best is None or key < best[0]:
                    best = (key, head)
        at[best[1]] += 1  # one step only, so the calibration's walk can stop anywhere on the way
        path.append(tuple(NEVER if k == 0 else grid[k - 1] for k in at))
    return path


def path_labels(path_qs, strata: Strata, path_cost: str) -> list[str] | None:
    """build_path's `labels`: each path question's stratum when the path is priced per stratum, else None."""
    if strata.by == "none" or path_cost != "per-stratum" or not path_qs:
        return None
    return [strata.label(q) for q in path_qs]


def _walk(losses_at, path, sizes: list[int], epsilon: float, delta: float,
          labels: list[str] | None = None) -> tuple[int, list[dict], str | None]:
    """Walk `path` from conservative to aggressive; a pair passes when every group's test rejects (losses_at
    gives each group's losses, `sizes` their questions). Returns (index of the last pair that passes, or -1;
    steps; the group whose test stopped the walk, None where the path ran out or there is one group)."""
    reached, steps = -1, []
    if not sizes:  # nothing can be tested: only (NEVER, NEVER), which loses nothing, is kept
        return reached, steps, None
    for i, (ready_t, skip_t) in enumerate(path):
        ks = losses_at(ready_t, skip_t)
        ps = [binom_cdf(k, n, epsilon) for k, n in zip(ks, sizes)]
        p = max(ps)
        step = {"ready": ready_t, "skip": skip_t, "losses": sum(ks), "p_value": p}
        if labels is not None:
            step["by_stratum"] = {g: {"losses": k, "p_value": pg} for g, k, pg in zip(labels, ks, ps)}
        steps.append(step)
        if p > delta:
            return reached, steps, labels[ps.index(p)] if labels is not None else None
        reached = i
    return reached, steps, None


def stratum_groups(qs: list[dict], strata: Strata, epsilon: float, delta: float) -> tuple[list, dict]:
    """The groups a pair's test must pass in ([(label, questions)]) and what is recorded about them.

    Each stratum with at least min_questions(epsilon, delta) questions is a group; the smaller ones form one
    group together if that has enough, else they are left out of the test (not covered). `none`: one group.
    """
    if strata.by == "none":
        return [("all", qs)], {}
    need = min_questions(epsilon, delta)
    by = defaultdict(list)
    for q in qs:
        by[strata.label(q)].append(q)
    labels = natural_order(by)
    groups = [(s, by[s]) for s in labels if len(by[s]) >= need]
    small = [s for s in labels if len(by[s]) < need]
    report = {"by": strata.spec, "min_questions": need, "sizes": {s: len(by[s]) for s in labels},
              "too_small": small, "tested_together": [], "not_covered": []}
    if small:
        rest = [q for s in small for q in by[s]]
        if len(rest) >= need:
            groups.append(("together: " + ", ".join(small), rest))
            report["tested_together"] = small
        else:
            report["not_covered"] = small
    return groups, report


def _achieved(qs, ready_t: float, skip_t: float) -> dict:
    """Accuracy, loss, thinking and skips of the whole policy on `qs`."""
    return achieved_by_pairs(qs, [(ready_t, skip_t)] * len(qs))


def achieved_by_pairs(qs, pairs: list[tuple[float, float]]) -> dict:
    """`_achieved` where each question runs its own (ready, skip) pair (a routed probe: its group's)."""
    n = len(qs)
    runs = [simulate(q, r, s) for q, (r, s) in zip(qs, pairs)]
    full_tokens = sum(q["length"] for q in qs) / n
    tokens = sum(r[1] for r in runs) / n
    return {
        "full_accuracy": sum(q["full"] for q in qs) / n,
        "policy_accuracy": sum(r[0] for r in runs) / n,
        "accuracy_lost": sum(q["full"] and not r[0] for q, r in zip(qs, runs)) / n,
        "full_think_tokens_mean": full_tokens,
        "policy_think_tokens_mean": tokens,
        "think_tokens_saved": 1 - tokens / full_tokens if full_tokens else 0.0,
        "skip_rate": sum(r[2] for r in runs) / n,
    }


def min_questions(epsilon: float, delta: float) -> int:
    """The fewest calibration questions with which even a loss-free pair can pass the test."""
    n = 1
    while (1 - epsilon) ** n > delta and n < 10**7:
        n += 1
    return n


def calibrate(records, ready, skip, is_calib, epsilon: float, delta: float, path_from=None, path=None,
              skip_share: float = 0.0, strata: Strata | str = "none", path_cost: str = "per-stratum") -> dict:
    """Thresholds for the ready and skip heads from the calibration questions' scores.

    path_from: a mask of records (never calibration ones) whose questions order the threshold pairs; None
    (or no such records): lockstep pairs. skip_share: the share of epsilon that path spends on skipping
    first (build_path's skip_losses). path: an already built path (build_path) instead.
    Records carrying `decoding` are tested per decoding mode (see the module docstring). strata: "none", a
    spec ("level", "category", "length:K") or a Strata; length bins are placed on path_from's questions unless
    the Strata already holds its cut points. path_cost: "per-stratum" | "pooled", how build_path prices a step
    under strata.
    """
    if not 0 < epsilon < 1 or not 0 < delta < 1:
        raise ValueError(f"epsilon={epsilon} and delta={delta} must both lie in (0, 1).")
    modes = sorted({r.get("decoding", "greedy") for r, c in zip(records, is_calib) if c})
    if not modes:
        raise ValueError("No calibration questions: collect more questions or raise the calibration fraction.")
    strata = parse_strata(strata)
    if path_from is not None and any(a and b for a, b in zip(path_from, is_calib)):
        raise ValueError("The threshold path must come from other questions than the calibration ones.")
    path_qs = questions_of(records, ready, skip, path_from) if path_from is not None else []
    if strata.by == "length" and strata.cuts is None:
        strata = strata.fit(path_qs)
    if path is None:
        path = build_path(path_qs, skip_losses=skip_share * epsilon * len(path_qs),
                          labels=path_labels(path_qs, strata, path_cost))
    by_decoding = {}
    for mode in modes:
        qs = questions_of(records, ready, skip,
                          [c and r.get("decoding", "greedy") == mode for r, c in zip(records, is_calib)])
        strata.check(qs)
        groups, report = stratum_groups(qs, strata, epsilon, delta)
        labels = [g for g, _ in groups] if strata.by != "none" else None
        reached, steps, stopped_by = _walk(lambda r, s: [_totals(g, r, s)[0] for _, g in groups], path,
                                           [len(g) for _, g in groups], epsilon, delta, labels)
        ready_t, skip_t = path[reached] if reached >= 0 else (NEVER, NEVER)
        by_decoding[mode] = {"n_questions": len(qs), "ready_threshold": ready_t, "skip_threshold": skip_t,
                             "achieved": _achieved(qs, ready_t, skip_t), "path_steps_taken": reached + 1,
                             "path_tail": steps[-3:]}
        if strata.by != "none":
            by_stratum = defaultdict(list)
            for q in qs:
                by_stratum[strata.label(q)].append(q)
            report["stopped_by"] = stopped_by
            report["achieved"] = {s: _achieved(by_stratum[s], ready_t, skip_t) for s in natural_order(by_stratum)}
            by_decoding[mode]["strata"] = report
    main = by_decoding["greedy" if "greedy" in by_decoding else modes[0]]
    return {
        "method": "learn-then-test (fixed sequence along a (ready, skip) path ordered on non-calibration questions, "
                  "binomial tail), one test of the whole policy per pair; thresholds per decoding mode"
                  + ("" if strata.by == "none" else "; a pair passes only if its test passes in every stratum "
                     "(intersection-union, each stratum at delta)"),
        "epsilon": epsilon,
        "delta": delta,
        "n_questions": main["n_questions"],
        "min_questions_for_any_threshold": min_questions(epsilon, delta),
        # the greedy mode's (the first mode's without greedy calibration questions); by_decoding has each mode's
        "ready_threshold": main["ready_threshold"],
        "skip_threshold": main["skip_threshold"],
        "achieved": main["achieved"],
        "path_steps_taken": main["path_steps_taken"],
        "path_tail": main["path_tail"],
        "decodings": modes,
        "by_decoding": by_decoding,
        "strata": strata.to_dict(),
    }
