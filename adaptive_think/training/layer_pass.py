"""`collect --token-states --token-layers auto`: a layer pass chooses the one layer whose thought-token states to keep.

The first N questions are collected with checkpoint states only into OUT/layer-pass (a collection of its own,
resumed like any other); train-probe's layer sweep (sweep.py), on train-probe's split of those questions, picks the
layer; the choice is written to OUT/layer-pass/choice.json, and the main collection into OUT keeps the token
states of that layer alone. A re-run reads choice.json instead of sweeping again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from adaptive_think.files import atomic_write
from adaptive_think.training.shards import open_collection, read_index
from adaptive_think.training.splits import question_identity, split_questions
from adaptive_think.training.sweep import Masks, sweep_layers
from adaptive_think.training.train_config import TrainConfig

LAYER_PASS_DIR = "layer-pass"
CHOICE_FILE = "choice.json"
DEFAULT_QUESTIONS = 64
MIN_TRAIN_CHECKPOINTS = 10  # as train-probe asks of its training split


def min_questions(cfg: TrainConfig) -> int:
    """The fewest questions train-probe's split (splits.py) can cut into training, validation and calibration."""
    for n in range(1, 1000):
        try:
            split_questions([str(i) for i in range(n)], cfg.seed, cfg.val_fraction, cfg.calib_fraction)
            return n
        except ValueError:
            continue
    raise ValueError(f"val_fraction={cfg.val_fraction}, calib_fraction={cfg.calib_fraction} leave no training part.")


def layer_pass_size(cfg, n: int, n_items: int, train_cfg: TrainConfig | None = None) -> int:
    """The layer pass's questions, `n` clipped to the `n_items` there are; refused when it cannot sweep."""
    if not cfg.token_states:
        raise ValueError("--token-layers auto chooses the layer of the thought-token states; add --token-states.")
    n = min(n, n_items)
    need = min_questions(train_cfg or TrainConfig())
    if n < need:
        raise ValueError(f"A layer pass of {n} questions is too small to sweep: train-probe's split into training, "
                         f"validation and calibration needs at least {need} (--layer-pass-questions, and --n).")
    return n


def choose_layer(folder: Path, cfg: TrainConfig, log: Callable[[str], None]) -> dict:
    """Sweep the layers of the collection in `folder` as train-probe does; the choice as choice.json holds it."""
    states, records, settings = open_collection(folder)
    split = split_questions([question_identity(r) for r in records], cfg.seed, cfg.val_fraction, cfg.calib_fraction)
    m = Masks.of(records, [split[question_identity(r)] for r in records])
    fit = m.ready_fit(cfg.ready_at_boundaries)
    have = int((fit & m.train).sum())
    if have < MIN_TRAIN_CHECKPOINTS or not (fit & m.val).any():
        raise ValueError(f"The layer pass in {folder} holds {have} thought checkpoints in its training split and "
                         f"{int((fit & m.val).sum())} in validation; the sweep needs at least {MIN_TRAIN_CHECKPOINTS} "
                         "and 1: give more --layer-pass-questions (or a smaller --every).")
    sweep, best = sweep_layers(states, m, settings["layers"], cfg, log)
    return {"layer": best.layer, "kind": best.kind, "ready_val_auroc": round(best.score, 4),
            "questions": len({r["qid"] for r in records}), "candidate_layers": settings["layers"], "seed": cfg.seed,
            "sweep": sweep}


def _refuse_other_token_layers(out: Path, layer: int | None) -> None:
    """Refuse when the main collection in `out` keeps other token layers than the layer pass chose."""
    index = read_index(out, 0)
    if index is None:
        return
    kept = index["settings"].get("token_layers")
    if layer is None or kept != [layer]:
        made = "without a layer pass" if layer is None else f"while the layer pass chose layer {layer}"
        raise ValueError(f"{out} holds a collection whose token states are of layers {kept}, made {made}; collect "
                         "with --token-layers auto into a new --out (or resume it with its own --token-layers).")


def collect_with_layer_pass(collect_fn: Callable, items: list, out, cfg, n: int = DEFAULT_QUESTIONS,
                            train_cfg: TrainConfig | None = None, log: Callable[[str], None] = print) -> dict:
    """Choose the token layer on the first `n` questions (clipped to those there are), then collect all of them.

    collect_fn(items, folder, cfg) -> summary: the engine's collect. cfg: the main collection's settings, with
    token_states and token_layers None. Returns the main collection's summary plus `layer_pass` (the choice).
    """
    train_cfg = train_cfg or TrainConfig()
    n = layer_pass_size(cfg, n, len(items), train_cfg)
    out = Path(out)
    folder = out / LAYER_PASS_DIR
    path = folder / CHOICE_FILE
    if path.exists():
        choice = json.loads(path.read_text())
        if choice["questions"] != n:
            raise ValueError(f"{path} chose layer {choice['layer']} on {choice['questions']} questions, but this run "
                             f"asks for a layer pass of {n}: give --layer-pass-questions {choice['questions']}, or "
                             "use a new --out.")
        _refuse_other_token_layers(out, choice["layer"])
        log(f"layer pass: layer {choice['layer']}, as chosen before ({path})")
    else:
        _refuse_other_token_layers(out, None)
        first = dataclasses.replace(cfg, token_states=False, token_layers=None, token_stride=1)
        collect_fn(items[:n], folder, first)
        choice = choose_layer(folder, train_cfg, log)
        text = json.dumps(choice, indent=1) + "\n"
        atomic_write(path, lambda p: Path(p).write_text(text))
    others = ", ".join(f"layer {s['layer']} {s['kind']} {s['ready_val_auroc']:.4f}" for s in choice["sweep"])
    log(f"layer pass: keeping the token states of layer {choice['layer']}: its {choice['kind']} ready head had the "
        f"best validation AUROC, {choice['ready_val_auroc']:.4f}, on {choice['questions']} questions ({others})")
    summary = collect_fn(items, out, dataclasses.replace(cfg, token_layers=[choice["layer"]]))
    return dict(summary, layer_pass={k: choice[k] for k in ("layer", "kind", "ready_val_auroc", "questions")})
