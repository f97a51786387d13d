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

Hidden states stay in the collection's shards and are read one layer at a time (stored.py), within a memory
budget (`--max-memory`, budget.py): a layer, the normalised rows and the thought batches stay in memory while
they fit, else they are read again chunk by chunk. Every full-batch gradient is summed over chunks of
`chunk_rows` rows in a fixed order (rows.py), so the probe is the same whatever the budget.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch

from adaptive_think.training.budget import MemoryBudget
from adaptive_think.training.calibrate import questions_of
from adaptive_think.training.calibrate_ladder import calibrate_ladder
from adaptive_think.training.route import fit_route, route_groups
from adaptive_think.training.guard import guard_from_collection
from adaptive_think.training.heads import fit_head, head_logits, head_weights  # noqa: F401 (fit_head: the API)
from adaptive_think.training.splits import (CALIB, TRAIN, VAL, assign_parts, calibration_only_summary, question_identity,
                                            seen_questions, split_questions)
from adaptive_think.training.train_config import TrainConfig
from adaptive_think.training.memory import ThoughtSet, fit_memory_head, memory_reserve, thought_key
from adaptive_think.training.health import DOCTOR, diagnose, format_summary, summarise
from adaptive_think.training.metrics import recall_at_no_false_positive
from adaptive_think.probe.probe import Probe
from adaptive_think.training.rows import resident
from adaptive_think.training.scoring import collection_scores
from adaptive_think.training.shards import THOUGHT_PREFIX, open_collections
from adaptive_think.training.strata import parse_strata
from adaptive_think.training.sweep import Masks, chunk_reserve, layer_rows, sweep_layers


def _why_too_few(records: list[dict], settings: dict) -> str:
    """What the collected data says about why it holds so few checkpoints (health.py's diagnosis)."""
    health = summarise(records)
    cause = diagnose(health, settings.get("markers"), settings.get("max_new_tokens"))
    if cause is None:
        return f"collect more questions ({format_summary(health)})"
    return f"{cause[1]}; more questions will not help ({format_summary(health)}); check the model with {DOCTOR}"


def train_probe(data_dir, cfg: TrainConfig | None = None, log=print, calib_data=(),
                budget: MemoryBudget | None = None) -> Probe:
    """Train, sweep layers, calibrate on one collection folder or several; returns the probe (not yet saved).

    calib_data: calibration-only collection folders (never trained or validated on; calibrate_ladder.py).
    budget: the most hidden-state bytes held at once (budget.py; None: no limit); the heads do not depend on it.
    """
    cfg = cfg or TrainConfig()
    budget = budget or MemoryBudget(None)
    t0 = time.time()
    data = [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
    calib_data = [calib_data] if isinstance(calib_data, (str, Path)) else list(calib_data)
    states, records, settings = open_collections(data + calib_data, budget)
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
    m = Masks.of(records, part)
    if int((m.thought & m.train).sum()) < 10:
        where = ", ".join(str(d) for d in data)
        raise ValueError(f"{where} holds too few thought checkpoints to train on "
                         f"({int((m.thought & m.train).sum())} in the training split): {_why_too_few(records, settings)}.")

    layers = settings["layers"]
    kept = sorted(int(key[len(THOUGHT_PREFIX):]) for key in states if key.startswith(THOUGHT_PREFIX))
    if cfg.memory and kept and set(kept) != set(layers):
        # a head with memory trains on thought-token states: only the layers the collection kept them for qualify
        layers = [layer for layer in layers if layer in kept]
        log(f"layer sweep: layers {layers} only, the ones whose thought-token states were collected (--token-layers)")
    sweep, best = sweep_layers(states, m, layers, cfg, log)
    score, layer, k, ready, mean, std = best.score, best.layer, best.kind, best.head, best.mean, best.std
    # the skip head is used at a high threshold, so rank kinds by how many no-think successes they
    # separate from every validation failure that full thinking would have avoided; AUROC breaks ties
    full_ok = torch.tensor([bool(r["full_correct"]) for r in records])
    skip_heads = []
    key = f"layer{layer}"
    h = states[key]
    with resident(states, key, chunk_reserve(states, key, cfg)):
        train, val = (layer_rows(h, m.prompt & p, m, mean, std, cfg, budget) for p in (m.train, m.val))
        sel = layer_rows(h, m.prompt & m.val & (m.label | full_ok), m, mean, std, cfg, budget)
        for sk in cfg.kinds:
            head, s = fit_head(train, None, val, None, sk, cfg)
            sep = recall_at_no_false_positive(head_logits(head, sel), sel.y) if len(sel) else float("nan")
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
        thoughts = ThoughtSet.from_collection(states, records, layer)
        part_of = {thought_key(r): p for r, p in zip(records, part)}
        with resident(states, f"{THOUGHT_PREFIX}{layer}", memory_reserve(thoughts, cfg)):
            memory, memory_loss = fit_memory_head(thoughts, records, part_of, mean, std, cfg.memory, cfg, budget)
        weights.update(memory.export(width))
        fitted = Counter(part_of[q] for q in thoughts.states)
        log(f"ready head with memory ({cfg.memory} maxima, {cfg.memory_counts} counts) on layer {layer}: fitted on {fitted[TRAIN]} thoughts "
            f"(validation {fitted[VAL]}), best val loss {memory_loss:.4f}")
    probe = Probe(layer=layer, kind="mlp", weights=weights, fingerprint=settings["fingerprint"],
                  provenance={"data": [str(d) for d in data],
                              "collections": settings["collections"], "train_config": asdict(cfg), "layer_sweep": sweep,
                              "chosen": {"layer": layer, "ready_kind": "memory" if memory else k, "skip_kind": skip_kind,
                                         "ready_val_auroc": score, "skip_val_auroc": skip_auc,
                                         **({"memory_size": cfg.memory + cfg.memory_counts, "memory_counts": cfg.memory_counts,
                                             "memory_val_loss": memory_loss} if memory else {})},
                              "collect_settings": {kk: v for kk, v in settings.items()
                                                   if kk not in ("fingerprint", "collections")},
                              "questions_seen": seen_questions(records)})
    if calib_data:
        probe.provenance["calibration_only"] = extra
    ready_l, skip_l = collection_scores(probe, states, records, cfg.chunk_rows)  # as the controller scores online
    groups = None
    if cfg.route != "none":  # each group's own thresholds, placed by the prompt-end state (training/route.py)
        probe.route = fit_route(probe, states, records, part, cfg.route, log)
        groups = route_groups(probe, probe.route, states, records)
    calibrate_ladder(probe, records, ready_l, skip_l, part, rungs, cfg.skip_share, cfg.family_wise, log, cfg.strata,
                     cfg.path_cost, groups, cfg.patience)
    # the out-of-distribution guard, from the prompt-end states of the chosen layer (training/guard.py)
    at = m.prompt.nonzero().squeeze(-1)  # only the prompt records' rows are read: one per question
    with budget.hold(len(at) * states[key].shape[1] * 4 * 2, "the prompt states the guard is fitted on"):
        probe.guard = guard_from_collection(probe, states[key][at].float(), m.train[at],
                                            torch.tensor([part[i] == CALIB for i in at.tolist()]), log=log,
                                            strata=guard_strata(records, ready_l, skip_l, part, at, cfg.strata))
    probe.provenance["train_seconds"] = round(time.time() - t0, 1)
    probe.provenance["hidden_state_peak_bytes"] = budget.peak
    log(f"hidden states held at most {budget.peak / 2**20:.1f} MB at once (budget "
        + ("none" if budget.limit == float("inf") else f"{budget.limit / 2**20:.0f} MB") + ")")
    return probe


def guard_strata(records: list[dict], ready, skip, part: list[str], rows: torch.Tensor, spec: str) -> list[str] | None:
    """The calibration stratum of each of the prompt records `rows` (None without strata): the guard holds its
    false-alarm rate in each stratum the ladder's promises are tested in. Length bins take the ladder's cut points."""
    strata = parse_strata(spec)
    if strata.by == "none":
        return None
    strata = strata.fit(questions_of(records, ready, skip, [p in (TRAIN, VAL) for p in part]))
    return [strata.label({"level": records[i].get("level", 0), "category": records[i].get("category"),
                          "length": int(records[i]["thought_len"])}) for i in rows.tolist()]
