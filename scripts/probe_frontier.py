"""How much thinking could any ready head save at a given risk? The stop-only frontier of several heads.

For each head variant (every collected layer, linear and MLP; all layers concatenated; labels "right here"
or "right here and at every later checkpoint"), fit on the training questions of a collection (train.py's
split), then on its calibration questions sweep every threshold of the calibration grid and report the
largest share of thinking saved on questions of level >= --min-level while at most L questions are lost
(stops only, no skips), next to the oracle's share. A frontier far below the oracle's at the losses a
rung may spend means the hidden state, not the calibration, limits the saving.

    python scripts/probe_frontier.py --data runs/bundled_probe/greedy --min-level 2
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from adaptive_think.evaluation.oracle import oracle_point
from adaptive_think.probe.calibrate import PATH_GRID, questions_of, simulate_stop
from adaptive_think.probe.health import KIND_THOUGHT
from adaptive_think.probe.shards import load_collections
from adaptive_think.probe.train import TrainConfig, fit_head, split_questions

LOSSES = (0, 1, 2, 3, 6, 12)


def settled_labels(records: list[dict], label: torch.Tensor) -> torch.Tensor:
    """Per checkpoint: right here and at every later checkpoint of its question."""
    out = label.clone()
    by_question = defaultdict(list)
    for i, r in enumerate(records):
        if r["kind"] == KIND_THOUGHT:
            by_question[(r["decoding"], r["qid"])].append((r["pos"], i))
    for rows in by_question.values():
        ok = True
        for _, i in sorted(rows, reverse=True):
            ok = ok and bool(label[i])
            out[i] = ok
    return out


def frontier(records, scores: list[float], calib: list[bool], min_level: int) -> dict:
    """Largest share of thinking saved on levels >= min_level with at most L questions lost, for each L."""
    qs = questions_of(records, scores, [0.0] * len(scores), calib)
    hard = [q for q in qs if q["level"] >= min_level]
    full = sum(q["length"] for q in hard)
    best = {L: 0.0 for L in LOSSES}
    for t in PATH_GRID:
        lost = sum(q["full"] and not simulate_stop(q, t)[0] for q in qs)
        saved = 1 - sum(simulate_stop(q, t)[1] for q in hard) / full
        for L in LOSSES:
            if lost <= L:
                best[L] = max(best[L], saved)
    oracle = sum(oracle_point(q["full"], False, [(p, ok) for p, _, ok in q["cps"]], q["length"]) for q in hard)
    return {"questions": len(qs), "hard_questions": len(hard), "saved_at_losses": best, "oracle_saved": 1 - oracle / full}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True, help="collection folder(s), as for train-probe")
    ap.add_argument("--min-level", type=int, default=2, help="report the saving on questions of this level and up")
    ap.add_argument("--val-fraction", type=float, default=0.15)
    ap.add_argument("--calib-fraction", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--neg-weight", type=float, default=TrainConfig.neg_weight,
                    help="loss weight of a wrong checkpoint, as for train-probe (default %(default)s; 1 is plain BCE)")
    args = ap.parse_args()
    hidden, records, settings = load_collections(args.data)
    split = split_questions([r.get("qhash") or r["qid"] for r in records], args.seed, args.val_fraction,
                            args.calib_fraction)
    part = [split[r.get("qhash") or r["qid"]] for r in records]
    thought = torch.tensor([r["kind"] == KIND_THOUGHT for r in records])
    train = thought & torch.tensor([p == "train" for p in part])
    val = thought & torch.tensor([p == "val" for p in part])
    calib = [p == "calib" for p in part]
    label = torch.tensor([bool(r["label"]) for r in records])
    settled = settled_labels(records, label)
    feats = {}
    for layer in settings["layers"]:
        h = hidden[f"layer{layer}"]
        feats[f"layer{layer}"] = (h - h[train].mean(0)) / h[train].std(0).clamp_min(1e-4)
    feats["layers " + "+".join(map(str, settings["layers"]))] = torch.cat(list(feats.values()), -1)
    cfg = TrainConfig(seed=args.seed, neg_weight=args.neg_weight)
    cfg.rungs()  # validates neg_weight
    variants = [(name, kind, "here") for name in feats for kind in ("linear", "mlp")]
    variants.append((f"layer{settings['layers'][-1]}", "mlp", "settled"))
    rows = []
    for name, kind, which in variants:
        y = label if which == "here" else settled
        x = feats[name]
        head, auroc = fit_head(x[train], y[train], x[val], y[val], kind, cfg, cfg.neg_weight)
        with torch.no_grad():
            scores = torch.sigmoid(head(x)).tolist()
        got = frontier(records, scores, calib, args.min_level)
        rows.append({"features": name, "kind": kind, "label": which, "val_auroc": round(auroc, 4), **got})
        at = " ".join(f"L{k}:{v:.3f}" for k, v in got["saved_at_losses"].items())
        print(f"{name:14s} {kind:6s} label {which:7s} AUROC {auroc:.3f} | saved on level >= {args.min_level} at <= L "
              f"lost of {got['questions']}: {at} | oracle {got['oracle_saved']:.3f}", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
