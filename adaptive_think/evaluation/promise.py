"""Each effort rung against its promise on the evaluated questions: pooled, per level and per the probe's strata.

The rungs are the probe's (`effort:NAME`, `probe`) and each calibrated training-free score file's
(`score-effort:KIND:NAME`, checked against that file's epsilon and per that file's strata).

The loss is what calibration bounds: the share of questions that full thinking answers right and the rung does
not (paired on the same questions, same decoding). Each loss comes with its exact (Clopper-Pearson) 95%
interval and a verdict against the rung's epsilon: `below` (the whole interval is below epsilon), `above` (the
whole interval is above: the promise is broken here), `consistent` otherwise (too few questions to tell).
The pooled row is the evaluated mix: `eval --levels 4 5 6` evaluates a hard-only mix.

    report = promise_report(full_rows, {"effort:high": [True, False, ...]}, probe)
    report = promise_report(full_rows, outcomes, probe, {"close-margin": score_file})   # score rungs too
"""

from __future__ import annotations

from collections import defaultdict

from adaptive_think.evaluation.policies import NO_GUARD
from adaptive_think.training.metrics import binom_interval
from adaptive_think.training.strata import natural_order, strata_from_record

CONFIDENCE = 0.95


def loss_row(full: list[bool], ok: list[bool], epsilon: float) -> dict:
    """n, questions lost against full thinking, their share with its interval, the verdict, and accuracy points
    (full minus policy, which also counts the questions the policy gets right and full thinking does not)."""
    n = len(full)
    lost = sum(f and not o for f, o in zip(full, ok))
    lo, hi = binom_interval(lost, n, CONFIDENCE)
    verdict = "below" if hi < epsilon else "above" if lo > epsilon else "consistent"
    return {"n": n, "lost": lost, "loss": lost / n, "interval": [lo, hi], "epsilon": epsilon, "verdict": verdict,
            "accuracy_points_lost": 100 * (sum(full) - sum(ok)) / n}


def _rung_of(name: str, probe, score_probes: dict | None = None):
    """(rung, the file it belongs to) a policy name runs: "effort:NAME" or "probe" (the default rung) of the probe,
    "score-effort:KIND:NAME" of the KIND score file; (None, None) for other policies or files not passed. A rung run
    with the guard off (NAME+noguard) is held to the same promise."""
    name = name.removesuffix(NO_GUARD)
    kind, _, rest = name.partition(":")
    if kind == "score-effort":
        score, _, rung = rest.partition(":")
        owner = (score_probes or {}).get(score)
    else:
        owner, rung = probe, probe.default_effort if probe is not None and name == "probe" else rest
        if kind not in ("effort", "probe") or (kind == "probe" and rest):
            return None, None
    if owner is None or not owner.ladder:
        return None, None
    got = {r.name: r for r in owner.ladder}.get(rung)
    return (got, owner) if got is not None else (None, None)


def _probe_strata(probe):
    """The strata the probe was calibrated with (as recorded by its rungs), or None."""
    for r in probe.ladder:
        s = strata_from_record(r.calibration.get("strata"))
        if s.by != "none":
            return s
    return None


def promise_report(full_rows: list[dict], outcomes: dict[str, list[bool]], probe,
                   score_probes: dict | None = None) -> dict:
    """{policy: {rung, epsilon, pooled, per_level, per_stratum?, per_category?}} for every rung policy with
    per-question outcomes.

    full_rows: the `full` run's rows (level, category, think, correct), in question order; outcomes: each policy's
    per-question correctness in the same order. per_stratum: the rung's own file's strata where they are not levels
    (thought-length bins placed by its calibration, read from the full run's thought; categories). per_category:
    each question category (a task family, a question file's "category") when the questions hold more than one.
    score_probes: {kind: calibrated score file} whose rungs `score-effort:KIND:NAME` are checked the same way.
    """
    if not full_rows:
        return {}
    full = [bool(r["correct"]) for r in full_rows]
    out = {}
    for name, ok in outcomes.items():
        rung, owner = _rung_of(name, probe, score_probes)
        if rung is None:
            continue
        strata = _probe_strata(owner)
        if len(ok) != len(full):
            raise ValueError(f"{name}: {len(ok)} outcomes for {len(full)} full-thinking rows; run them on the same "
                             "questions.")
        row = {"rung": rung.name, "epsilon": rung.epsilon, "pooled": loss_row(full, ok, rung.epsilon)}
        keys = {"per_level": [f"level {r['level']}" for r in full_rows]}
        if strata is not None and strata.by != "level":
            keys["per_stratum"] = [strata.label({"level": r["level"], "category": r.get("category"),
                                                 "length": r["think"]}) for r in full_rows]
        categories = [r.get("category") or "(none)" for r in full_rows]
        if len(set(categories)) > 1 and not (strata is not None and strata.by == "category"):
            # a mix of task families or question sources: each is its own deployment, reported on its own
            keys["per_category"] = [f"category {c}" for c in categories]
        for field, labels in keys.items():
            groups = defaultdict(list)
            for i, s in enumerate(labels):
                groups[s].append(i)
            row[field] = {s: loss_row([full[i] for i in groups[s]], [ok[i] for i in groups[s]], rung.epsilon)
                          for s in natural_order(groups)}
        if strata is not None:
            row["strata"] = strata.spec
        out[name] = row
    return out


def format_promise(report: dict, decoding: str) -> str:
    """One line per rung and group: loss against full thinking, its 95% interval, epsilon, the verdict."""
    if not report:
        return ""
    lines = [f"promise ({decoding}): questions lost against full thinking, exact 95% interval, vs epsilon"]
    for name, row in report.items():
        groups = [("all evaluated", row["pooled"])] + list(row["per_level"].items())
        groups += list(row.get("per_stratum", {}).items()) + list(row.get("per_category", {}).items())
        for label, g in groups:
            lo, hi = g["interval"]
            lines.append(f"  {name:14s} {label:26s} n {g['n']:5d}  lost {g['lost']:4d} = {g['loss']:.4f} "
                         f"[{lo:.4f}, {hi:.4f}]  eps {g['epsilon']:.4f}  {g['verdict']}")
    return "\n".join(lines)
