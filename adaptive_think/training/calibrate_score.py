"""calibrate-score: a training-free score file (close-margin or entropy) calibrated into an effort ladder.

No heads are trained, so no hidden states are needed: the collection's records carry each checkpoint's logit
scores (training/collect.py, `--no-states` is enough). Questions are split by a seeded hash into path questions,
which order the (ready, skip) threshold pairs, and calibration questions, on which each rung's Learn-then-Test
walks that path (calibrate_ladder.py, the same code a trained probe's ladder goes through). The skip score
(the same score at the prompt's end) is kept only when it separates no-think successes from failures on the path
questions (AUROC >= SKIP_AUROC_MIN); otherwise the file never skips.

    probe = calibrate_score(["runs/score/collection"], "close-margin")
    probe.save_pretrained("runs/score")
"""

from __future__ import annotations

import hashlib
import time

import torch

from adaptive_think.probe.ladder import DEFAULT_RUNGS, parse_rungs
from adaptive_think.probe.probe import Probe
from adaptive_think.training.calibrate_ladder import CALIB, VAL, calibrate_ladder, question_identity
from adaptive_think.training.health import KIND_PROMPT
from adaptive_think.training.metrics import auroc
from adaptive_think.training.scoring import record_scores
from adaptive_think.training.shards import open_collections

SKIP_AUROC_MIN = 0.6  # a skip score that separates less than this is dropped (the file then never skips)


def split_path_calib(identities, seed: int, path_fraction: float) -> dict[str, str]:
    """question identity -> VAL (orders the path) | CALIB (tests it), by a seeded hash (stable, no leaks)."""
    if not 0 < path_fraction < 1:
        raise ValueError(f"path_fraction={path_fraction} must lie in (0, 1) (the share of questions ordering the path).")
    ordered = sorted(set(identities), key=lambda q: hashlib.sha256(f"{seed}:{q}".encode()).hexdigest())
    n_path = int(round(len(ordered) * path_fraction))
    if n_path < 1 or len(ordered) - n_path < 1:
        raise ValueError(f"Only {len(ordered)} questions collected: too few to split into path and calibration "
                         "questions; collect more.")
    return {q: VAL if i < n_path else CALIB for i, q in enumerate(ordered)}


def score_aurocs(records: list[dict], mask=None) -> dict:
    """AUROC of each training-free score at the labelled checkpoints (ready: forced-exit right vs wrong) and at
    the prompts (skip: no-think right vs wrong), on the records where mask holds (None: all)."""
    out = {}
    for kind in ("close-margin", "entropy"):
        ready, skip = record_scores(kind, records, skip=True)
        rows = [i for i, r in enumerate(records) if mask is None or mask[i]]
        cps = [i for i in rows if records[i]["kind"] != KIND_PROMPT and records[i]["label"] is not None]
        prompts = [i for i in rows if records[i]["kind"] == KIND_PROMPT]

        def area(idx, scores):
            if not idx:
                return float("nan")
            return auroc(torch.tensor([scores[i] for i in idx]).nan_to_num(0.0),
                         torch.tensor([bool(records[i]["label"]) for i in idx]))

        out[kind] = {"ready_auroc": area(cps, ready), "skip_auroc": area(prompts, skip),
                     "checkpoints": len(cps), "prompts": len(prompts)}
    return out


def calibrate_score(data, kind: str, efforts=DEFAULT_RUNGS, delta: float = 0.1, path_fraction: float = 0.3,
                    seed: int = 0, skip_share: float = 0.25, family_wise: bool = True, skip: str = "auto",
                    log=print, strata: str = "none", path_cost: str = "per-stratum", patience: str = "1") -> Probe:
    """A score file of `kind` calibrated on collection folder(s) `data` (not yet saved).

    skip: "auto" (keep the skip score when it separates on the path questions), "yes" or "no"; strata, path_cost,
    patience: as for a trained probe's ladder (calibrate_ladder).
    """
    if skip not in ("auto", "yes", "no"):
        raise ValueError(f"skip={skip!r} must be 'auto', 'yes' or 'no'.")
    t0 = time.time()
    folders = [data] if isinstance(data, str) else list(data)
    _, records, settings = open_collections(folders)  # records only: no hidden state is read
    rungs = parse_rungs(efforts, delta)
    split = split_path_calib([question_identity(r) for r in records], seed, path_fraction)
    part = [split[question_identity(r)] for r in records]
    aurocs = score_aurocs(records, [p == VAL for p in part])
    mine = aurocs[kind]
    log(f"{kind} on {sum(p == VAL for p, r in zip(part, records) if r['kind'] == KIND_PROMPT)} path questions: "
        f"ready AUROC {mine['ready_auroc']:.3f} ({mine['checkpoints']} checkpoints), skip AUROC "
        f"{mine['skip_auroc']:.3f}")
    keep_skip = skip == "yes" or (skip == "auto" and mine["skip_auroc"] >= SKIP_AUROC_MIN)
    from adaptive_think.training.train import seen_questions

    probe = Probe.training_free(kind, settings["fingerprint"], skip=keep_skip, provenance={
        "calibrated": True, "data": [str(f) for f in folders], "collections": settings["collections"],
        "score_config": {"kind": kind, "efforts": list(efforts), "delta": delta, "path_fraction": path_fraction,
                         "seed": seed, "skip_share": skip_share, "family_wise": family_wise, "skip": skip,
                         "strata": strata, "path_cost": path_cost, "patience": patience},
        "path_aurocs": aurocs,
        "skip_decision": (f"kept: skip AUROC {mine['skip_auroc']:.3f} >= {SKIP_AUROC_MIN}" if keep_skip and skip == "auto"
                          else "kept (asked)" if keep_skip else
                          "dropped (asked)" if skip == "no" else
                          f"dropped: skip AUROC {mine['skip_auroc']:.3f} < {SKIP_AUROC_MIN} (the file never skips)"),
        "collect_settings": {k: v for k, v in settings.items() if k not in ("fingerprint", "collections")},
        "questions_seen": seen_questions(records)})
    probe.policy_defaults = {"exit_text": settings.get("exit_text", "\n\n"), "stop_at_boundary": True}
    ready, skips = record_scores(kind, records, keep_skip)
    calibrate_ladder(probe, records, ready, skips, part, rungs, skip_share, family_wise, log, strata, path_cost,
                     patience=patience)
    probe.provenance["calibrate_seconds"] = round(time.time() - t0, 1)
    return probe
