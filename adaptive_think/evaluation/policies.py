"""Policy specs for `adaptive-think eval`, by the names the eval JSON uses (other tools read them).

    full             never intervene                      none          empty think block for every row
    budget:N         hard cap of N thinking tokens        marker        stop after the first stated answer
    confidence:X     DEER-style trial-answer confidence   probe         the probe's default calibrated rung
    probe:X          the probe with ready threshold X     effort:NAME   the probe's rung NAME (high/medium/low)
    router           the skip head alone (query-level routing), never stops mid-thought
    stops:NAME       rung NAME's stops alone, never skipping (router + stops = effort:NAME)
    consistency:M    stop once M consecutive trial answers agree (trials at step boundaries)
    consistency:M:K  ... trials every K thinking tokens
    oracle           per question, the earliest point after which a forced exit is right and stays right
                     (computed from the full thoughts, not run)
    score:KIND:X     training-free score KIND (close-margin | entropy) with ready threshold X, uncalibrated
                     (no accuracy guarantee, never skips; needs no file)
    score-effort:KIND:NAME  rung NAME of the calibrated score file of KIND (eval --score-file)
    POLICY+noguard   a probe policy (probe, probe:X, effort:NAME, stops:NAME, router) with the probe's
                     out-of-distribution guard off: what the probe alone does where it was never trained

`check_policies` says, before anything is generated, which requested policies cannot run here and why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from adaptive_think.controller.state import SCORE_KINDS

KINDS = ("full", "none", "budget", "marker", "confidence", "probe", "effort", "stops", "router", "consistency", "oracle",
         "score", "score-effort")
SCORE_SWEEP = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)  # default uncalibrated thresholds of each score file's kind
NO_VALUE = ("full", "none", "marker", "router", "oracle")
NEEDS_PROBE = ("probe", "effort", "stops", "router")
NO_GUARD = "+noguard"


@dataclass(frozen=True)
class PolicySpec:
    name: str
    kind: str
    value: float | None = None  # budget cap, confidence / probe threshold, or consistency's M
    effort: str | None = None  # effort:NAME
    every: int | None = None  # consistency:M:K, trial interval in thinking tokens (None: step boundaries)
    score: str | None = None  # score:KIND:X and score-effort:KIND:NAME, the training-free score's kind
    guard: bool | None = None  # False: the probe's guard off (POLICY+noguard); None: the probe's own


def _number(text: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"Policy {text!r}: {value!r} is not a number.") from None


def parse_policy(text: str) -> PolicySpec:
    if text.endswith(NO_GUARD):
        spec = parse_policy(text[: -len(NO_GUARD)])
        if spec.kind not in NEEDS_PROBE:
            raise ValueError(f"Policy {text!r}: {NO_GUARD} turns a probe's guard off, so it applies to "
                             f"{', '.join(NEEDS_PROBE)} only (e.g. effort:high{NO_GUARD}).")
        return replace(spec, name=text, guard=False)
    kind, _, value = text.partition(":")
    if kind not in KINDS:
        raise ValueError(f"Unknown policy {text!r}; use one of {KINDS}, with a value where it takes one (budget:64).")
    if kind in NO_VALUE and value:
        raise ValueError(f"Policy {kind!r} takes no value (got {text!r}).")
    if kind == "budget" and not value:
        raise ValueError(f"Policy 'budget' needs a cap, e.g. budget:64 (got {text!r}).")
    if kind == "confidence" and not value:
        raise ValueError(f"Policy 'confidence' needs a threshold, e.g. confidence:0.95 (got {text!r}).")
    if kind in ("score", "score-effort"):
        score, _, rest = value.partition(":")
        example = "score:close-margin:0.05" if kind == "score" else "score-effort:close-margin:high"
        if score not in SCORE_KINDS or not rest or ":" in rest:
            raise ValueError(f"Policy {text!r}: give a training-free score {SCORE_KINDS} and "
                             f"{'a threshold' if kind == 'score' else 'a rung name'}, e.g. {example}.")
        if kind == "score-effort":
            return PolicySpec(text, kind, effort=rest, score=score)
        num = _number(text, rest)
        if not 0 <= num <= 1:
            raise ValueError(f"Policy {text!r}: the threshold must lie in [0, 1].")
        return PolicySpec(text, kind, num, score=score)
    if kind in ("effort", "stops"):
        if not value or ":" in value:
            raise ValueError(f"Policy {kind!r} needs one rung name, e.g. {kind}:high (got {text!r}).")
        return PolicySpec(text, kind, effort=value)
    if kind == "consistency":
        m, _, k = value.partition(":")
        if not m:
            raise ValueError(f"Policy 'consistency' needs M agreeing trial answers, e.g. consistency:3 (got {text!r}).")
        num, every = _number(text, m), _number(text, k) if k else None
        if num < 2 or num != int(num):
            raise ValueError(f"Policy {text!r}: M must be a whole number >= 2 (trial answers that must agree).")
        if every is not None and (every < 1 or every != int(every)):
            raise ValueError(f"Policy {text!r}: the trial interval K must be a whole number >= 1.")
        return PolicySpec(text, kind, float(int(num)), every=int(every) if every is not None else None)
    num = _number(text, value) if value else None
    if kind == "budget" and (num < 0 or num != int(num)):
        raise ValueError(f"Policy {text!r}: the budget must be a whole number >= 0.")
    if kind in ("confidence", "probe") and num is not None and not 0 <= num <= 1:
        raise ValueError(f"Policy {text!r}: the threshold must lie in [0, 1].")
    return PolicySpec(text, kind, num)


def check_policies(specs: list[PolicySpec], *, has_probe: bool, efforts: list[str], has_pattern: bool,
                   score_efforts: dict[str, list[str]] | None = None) -> dict[str, str]:
    """{policy name: why it cannot run here} for every spec that cannot (empty: all can). score_efforts: the rungs
    of each calibrated score file passed, by kind."""
    why = {}
    score_efforts = score_efforts or {}
    for s in specs:
        if s.kind == "score-effort" and s.score not in score_efforts:
            why[s.name] = f"needs a calibrated {s.score} score file (pass --score-file; `adaptive-think calibrate-score`)"
        elif s.kind == "score-effort" and s.effort not in score_efforts[s.score]:
            why[s.name] = f"the {s.score} score file has no rung {s.effort!r} (its rungs: {score_efforts[s.score]})"
        elif s.kind in NEEDS_PROBE and not has_probe:
            why[s.name] = "needs a probe (pass --probe)"
        elif s.kind in ("effort", "stops") and s.effort not in efforts:
            why[s.name] = (f"the probe has no rung {s.effort!r} (its rungs: {efforts})" if efforts else
                           "the probe has no effort ladder (an older single-point probe): use `probe` or probe:X")
        elif s.kind == "marker" and not has_pattern:
            why[s.name] = "needs the task's answer pattern, which only the bundled tasks have"
    return why


def default_policies(full_think_mean: float, has_probe: bool, efforts: list[str] | None = None,
                     score_efforts: dict[str, list[str]] | None = None) -> list[str]:
    """The default sweep: every family, the probe's rungs and thresholds, the router, each score file's rungs and
    a threshold sweep of its score, the oracle."""
    caps = sorted({max(1, int(round(full_think_mean * f))) for f in (0.2, 0.35, 0.5, 0.65, 0.8)})
    out = ["full", "none"] + [f"budget:{c}" for c in caps] + ["marker"]
    out += [f"confidence:{t}" for t in (0.8, 0.9, 0.95, 0.99)]
    out += [f"consistency:{m}" for m in (2, 3, 4)]
    if has_probe:
        out += [f"effort:{e}" for e in efforts] + [f"stops:{e}" for e in efforts] if efforts else ["probe"]
        out += ["router"] + [f"probe:{t}" for t in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.65, 0.8, 0.9, 0.95, 0.97, 0.99)]
    for kind, rungs in (score_efforts or {}).items():
        out += [f"score-effort:{kind}:{e}" for e in rungs] + [f"score:{kind}:{t}" for t in SCORE_SWEEP]
    return out + ["oracle"]
