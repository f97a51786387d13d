"""The layer sweep: a ready head of every kind fitted on every candidate layer; the best validation AUROC wins.

train-probe runs it on the collections it trains on; `collect --token-layers auto` runs it on a first pass of
checkpoint states to choose the one layer whose every thought-token state it then keeps. One layer is read at a
time (resident in memory when the budget allows, else streamed from the shards chunk by chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptive_think.training.heads import fit_head
from adaptive_think.training.health import KIND_PROMPT, KIND_THOUGHT
from adaptive_think.training.rows import Rows, budget_of, column_stats, resident, working_bytes
from adaptive_think.training.splits import TRAIN, VAL


@dataclass
class Masks:
    """Per record [N]: its kind, label and split, as the heads select their rows."""

    thought: torch.Tensor
    prompt: torch.Tensor
    label: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    boundary: torch.Tensor

    @classmethod
    def of(cls, records: list[dict], part: list[str]) -> "Masks":
        kind = torch.tensor([r["kind"] for r in records])
        return cls(thought=kind == KIND_THOUGHT, prompt=kind == KIND_PROMPT,
                   label=torch.tensor([bool(r["label"]) for r in records]),
                   train=torch.tensor([p == TRAIN for p in part]), val=torch.tensor([p == VAL for p in part]),
                   boundary=torch.tensor([bool(r.get("boundary")) for r in records]))

    def ready_fit(self, at_boundaries: bool) -> torch.Tensor:
        """The records the ready head is fitted on: thought checkpoints (at step boundaries only, if asked)."""
        return self.thought & (self.boundary if at_boundaries else torch.ones_like(self.thought))


@dataclass
class LayerChoice:
    score: float
    layer: int
    kind: str
    head: torch.nn.Module
    mean: torch.Tensor  # [D] over the layer's finite training rows
    std: torch.Tensor  # [D]


def layer_rows(h, mask: torch.Tensor, masks: Masks, mean, std, cfg, budget) -> Rows:
    """The rows `mask` [N] of layer states `h`, normalised, labelled, in cfg.chunk_rows chunks."""
    index = mask.nonzero()[:, 0]
    return Rows(h, index, mean, std, masks.label[index], cfg.chunk_rows, budget, cfg.width)


def chunk_reserve(states, key: str, cfg) -> int:
    """The budget a layer's fits need beside the layer itself (one chunk's working set)."""
    return working_bytes(cfg.chunk_rows, states[key].shape[1], cfg.width)


def sweep_layers(states, masks: Masks, layers, cfg, log=print) -> tuple[list[dict], LayerChoice]:
    """Fit the ready head of every kind in cfg.kinds on every layer; ([{layer, kind, ready_val_auroc}], the best).

    states: StoredStates or {"layer{l}": [N, D]}; masks: of the same N records.
    """
    budget = budget_of(states)
    fit = masks.ready_fit(cfg.ready_at_boundaries)
    sweep, best = [], None
    for layer in layers:
        key = f"layer{layer}"
        h = states[key]
        with resident(states, key, chunk_reserve(states, key, cfg)):
            mean, std = column_stats(h, masks.train.nonzero()[:, 0], cfg.chunk_rows, budget)
            train = layer_rows(h, fit & masks.train, masks, mean, std, cfg, budget)
            val = layer_rows(h, fit & masks.val, masks, mean, std, cfg, budget)
            for k in cfg.kinds:
                head, score = fit_head(train, None, val, None, k, cfg, cfg.neg_weight)
                sweep.append({"layer": layer, "kind": k, "ready_val_auroc": round(score, 4)})
                log(f"layer {layer:3d} {k:6s} ready val AUROC {score:.4f}")
                if best is None or score > best.score:
                    best = LayerChoice(score, layer, k, head, mean, std)
    return sweep, best
