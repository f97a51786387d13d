"""What `eval` reports: per-policy summaries, the probe against the baselines on the accuracy-vs-forward-
tokens plane, each rung's share of the oracle's saving, the table, the plot and the JSON file.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from adaptive_think.evaluation.policies import NO_GUARD

BASELINES = ("budget", "marker", "confidence", "consistency", "router")
PROBE_FAMILY = ("probe", "effort", "stops")


def summarise(rows: list[dict], wall: float) -> dict:
    """accuracy, think_tokens_mean, forward_tokens_mean, skip_rate (overall, per level and, when the questions
    mix categories such as task families, per category), wall_s; guard_fallback_rate where a guard scored rows;
    route_groups (each group's share of the rows) where the probe's route placed them."""
    def agg(rs):
        n = len(rs)
        out = {"n": n, "accuracy": sum(r["correct"] for r in rs) / n, "think_tokens_mean": sum(r["think"] for r in rs) / n,
               "forward_tokens_mean": sum(r["forward"] for r in rs) / n, "skip_rate": sum(r["skipped"] for r in rs) / n}
        guarded = [r["guard_fallback"] for r in rs if "guard_fallback" in r]
        if guarded:
            out["guard_fallback_rate"] = sum(guarded) / len(guarded)
        routed = [r["route_group"] for r in rs if "route_group" in r]
        if routed:
            out["route_groups"] = {g: routed.count(g) / len(routed) for g in sorted(set(routed))}
        return out

    out = agg(rows)
    out["wall_s"] = round(wall, 3)
    for key, field in (("per_level", "level"), ("per_category", "category")):
        groups = defaultdict(list)
        for r in rows:
            groups[r.get(field, "")].append(r)
        if field == "level" or len(groups) > 1:
            out[key] = {str(k): agg(v) for k, v in sorted(groups.items())}
    return out


def _family(name: str) -> str:
    """A policy's family on the plot and in the Pareto checks: a score policy's family names its score kind."""
    if name.endswith(NO_GUARD):  # the guard-off copies are their own family: never mixed into the guarded ones
        return _family(name[: -len(NO_GUARD)]) + NO_GUARD
    parts = name.split(":")
    return ":".join(parts[:2]) if parts[0] in ("score", "score-effort") else parts[0]


def score_rungs(name: str) -> bool:
    """A calibrated rung of a training-free score file (score-effort:KIND:NAME)."""
    return name.startswith("score-effort:")


def envelope(points: list[tuple[float, float]], f: float) -> float | None:
    """Best accuracy reachable at `f` forward tokens by the points or by mixing two of them per question
    (a random mix of two policies lands on the segment between them); None below every point."""
    best = None
    for fa, aa in points:
        if fa <= f:
            best = aa if best is None else max(best, aa)
        for fb, ab in points:
            if fa < f < fb:
                mix = aa + (ab - aa) * (f - fa) / (fb - fa)
                best = mix if best is None else max(best, mix)
    return best


def pareto_check(results: dict, family: tuple[str, ...] = PROBE_FAMILY) -> dict:
    """Is every baseline point (budget, marker, confidence, consistency, router) on or under the envelope
    of the `family` points (probe thresholds and effort rungs by default) on accuracy vs forward tokens?"""
    ours = [(v["forward_tokens_mean"], v["accuracy"]) for k, v in results.items() if _family(k) in family]
    if not ours:
        return {}
    beaten, not_beaten = [], []
    for name, v in results.items():
        if _family(name) not in BASELINES:
            continue
        best = envelope(ours, v["forward_tokens_mean"])
        (beaten if best is not None and best >= v["accuracy"] else not_beaten).append(name)
    return {"dominates_all": not not_beaten, "beaten": beaten, "not_beaten": not_beaten}


def oracle_shares(results: dict, category: str | None = None) -> dict:
    """Per probe rung and score-file rung: (full - rung) / (full - oracle) in thinking tokens, over all questions or
    over one `category` (a task family) of them; {} without full and oracle. Guard-off copies are rungs too."""
    def part(v):
        return v if category is None else v.get("per_category", {}).get(category)

    full, oracle = part(results.get("full") or {}), part(results.get("oracle") or {})
    if not full or not oracle:
        return {}
    room = full["think_tokens_mean"] - oracle["think_tokens_mean"]
    rungs = {k: part(v) for k, v in results.items()
             if k.removesuffix(NO_GUARD) in ("probe", "router") or _family(k.removesuffix(NO_GUARD)) in ("effort", "stops")
             or score_rungs(k)}
    return {k: (full["think_tokens_mean"] - v["think_tokens_mean"]) / room if room > 0 else None
            for k, v in rungs.items() if v}


def oracle_shares_by_category(results: dict) -> dict:
    """{category: oracle_shares over its questions} when the questions mix categories; {} otherwise."""
    cats = (results.get("full") or {}).get("per_category", {})
    return {c: oracle_shares(results, c) for c in cats}


def vs_full(results: dict, name: str) -> dict | None:
    """Thinking saved, accuracy points lost, and skip rates at the easiest / hardest level, of one policy."""
    full, row = results.get("full"), results.get(name)
    if not full or not row:
        return None
    levels = row["per_level"]
    return {"think_tokens_saved": 1 - row["think_tokens_mean"] / max(full["think_tokens_mean"], 1e-9),
            "accuracy_points_lost": 100 * (full["accuracy"] - row["accuracy"]),
            "skip_rate_easiest": levels[min(levels, key=int)]["skip_rate"],
            "skip_rate_hardest": levels[max(levels, key=int)]["skip_rate"]}


def format_table(results: dict) -> str:
    lines = [f"{'policy':18s} {'accuracy':>9s} {'think tok':>10s} {'fwd tok':>9s} {'skip':>6s} {'wall s':>8s}"]
    for name, v in results.items():
        lines.append(f"{name:18s} {v['accuracy']:9.3f} {v['think_tokens_mean']:10.1f} {v['forward_tokens_mean']:9.1f} "
                     f"{v['skip_rate']:6.2f} {v['wall_s']:8.2f}")
    return "\n".join(lines)


def format_levels(results: dict, names, by: str = "level") -> str:
    """Accuracy / thinking tokens / skip rate (and the guard's fallback rate where it ran) per difficulty level,
    or per category (`by="category"`, e.g. task family), of the named policies; "" when there is nothing to show."""
    key = f"per_{by}"
    rows = [n for n in names if n in results and key in results[n]]
    if not rows:
        return ""
    groups = sorted({g for n in rows for g in results[n][key]}, key=lambda g: (len(g), g) if by == "level" else g)
    guard = any("guard_fallback_rate" in v for n in rows for v in results[n][key].values())
    what = "acc/think/skip" + ("/guard" if guard else "")
    width = 22 + 6 * guard
    head = (lambda g: f"L{g} {what}") if by == "level" else (lambda g: f"{g} {what}")
    lines = [f"{'per ' + by:22s} " + " ".join(f"{head(g):>{width}s}" for g in groups)]
    for n in rows:
        cells = []
        for g in groups:
            v = results[n][key].get(g)
            cell = f"{v['accuracy']:7.3f}/{v['think_tokens_mean']:6.1f}/{v['skip_rate']:5.2f}" if v else ""
            if v and guard:
                cell += f"/{v['guard_fallback_rate']:5.2f}" if "guard_fallback_rate" in v else "/    -"
            cells.append(cell)
        lines.append(f"{n:22s} " + " ".join(f"{c:>{width}s}" for c in cells))
    return "\n".join(lines)


def plot(results: dict, path) -> str | None:
    """Accuracy vs mean forward tokens per policy family (the oracle as a star), as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fams = defaultdict(list)
    for name, v in results.items():
        fams[_family(name)].append((v["forward_tokens_mean"], v["accuracy"], name))
    for fam, pts in fams.items():
        pts.sort()
        if fam == "oracle":
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="*", markersize=14, linestyle="", label=fam)
            continue
        rungs = fam == "effort" or fam.startswith("score-effort:")
        style = dict(marker="s", markersize=8, linewidth=2) if rungs else dict(marker="o")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=fam, **style)
        if rungs:
            for f, a, name in pts:
                ax.annotate(name.split(":")[-1], (f, a), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel("mean forward tokens per question")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def write_json(path, payload: dict) -> None:
    from adaptive_think.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2) + "\n"
    atomic_write(path, lambda p: Path(p).write_text(text))
