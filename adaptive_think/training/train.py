"""train-probe: fit the `ready` and `skip` heads on collected checkpoints, sweep layers, calibrate, save.

Questions (not checkpoints) are split into train / validation / calibration, so no question leaks.
For every candidate layer a linear probe and a small MLP are fitted on normalised features; the layer
and kind with the best validation AUROC of the ready head win; each effort rung's thresholds come from
its own `calibrate.py` run (ladder.py). The probe records the content hashes of every question it was
collected on, so `eval` can leave them out.

    adaptive-think train-probe --data runs/collect --out runs/probe --efforts high:0.005 medium:0.02 low:0.05
    adaptive-think train-probe --data runs/collect runs/collect-sampled --out runs/probe   # greedy + sampled

Several collections of one model train one probe; a sampled collection makes every rung hold under
sampling as well as greedy decoding (calibrate.py tests each decoding mode).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from adaptive_think.training.calibrate_ladder import calibrate_ladder
from adaptive_think.training.guard import guard_from_collection
from adaptive_think.training.splits import (CALIB, TRAIN, VAL, assign_parts, calibration_only_summary, question_identity,
                                            seen_questions, split_questions)
from adaptive_think.training.train_config import TrainConfig
from adaptive_think.training.memory import ThoughtSet, fit_memory_head, thought_key
from adaptive_think.training.health import DOCTOR, KIND_PROMPT, KIND_THOUGHT, diagnose, format_summary, summarise
from adaptive_think.training.metrics import auroc, recall_at_no_false_positive
from adaptive_think.probe.probe import Probe
from adaptive_think.training.scoring import collection_scores
from adaptive_think.training.shards import load_collections


class _Head(nn.Module):
    def __init__(self, d: int, width: int, kind: str):
        super().__init__()
        self.kind = kind
        self.fc1 = nn.Linear(d, width if kind == "mlp" else 1)
        self.fc2 = nn.Linear(width, 1) if kind == "mlp" else None

    def forward(self, x):
        z = self.fc1(x)
        return self.fc2(torch.relu(z)).squeeze(-1) if self.fc2 is not None else z.squeeze(-1)


def fit_head(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, kind: str, cfg: TrainConfig,
             neg_weight: float = 1.0):
    """Full-batch Adam on BCE, negatives weighted `neg_weight`; keeps the epoch with the best validation loss.
    Returns (head, val AUROC)."""
    torch.manual_seed(cfg.seed)
    head = _Head(x.shape[1], cfg.width, kind)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    w, wv = (torch.where(t.bool(), 1.0, neg_weight) for t in (y, yv))
    best, best_state = float("inf"), None
    for _ in range(cfg.epochs):
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(head(x), y.float(), weight=w)
        loss.backward()
        opt.step()
        with torch.no_grad():
            vloss = (F.binary_cross_entropy_with_logits(head(xv), yv.float(), weight=wv).item() if len(yv)
                     else loss.item())
        if vloss < best:
            best, best_state = vloss, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    with torch.no_grad():
        score = auroc(head(xv), yv) if len(yv) else float("nan")
    return head, score


def head_weights(head: _Head, width: int) -> dict[str, torch.Tensor]:
    """A head as (w1 [H, D], b1 [H], w2 [H], b2 [1]) in the ReLU-MLP layout, padded to `width` rows.

    A linear head w.x + b becomes relu(w.x + b) - relu(-w.x - b): exact, so both heads share one kind.
    """
    with torch.no_grad():
        if head.kind == "mlp":
            w1, b1 = head.fc1.weight, head.fc1.bias
            w2, b2 = head.fc2.weight[0], head.fc2.bias
        else:
            w, b = head.fc1.weight[0], head.fc1.bias
            w1, b1 = torch.stack([w, -w]), torch.cat([b, -b])
            w2, b2 = torch.tensor([1.0, -1.0]), torch.zeros(1)
        pad = width - w1.shape[0]
        return {
            "w1": torch.cat([w1, torch.zeros(pad, w1.shape[1])]),
            "b1": torch.cat([b1, torch.zeros(pad)]),
            "w2": torch.cat([w2, torch.zeros(pad)]),
            "b2": b2.reshape(1).clone(),
        }


def _why_too_few(records: list[dict], settings: dict) -> str:
    """What the collected data says about why it holds so few checkpoints (health.py's diagnosis)."""
    health = summarise(records)
    cause = diagnose(health, settings.get("markers"), settings.get("max_new_tokens"))
    if cause is None:
        return f"collect more questions ({format_summary(health)})"
    return f"{cause[1]}; more questions will not help ({format_summary(health)}); check the model with {DOCTOR}"


def train_probe(data_dir, cfg: TrainConfig | None = None, log=print, calib_data=()) -> Probe:
    """Train, sweep layers, calibrate on one collection folder or several; returns the probe (not yet saved).

    calib_data: calibration-only collection folders (never trained or validated on; calibrate_ladder.py).
    """
    cfg = cfg or TrainConfig()
    t0 = time.time()
    data = [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
    calib_data = [calib_data] if isinstance(calib_data, (str, Path)) else list(calib_data)
    hidden, records, settings = load_collections(data + calib_data)
    for i, c in enumerate(settings["collections"]):
        c["role"] = "training" if i < len(data) else "calibration only"
        log(f"data: {c['data']} ({c['decoding']}, {c['role']}): {c['questions']} questions, {c['records']} records")
    rungs = cfg.rungs()  # validate before training
    # split by question content where the collection hashed it: a question drawn twice stays on one side
    split = split_questions([question_identity(r) for r in records if r["source"] < len(data)], cfg.seed,
                            cfg.val_fraction, cfg.calib_fraction)
    part = assign_parts(records, len(data), split)
    if calib_data:
        extra = calibration_only_summary(records, part, len(data), calib_data)
        log(f"calibration-only questions: {extra['questions']}, {extra['dropped_seen_in_training']} dropped "
            "(also training or validation questions)")
    kind = torch.tensor([r["kind"] for r in records])
    label = torch.tensor([bool(r["label"]) for r in records])
    is_train = torch.tensor([p == TRAIN for p in part])
    is_val = torch.tensor([p == VAL for p in part])
    thought, prompt = kind == KIND_THOUGHT, kind == KIND_PROMPT
    is_boundary = torch.tensor([bool(r.get("boundary")) for r in records])
    if int((thought & is_train).sum()) < 10:
        where = ", ".join(str(d) for d in data)
        raise ValueError(f"{where} holds too few thought checkpoints to train on "
                         f"({int((thought & is_train).sum())} in the training split): {_why_too_few(records, settings)}.")

    sweep = []
    best = None
    for layer in settings["layers"]:
        h = hidden[f"layer{layer}"]
        ok = torch.isfinite(h).all(-1)
        mean = h[is_train & ok].mean(0)
        std = h[is_train & ok].std(0).clamp_min(1e-4)
        x = (h - mean) / std
        for k in cfg.kinds:
            fit = thought & (is_boundary if cfg.ready_at_boundaries else torch.ones_like(thought))
            head, score = fit_head(x[fit & is_train], label[fit & is_train], x[fit & is_val], label[fit & is_val], k, cfg,
                                   cfg.neg_weight)
            sweep.append({"layer": layer, "kind": k, "ready_val_auroc": round(score, 4)})
            log(f"layer {layer:3d} {k:6s} ready val AUROC {score:.4f}")
            if best is None or score > best[0]:
                best = (score, layer, k, head, mean, std, x)
    score, layer, k, ready, mean, std, x = best
    # the skip head is used at a high threshold, so rank kinds by how many no-think successes they
    # separate from every validation failure that full thinking would have avoided; AUROC breaks ties
    full_ok = torch.tensor([bool(r["full_correct"]) for r in records])
    skip_heads = []
    for sk in cfg.kinds:
        head, s = fit_head(x[prompt & is_train], label[prompt & is_train], x[prompt & is_val], label[prompt & is_val],
                           sk, cfg)
        sel = prompt & is_val & (label | full_ok)
        with torch.no_grad():
            sep = recall_at_no_false_positive(head(x[sel]), label[sel]) if bool(sel.any()) else float("nan")
        skip_heads.append(((sep if sep == sep else -1.0, s if s == s else -1.0), sk, head))
        log(f"skip head {sk:6s} val AUROC {s:.4f}, separable no-think successes {sep:.3f}")
    (_, skip_auc), skip_kind, skip = max(skip_heads, key=lambda t: t[0])
    log(f"chosen: layer {layer} ({k}), ready val AUROC {score:.4f}; skip head {skip_kind} val AUROC {skip_auc:.4f}")

    width = max(cfg.width if "mlp" in (k, skip_kind) or cfg.memory else 2, 2)
    weights = {"mean": mean, "inv_std": 1.0 / std}
    for name, head in (("ready", ready), ("skip", skip)):
        for part_name, t in head_weights(head, width).items():
            weights[f"{name}_{part_name}"] = t
    memory = None
    if cfg.memory:  # the memory head replaces the memoryless ready head, on the layer the sweep chose
        thoughts = ThoughtSet.from_collection(hidden, records, layer)
        part_of = {thought_key(r): p for r, p in zip(records, part)}
        memory, memory_loss = fit_memory_head(thoughts, records, part_of, mean, std, cfg.memory, cfg)
        weights.update(memory.export(width))
        fitted = Counter(part_of[q] for q in thoughts.states)
        log(f"ready head with memory ({cfg.memory} features) on layer {layer}: fitted on {fitted[TRAIN]} thoughts "
            f"(validation {fitted[VAL]}), best val loss {memory_loss:.4f}")
    probe = Probe(layer=layer, kind="mlp", weights=weights, fingerprint=settings["fingerprint"],
                  provenance={"data": [str(d) for d in data],
                              "collections": settings["collections"], "train_config": asdict(cfg), "layer_sweep": sweep,
                              "chosen": {"layer": layer, "ready_kind": "memory" if memory else k, "skip_kind": skip_kind,
                                         "ready_val_auroc": score, "skip_val_auroc": skip_auc,
                                         **({"memory_size": cfg.memory, "memory_val_loss": memory_loss} if memory else {})},
                              "collect_settings": {kk: v for kk, v in settings.items()
                                                   if kk not in ("fingerprint", "collections")},
                              "questions_seen": seen_questions(records)})
    if calib_data:
        probe.provenance["calibration_only"] = extra
    ready_l, skip_l = collection_scores(probe, hidden, records)  # as the controller scores them online
    calibrate_ladder(probe, records, ready_l, skip_l, part, rungs, cfg.skip_share, cfg.family_wise, log, cfg.strata)
    # the out-of-distribution guard, from the prompt-end states of the chosen layer (training/guard.py)
    probe.guard = guard_from_collection(probe, hidden[f"layer{layer}"], prompt & is_train,
                                        prompt & torch.tensor([p == CALIB for p in part]), log=log)
    probe.provenance["train_seconds"] = round(time.time() - t0, 1)
    return probe
