"""`Route`: which calibration group a prompt belongs to, so that each group keeps thresholds of its own.

One probe calibrated on several kinds of question (task families) with one pair of thresholds per rung is held
back by its hardest kind: a pair must keep the rung's promise on every family (--strata category), so the family
whose early stops go wrong soonest sets the pair for all. A route splits the rows instead. It is a linear
classifier on the probe's normalised features of the prompt-end state (the features the skip head and the guard
read), fitted on the training questions' prompts with each question's group (its category):

    group = argmax_g (route_w x + route_b)_g        x = (h - mean) * inv_std at the prompt's last position

and each group's thresholds are calibrated on the calibration questions the route sends there
(training/calibrate_ladder.py). The controller routes a probe row at its step 0 and the row keeps its group for
the whole request (controller/step.py `route_rows`); a row the guard flags still runs its fallback instead.

In a probe file the route is two tensors in probe.safetensors (`route_w` [G, D], `route_b` [G]) and a `route`
section in probe.json (the groups' names in order, what they are by, and the fit's accuracy).

    >>> probe.route.groups, probe.route.assign(x)       # x [B, D] normalised features -> [B] group indices
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

WEIGHT_NAMES = ("route_w", "route_b")


@dataclass
class Route:
    """A fitted route: w [G, D], b [G] and the names of its G groups, in order."""

    w: torch.Tensor
    b: torch.Tensor
    groups: list[str]
    by: str = "category"  # the question field the groups are (strata.py's names)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        g = len(self.groups)
        if g < 2 or len(set(self.groups)) != g:
            raise ValueError(f"A route needs at least two distinct groups, got {self.groups}.")
        if self.w.dim() != 2 or self.w.shape[0] != g or tuple(self.b.shape) != (g,):
            raise ValueError(f"Route shapes: w [G, D], b [G] with G = {g} groups {self.groups}; got "
                             f"{tuple(self.w.shape)}, {tuple(self.b.shape)}.")

    @property
    def hidden_size(self) -> int:
        return int(self.w.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        """The `ProbeTensors` fields of the route (fp32, CPU)."""
        return {"route_w": self.w.float().contiguous(), "route_b": self.b.float().contiguous()}

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, D] normalised features -> [B] int64 group indices (the controller's rule)."""
        from adaptive_think.controller.step import route_groups

        t = SimpleNamespace(**{k: v.to(x.device) for k, v in self.tensors().items()})
        return route_groups(x.float(), t)

    def index(self, group: str) -> int:
        if group not in self.groups:
            raise ValueError(f"{group!r} is not a group of this probe's route; its groups are {self.groups}.")
        return self.groups.index(group)

    # -- file --------------------------------------------------------------------------------------

    def weights(self) -> dict[str, torch.Tensor]:
        return self.tensors()

    def config(self) -> dict:
        return {"groups": list(self.groups), "by": self.by, "provenance": self.provenance,
                "rule": "group = argmax(route_w x + route_b), x the probe's normalised prompt-end features; "
                        "each group runs its own calibrated thresholds (ladder[].thresholds_by_group)"}

    @classmethod
    def from_file(cls, weights: dict[str, torch.Tensor], cfg: dict, where: str) -> "Route":
        """The route of a probe file (its tensors and probe.json's `route` section); ValueError naming what is wrong."""
        missing = [n for n in WEIGHT_NAMES if n not in weights]
        if missing or not isinstance(cfg, dict) or not isinstance(cfg.get("groups"), list):
            raise ValueError(f"{where}: the probe's route is incomplete (missing tensors {missing} or probe.json's "
                             "route.groups). Re-calibrate it with `adaptive-think calibrate --route category`.")
        return cls(w=weights["route_w"], b=weights["route_b"], groups=[str(g) for g in cfg["groups"]],
                   by=str(cfg.get("by", "category")), provenance=cfg.get("provenance", {}))
