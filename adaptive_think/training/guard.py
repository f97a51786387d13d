"""fit-guard: fit a probe's out-of-distribution guard on in-distribution prompts and calibrate its threshold.

The guard (probe/guard.py) scores the prompt-end state of the probe's layer, in the probe's normalised features,
by a low-rank Mahalanobis distance. Fitting needs in-distribution prompt-end states only: one prefill per
question, no thoughts, no forced exits. The questions are split in two: `fit` questions give the mean, the
top-R principal directions and variances and the residual variance; the held-out `calibration` questions give
the threshold, the conformal quantile

    threshold = the ceil((n + 1)(1 - alpha))-th smallest of the n calibration scores,

so that a fresh in-distribution question (exchangeable with the calibration ones) scores above it with
probability at most alpha: at most alpha of in-distribution rows fall back. n must be at least
ceil((n + 1)(1 - alpha)), i.e. n >= 1/alpha - 1; fewer calibration questions are refused.

With strata (train-probe's --strata, e.g. one per task family), the threshold is the largest of the strata's own
conformal thresholds, so at most alpha of EACH stratum's rows fall back, not only of their calibration mix: a
pooled threshold lets a family whose prompts sit further from the mean fall back several times as often (on the
multi-family reasoner, 6.8% of `long_chain` calibration prompts against 0.5% of `last_digit` ones at alpha 0.03).
Strata too small to rank alone are ranked together as one group; a group still too small gets no threshold of
its own and is recorded as not covered.

    adaptive-think fit-guard --model bundled --probe P --n 600 --seed 5 --alpha 0.05 --out P2
    guard = fit_guard(x_fit, x_cal, rank=8, alpha=0.05)      # x: [N, D] normalised prompt-end features
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from adaptive_think.probe.guard import Guard

DEFAULT_RANK = 32  # on the bundled probe rank 8 missed 37% of two-digit prompts, rank 32 none (guard_ood.py)
DEFAULT_ALPHA = 0.03  # false alarms cost about alpha x the thinking saved: 1.7 points on the bundled probe
VAR_FLOOR = 1e-6  # a direction the fit prompts never moved in still gets a finite, large weight


def conformal_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)): the threshold is the k-th smallest of n calibration scores.

    ValueError when k > n (too few calibration scores for this alpha) or alpha is not in (0, 1)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must lie in (0, 1) (the false-alarm rate on in-distribution rows).")
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)  # the tolerance keeps exact products (n + 1 = 1/alpha) exact
    if k > n:
        need = math.ceil(1 / alpha - 1 - 1e-9)
        raise ValueError(f"{n} calibration questions are too few for alpha={alpha}: the conformal threshold is the "
                         f"ceil((n + 1)(1 - alpha)) = {k}-th smallest score, so n must be at least {need}. "
                         "Use more questions (--n) or a larger --calib-fraction, or raise alpha.")
    return k


def conformal_threshold(scores: torch.Tensor, alpha: float) -> float:
    """The conformal threshold of calibration scores [n]: their ceil((n + 1)(1 - alpha))-th smallest."""
    scores = scores.flatten().float()
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("calibration scores hold NaN or inf (a prompt whose hidden state is not finite); "
                         "drop those questions or check the model's dtype.")
    k = conformal_rank(scores.numel(), alpha)
    return float(torch.sort(scores).values[k - 1])


def stratified_threshold(scores: torch.Tensor, labels: list[str], alpha: float) -> tuple[float, dict]:
    """(threshold, record) of calibration scores [n] in strata `labels`: the largest of the strata's conformal
    thresholds (small strata pooled as one group, see the module doc). record: per stratum its count and threshold,
    and the strata left uncovered."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    need = math.ceil(1 / alpha - 1 - 1e-9)
    small = sorted(g for g, rows in groups.items() if len(rows) < need)
    if len(small) > 1:
        groups["small strata: " + ", ".join(small)] = [i for g in small for i in groups.pop(g)]
    record, uncovered = {}, []
    for g, rows in sorted(groups.items()):
        if len(rows) < need:
            uncovered.append(g)
            continue
        record[g] = {"n": len(rows), "threshold": conformal_threshold(scores[rows], alpha)}
    if not record:
        raise ValueError(f"No stratum holds the {need} calibration questions a conformal threshold at alpha={alpha} "
                         f"needs (strata: { {g: len(r) for g, r in groups.items()} }). Use more questions or no strata.")
    return max(r["threshold"] for r in record.values()), {"strata": record, "not_covered": uncovered}


def fit_shape(x_fit: torch.Tensor, rank: int) -> dict:
    """Mean [D], top-`rank` directions [R, D] and variances [R], residual variance of states x_fit [N, D]."""
    n, d = x_fit.shape
    if n < 2:
        raise ValueError(f"fitting a guard needs at least 2 in-distribution states, got {n}.")
    if not 0 <= rank < d:
        raise ValueError(f"rank={rank} must lie in [0, D - 1] = [0, {d - 1}] (the residual needs a direction left).")
    x = x_fit.double()
    mean = x.mean(0)
    y = x - mean
    _, s, vh = torch.linalg.svd(y, full_matrices=False)  # y = U S Vh; variance along Vh[j] is S_j^2 / (n - 1)
    var_all = s**2 / (n - 1)
    r = min(rank, vh.shape[0])
    var = var_all[:r].clamp_min(VAR_FLOOR)
    # the mean variance over the D - R directions left (those the SVD did not return have none in the fit data)
    res_var = max(float((var_all[r:].sum()) / (d - r)), VAR_FLOOR)
    return {"mean": mean.float(), "dirs": vh[:r].float().contiguous(), "var": var.float(), "res_var": res_var}


def fit_guard(x_fit: torch.Tensor, x_cal: torch.Tensor, rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA,
              provenance: dict | None = None, cal_strata: list[str] | None = None) -> Guard:
    """A guard fitted on x_fit [N, D] and calibrated on the held-out x_cal [n, D] (normalised prompt-end features);
    `cal_strata` (one label per calibration row): at most alpha of each stratum falls back (stratified_threshold).

    Example:
        >>> guard = fit_guard(x[:300], x[300:], rank=32, alpha=0.05); probe.guard = guard
    """
    conformal_rank(x_cal.shape[0], alpha)  # refuse too few calibration states before fitting
    ok = torch.isfinite(x_fit).all(-1)
    shape = fit_shape(x_fit[ok], rank)
    guard = Guard(threshold=float("inf"), alpha=alpha, n_fit=int(ok.sum()), n_calibration=int(x_cal.shape[0]),
                  provenance=dict(provenance or {}), **shape)
    scores = guard.score(x_cal)
    if cal_strata is None:
        guard.threshold = conformal_threshold(scores, alpha)
        guard.provenance["conformal_rank"] = conformal_rank(x_cal.shape[0], alpha)
        return guard
    if len(cal_strata) != x_cal.shape[0]:
        raise ValueError(f"cal_strata holds {len(cal_strata)} labels for {x_cal.shape[0]} calibration rows.")
    guard.threshold, guard.provenance["stratified"] = stratified_threshold(scores, list(cal_strata), alpha)
    return guard


def split_for_guard(n: int, calib_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit rows, calibration rows) of n questions: a seeded random split."""
    if not 0 < calib_fraction < 1:
        raise ValueError(f"calib_fraction={calib_fraction} must lie in (0, 1).")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_cal = round(n * calib_fraction)
    return order[n_cal:], order[:n_cal]


@torch.no_grad()
def prompt_states(model, tokenizer, questions: list[str], layer: int, batch_size: int = 32,
                  log: Callable[[str], None] = print) -> torch.Tensor:
    """[N, D] fp32: the hidden state of decoder layer `layer` at each question's prompt end (the chat template with
    thinking on: the state the controller reads at a row's step 0). One prefill per question, batched with left
    padding and the position ids generate() would use."""
    from adaptive_think.engines.layer_hook import LayerCapture
    from adaptive_think.loading import chat_prompt

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    with LayerCapture(model, layer, device="cpu") as cap:
        for i in range(0, len(questions), batch_size):
            prompts = [tokenizer.encode(chat_prompt(tokenizer, q), add_special_tokens=False)
                       for q in questions[i:i + batch_size]]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
            out.append(cap.hidden.float())
            log(f"prompt states: {min(i + batch_size, len(questions))}/{len(questions)}")
    return torch.cat(out)


def features(probe, hidden: torch.Tensor) -> torch.Tensor:
    """The probe's normalised features (h - mean) * inv_std of hidden states [N, D], fp32 (what the guard reads)."""
    from adaptive_think.controller.step import normalised

    return normalised(hidden, probe.tensors(hidden.device))


def guard_from_collection(probe, hidden: torch.Tensor, fit_rows: torch.Tensor, cal_rows: torch.Tensor,
                          rank: int = DEFAULT_RANK, alpha: float = DEFAULT_ALPHA, log=print,
                          strata: list[str] | None = None) -> Guard | None:
    """The guard train-probe fits from its collection's prompt-end states at the chosen layer (fit: training
    questions, calibration: calibration questions); None, with a note, when too few calibration prompts.
    strata: one label per row (None: one stratum), to hold alpha in each calibration stratum."""
    x = features(probe, hidden)
    cal_rows = cal_rows & torch.isfinite(x).all(-1)  # a non-finite prompt state has no score to rank
    n_cal = int(cal_rows.sum())
    try:
        conformal_rank(n_cal, alpha)
    except ValueError as err:
        log(f"no guard: {err}")
        return None
    cal_strata = None if strata is None else [s for s, c in zip(strata, cal_rows.tolist()) if c]
    guard = fit_guard(x[fit_rows], x[cal_rows], rank=min(rank, x.shape[1] - 1), alpha=alpha,
                      provenance={"fitted_by": "train-probe", "fit": "training questions' prompts",
                                  "calibration": "calibration questions' prompts"}, cal_strata=cal_strata)
    log(f"guard: rank {guard.rank}, threshold {guard.threshold:.2f} (alpha {alpha}, {guard.n_fit} fit / "
        f"{guard.n_calibration} calibration prompts)")
    for g, r in guard.provenance.get("stratified", {}).get("strata", {}).items():
        log(f"guard stratum {g}: {r['n']} calibration prompts, own threshold {r['threshold']:.2f}")
    for g in guard.provenance.get("stratified", {}).get("not_covered", []):
        log(f"guard stratum {g}: too few calibration prompts for a threshold of its own (not covered)")
    return guard
