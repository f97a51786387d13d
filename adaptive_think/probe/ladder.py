"""Effort ladder: several calibrated operating points of one probe, picked by name (`effort="high"`).

Each rung is calibrated with its own Learn-then-Test run: `epsilon` is the accuracy it may lose against
full thinking, `delta` the probability that it loses more. `high` loses least, `low` saves most. The
default rung is the least conservative one whose guarantee meets the project's promise (at most
PROMISE accuracy lost); a ladder where none does falls back to its most conservative rung.

    >>> rungs = parse_rungs(["high:0.005:0.05", "medium:0.02", "low:0.05"], default_delta=0.1)
    >>> rungs[0]
    ('high', 0.005, 0.05)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from adaptive_think.config import DECODINGS

# The promise of effort "high" (and of a probe's default rung): at most half an accuracy point lost.
PROMISE = 0.005
DEFAULT_RUNGS = ("high:0.005:0.1", "medium:0.02:0.1", "low:0.05:0.1")


@dataclass(frozen=True)
class Rung:
    """One calibrated operating point: thresholds and the Learn-then-Test result that chose them."""

    name: str
    epsilon: float
    delta: float
    ready_threshold: float
    skip_threshold: float
    calibration: dict = field(default_factory=dict, compare=False)
    # (ready, skip) calibrated under each decoding mode ("greedy", "sampled"); {}: the one pair above, greedy
    by_decoding: dict = field(default_factory=dict, compare=False)
    # a probe with a route (route.py): {group: {decoding: (ready, skip)}}, each group's own pairs; the pairs above
    # are then the most conservative of the groups' (what a row runs where no group is known)
    by_group: dict = field(default_factory=dict, compare=False)

    @property
    def meets_promise(self) -> bool:
        return self.epsilon <= PROMISE

    def pair(self, decoding: str = "greedy") -> tuple[float, float]:
        """(ready, skip) calibrated for `decoding`; a rung calibrated on greedy labels only warns under sampling."""
        if decoding not in DECODINGS:
            raise ValueError(f"decoding={decoding!r} is not one of {DECODINGS}.")
        if decoding in self.by_decoding:
            return self.by_decoding[decoding]
        if decoding == "sampled":
            warnings.warn(f"effort {self.name!r} was calibrated on greedy decoding only; under sampling its "
                          f"{self.epsilon:g} accuracy-loss promise is not calibrated (answers after an early stop are "
                          "less sure when sampled). Retrain the probe with a sampled collection "
                          "(`adaptive-think collect --do-sample ...`, then `train-probe --data GREEDY SAMPLED`).",
                          stacklevel=4)
        return self.ready_threshold, self.skip_threshold

    def group_pairs(self, groups: list[str], decoding: str = "greedy") -> list[tuple[float, float]]:
        """[(ready, skip)] calibrated for `decoding` in each of `groups` (a route's, in its order)."""
        if decoding not in DECODINGS:
            raise ValueError(f"decoding={decoding!r} is not one of {DECODINGS}.")
        missing = [g for g in groups if g not in self.by_group]
        if missing:
            raise ValueError(f"effort {self.name!r} has no thresholds for route group(s) {missing}; re-calibrate "
                             "the probe (`adaptive-think calibrate --route ...`).")
        out = []
        for g in groups:
            pairs = self.by_group[g]
            if decoding not in pairs:
                return [self.pair(decoding)] * len(groups)  # not calibrated per group under this decoding
            out.append(pairs[decoding])
        return out

    def to_dict(self) -> dict:
        out = {"name": self.name, "epsilon": self.epsilon, "delta": self.delta,
               "thresholds": {"ready": self.ready_threshold, "skip": self.skip_threshold},
               "calibration": self.calibration}
        if self.by_decoding:
            out["thresholds_by_decoding"] = {m: {"ready": r, "skip": s} for m, (r, s) in self.by_decoding.items()}
        if self.by_group:
            out["thresholds_by_group"] = {g: {m: {"ready": r, "skip": s} for m, (r, s) in pairs.items()}
                                          for g, pairs in self.by_group.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict, where: str = "probe.json") -> "Rung":
        try:
            by = {str(m): (float(t["ready"]), float(t["skip"])) for m, t in (d.get("thresholds_by_decoding") or {}).items()}
            groups = {str(g): {str(m): (float(t["ready"]), float(t["skip"])) for m, t in pairs.items()}
                      for g, pairs in (d.get("thresholds_by_group") or {}).items()}
            unknown = sorted((set(by) | {m for pairs in groups.values() for m in pairs}) - set(DECODINGS))
            if unknown:
                raise ValueError(f"unknown decoding mode(s) {unknown}")
            return cls(name=str(d["name"]), epsilon=float(d["epsilon"]), delta=float(d["delta"]),
                       ready_threshold=float(d["thresholds"]["ready"]), skip_threshold=float(d["thresholds"]["skip"]),
                       calibration=d.get("calibration", {}), by_decoding=by, by_group=groups)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{where}: a ladder rung is malformed ({err!r}); each needs name, epsilon, delta and "
                             "thresholds {ready, skip} (and optionally thresholds_by_decoding {greedy|sampled: "
                             "{ready, skip}} and thresholds_by_group {group: {greedy|sampled: {ready, skip}}}). "
                             "Re-save the probe.") from None


def parse_rungs(specs, default_delta: float) -> list[tuple[str, float, float]]:
    """["name:epsilon[:delta]", ...] -> [(name, epsilon, delta)], most conservative first."""
    out = []
    for spec in specs:
        parts = str(spec).split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError(f"Effort rung {spec!r} must look like name:epsilon or name:epsilon:delta (e.g. high:0.002:0.05).")
        try:
            eps = float(parts[1])
            dlt = float(parts[2]) if len(parts) == 3 else float(default_delta)
        except ValueError:
            raise ValueError(f"Effort rung {spec!r}: epsilon and delta must be numbers.") from None
        if not 0 < eps < 1 or not 0 < dlt < 1:
            raise ValueError(f"Effort rung {spec!r}: epsilon and delta must both lie in (0, 1).")
        out.append((parts[0], eps, dlt))
    names = [r[0] for r in out]
    if not out:
        raise ValueError("An effort ladder needs at least one rung.")
    if len(set(names)) != len(names):
        raise ValueError(f"Effort rung names must be unique, got {names}.")
    return sorted(out, key=lambda r: (r[1], r[2]))


def default_rung(rungs: list[Rung]) -> Rung:
    """The least conservative rung meeting PROMISE; else the most conservative rung."""
    meeting = [r for r in rungs if r.meets_promise]
    if meeting:
        return max(meeting, key=lambda r: (r.epsilon, r.delta))
    return min(rungs, key=lambda r: (r.epsilon, r.delta))


def select_rung(rungs: list[Rung], effort: str | None, default: str | None) -> Rung | None:
    """The rung named `effort` (None: the default rung); None when the probe has no ladder and no effort is asked."""
    if not rungs:
        if effort is None:
            return None
        raise ValueError(
            f"effort={effort!r} needs a probe with an effort ladder, but this probe holds one calibrated point "
            "(an older probe file). Give thresholds instead (threshold=..., skip_threshold=...), or retrain it with "
            "`adaptive-think train-probe --efforts high:0.005 medium:0.02 low:0.05`."
        )
    by_name = {r.name: r for r in rungs}
    name = effort if effort is not None else default
    if name not in by_name:
        raise ValueError(f"effort={name!r} is not a rung of this probe; its rungs are {sorted(by_name)}.")
    return by_name[name]
