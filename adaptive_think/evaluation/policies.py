"""Policy specs for `adaptive-think eval`: "full", "none", "budget:64", "marker", "confidence:0.95",
"probe" (calibrated thresholds) and "probe:0.7" (another ready threshold)."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("full", "none", "budget", "marker", "confidence", "probe")


@dataclass(frozen=True)
class PolicySpec:
    name: str
    kind: str
    value: float | None = None  # budget cap, confidence threshold, or probe threshold


def parse_policy(text: str) -> PolicySpec:
    kind, _, value = text.partition(":")
    if kind not in KINDS:
        raise ValueError(f"Unknown policy {text!r}; use one of {KINDS}, with a value where it takes one (budget:64).")
    if kind in ("full", "none", "marker") and value:
        raise ValueError(f"Policy {kind!r} takes no value (got {text!r}).")
    if kind == "budget" and not value:
        raise ValueError(f"Policy 'budget' needs a cap, e.g. budget:64 (got {text!r}).")
    if kind == "confidence" and not value:
        raise ValueError(f"Policy 'confidence' needs a threshold, e.g. confidence:0.95 (got {text!r}).")
    num = None
    if value:
        try:
            num = float(value)
        except ValueError:
            raise ValueError(f"Policy {text!r}: {value!r} is not a number.") from None
        if kind == "budget" and (num < 0 or num != int(num)):
            raise ValueError(f"Policy {text!r}: the budget must be a whole number >= 0.")
        if kind in ("confidence", "probe") and not 0 <= num <= 1:
            raise ValueError(f"Policy {text!r}: the threshold must lie in [0, 1].")
    return PolicySpec(text, kind, num)


def default_policies(full_think_mean: float, has_probe: bool) -> list[str]:
    caps = sorted({max(1, int(round(full_think_mean * f))) for f in (0.2, 0.35, 0.5, 0.65, 0.8)})
    out = ["full", "none"] + [f"budget:{c}" for c in caps] + ["marker"]
    out += [f"confidence:{t}" for t in (0.8, 0.9, 0.95, 0.99)]
    if has_probe:
        out += ["probe"] + [f"probe:{t}" for t in (0.1, 0.2, 0.25, 0.3, 0.35, 0.5, 0.65, 0.8, 0.9, 0.97)]
    return out
