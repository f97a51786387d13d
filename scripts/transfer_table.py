"""The transfer table: how each probe's rung does on every task family, from `eval` runs over several families.

Run `eval --families ...` once per probe (a probe trained on one family, or on all but one), then:

    python scripts/transfer_table.py runs/eval-last_digit.json runs/eval-long_chain.json runs/eval-shipped.json \
        --rung effort:high --out benchmarks/results/transfer_bundled.json

One row per eval file (its probe, and the families it was trained on when the probe records them), one column per
family: accuracy points lost against full thinking, thinking saved, the share of the oracle's saving, the promise's
verdict and, with the guard, the share of rows that fell back. `--rung NAME+noguard` reads the guard-off runs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def cell(payload: dict, rung: str, family: str) -> dict | None:
    """One family's figures for `rung` in one eval payload; None when that eval did not run it on that family."""
    policies = payload["policies"]
    full = policies.get("full", {}).get("per_category", {}).get(family)
    row = policies.get(rung, {}).get("per_category", {}).get(family)
    if full is None or row is None:
        return None
    share = payload.get("oracle_share_per_category", {}).get(family, {}).get(rung)
    promise = payload.get("promise", {}).get(rung, {}).get("per_category", {}).get(f"category {family}", {})
    return {"n": row["n"], "accuracy_points_lost": 100 * (full["accuracy"] - row["accuracy"]),
            "think_saved": 1 - row["think_tokens_mean"] / full["think_tokens_mean"] if full["think_tokens_mean"] else 0.0,
            "oracle_share": share, "verdict": promise.get("verdict"), "epsilon": promise.get("epsilon"),
            "guard_fallback_rate": row.get("guard_fallback_rate")}


def trained_on(payload: dict, path: str) -> str:
    """What the probe was trained on, as its eval file names it (the probe path, else the file name)."""
    return str(payload.get("probe") or Path(path).stem)


def markdown(table: dict, families: list[str], rung: str) -> str:
    lines = [f"| probe ({rung}) | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for probe, cells in table.items():
        out = []
        for fam in families:
            c = cells.get(fam)
            if c is None:
                out.append("-")
                continue
            text = f"{c['accuracy_points_lost']:.1f} pts lost, {c['think_saved']:.0%} saved"
            if c["oracle_share"] is not None:
                text += f", {c['oracle_share']:.0%} of oracle"
            if c["verdict"]:
                text += f", {c['verdict']}"
            if c["guard_fallback_rate"] is not None:
                text += f", fell back {c['guard_fallback_rate']:.0%}"
            out.append(text)
        lines.append(f"| {probe} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("evals", nargs="+", help="eval --json files, one per probe, each over several families")
    ap.add_argument("--rung", default="effort:high", help="the policy to tabulate (default effort:high)")
    ap.add_argument("--out", default=None, help="write the table as JSON here too")
    args = ap.parse_args(argv)
    table, families = {}, []
    for path in args.evals:
        payload = json.loads(Path(path).read_text())
        if args.rung not in payload.get("policies", {}):
            raise SystemExit(f"{path}: no {args.rung!r} run; eval it with --policies full {args.rung} oracle")
        cats = list(payload["policies"].get("full", {}).get("per_category", {}))
        if not cats:
            raise SystemExit(f"{path}: its questions hold one family only; eval with --families NAME NAME ...")
        families += [c for c in cats if c not in families]
        table[trained_on(payload, path)] = {fam: cell(payload, args.rung, fam) for fam in cats}
    print(markdown(table, families, args.rung))
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps({"rung": args.rung, "evals": args.evals, "table": table}, indent=1))
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
