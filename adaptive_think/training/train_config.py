"""`TrainConfig`: every setting of train-probe (recorded in the probe's provenance, reused by `calibrate`)."""

from __future__ import annotations

from dataclasses import dataclass

from adaptive_think.probe.ladder import DEFAULT_RUNGS, parse_rungs
from adaptive_think.training.route import ROUTE_BY
from adaptive_think.training.patience import parse_patience
from adaptive_think.training.strata import parse_strata

PATH_COSTS = ("per-stratum", "pooled")


@dataclass
class TrainConfig:
    seed: int = 0
    width: int = 64  # MLP hidden width
    epochs: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-3
    val_fraction: float = 0.15
    calib_fraction: float = 0.35
    efforts: tuple[str, ...] = DEFAULT_RUNGS  # "name:epsilon[:delta]": accuracy lost vs full, at most epsilon
    delta: float = 0.1  # ... with probability at least 1 - delta (rungs that name no delta)
    epsilon: float | None = None  # one rung named "custom" with this epsilon instead of `efforts`
    kinds: tuple[str, ...] = ("linear", "mlp")
    ready_at_boundaries: bool = False  # fit the ready head on step-boundary checkpoints only (where it stops)
    # share of each rung's error budget its threshold path spends on skipping first (calibrate.build_path)
    skip_share: float = 0.25
    # ready head's loss weight of a negative (a checkpoint whose forced answer is wrong) against a positive's 1:
    # the head is used at high thresholds, where one false positive early in a thought loses the question
    neg_weight: float = 4.0
    # K > 0: the ready head also reads a running maximum of K learned features of every earlier thought token
    # (memory.py; needs collections made with --token-states); 0: the memoryless head
    memory: int = 0
    # C > 0: C more memory units count instead (a running sum of sigmoid(feature), memory.py): passes, checks
    memory_counts: int = 0
    # the memory head's optimisation: 0 = full batch (one step an epoch), N = one step per N training thoughts;
    # its epochs and learning rate (None: `epochs`, `lr`)
    memory_batch: int = 0
    memory_epochs: int | None = None
    memory_lr: float | None = None
    # every rung under every decoding mode holds at once with probability >= 1 - delta (calibrate_ladder.py)
    family_wise: bool = True
    # strata of the calibration questions in each of which every rung's test must pass (strata.py): two bins of
    # the full thought's length keep every rung within epsilon on easy-only and hard-only mixes, for well under a
    # point of thinking saved (docs/training.md, "Calibration by strata")
    strata: str = "length:2"
    # how the threshold path prices a step under strata: "per-stratum" (the largest rise of a stratum's loss rate,
    # what the stratified test will see) or "pooled" (questions lost over all strata); calibrate.build_path
    path_cost: str = "per-stratum"
    # "none", or the question field ("category", "level") whose values are the route's groups: each group gets
    # thresholds of its own, placed online by the probe's route from the prompt-end state (training/route.py)
    route: str = "none"
    # boundaries in a row over the threshold before a probe stop, "K" or "greedy=K1,sampled=K2" (training/patience.py):
    # waiting one more step removes the losses of a head that fires a step early, at the cost of that step
    patience: str = "1"
    # rows (checkpoints; padded thought tokens for a head with memory) per chunk of a full-batch gradient: sums
    # run chunk by chunk in this fixed cut, so the heads do not depend on --max-memory (budget.py)
    chunk_rows: int = 8192

    def rungs(self) -> list[tuple[str, float, float]]:
        """(name, epsilon, delta) of every rung to calibrate, most conservative first."""
        if not self.neg_weight > 0:
            raise ValueError(f"neg_weight={self.neg_weight} must be positive (the loss weight of a wrong checkpoint "
                             "against a right one's 1; 1 is plain binary cross-entropy).")
        if not 0 <= self.skip_share <= 1:
            raise ValueError(f"skip_share={self.skip_share} must lie in [0, 1] (the share of a rung's epsilon "
                             "spent on skipping first; 0 orders the path by cost per token alone).")
        if not (isinstance(self.memory, int) and self.memory >= 0):
            raise ValueError(f"memory={self.memory!r} must be a whole number >= 0 (the features a ready head with "
                             "memory keeps; 0 for none).")
        if not (isinstance(self.memory_counts, int) and self.memory_counts >= 0):
            raise ValueError(f"memory_counts={self.memory_counts!r} must be a whole number >= 0 (the counting units "
                             "of a ready head with memory; 0 for none).")
        if not (isinstance(self.memory_batch, int) and self.memory_batch >= 0):
            raise ValueError(f"memory_batch={self.memory_batch!r} must be a whole number >= 0 (training thoughts per "
                             "step of the memory head; 0 for full batch).")
        if self.memory_epochs is not None and not (isinstance(self.memory_epochs, int) and self.memory_epochs >= 1):
            raise ValueError(f"memory_epochs={self.memory_epochs!r} must be a whole number >= 1 (or None: epochs).")
        if self.memory_lr is not None and not self.memory_lr > 0:
            raise ValueError(f"memory_lr={self.memory_lr!r} must be positive (or None: lr).")
        if self.memory_counts and not self.memory:
            raise ValueError(f"memory_counts={self.memory_counts} needs a head with memory (memory > 0, --memory K).")
        parse_strata(self.strata)
        parse_patience(self.patience)  # a bad spec fails here, not after the heads are trained
        if self.path_cost not in PATH_COSTS:
            raise ValueError(f"path_cost={self.path_cost!r} must be one of {', '.join(PATH_COSTS)}.")
        if self.route not in ("none",) + ROUTE_BY:
            raise ValueError(f"route={self.route!r} must be 'none' or one of {', '.join(ROUTE_BY)}.")
        if not (isinstance(self.chunk_rows, int) and self.chunk_rows >= 1):
            raise ValueError(f"chunk_rows={self.chunk_rows!r} must be a whole number >= 1 (rows per gradient chunk).")
        specs = (f"custom:{self.epsilon}",) if self.epsilon is not None else self.efforts
        return parse_rungs(specs, self.delta)
