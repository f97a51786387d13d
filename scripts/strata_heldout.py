"""Probes' rungs on held-out collections, per level, simulated from the collected checkpoints (no generation).

Each rung's (ready, skip) pair for the collection's decoding is applied to every held-out question as the
calibration simulates it (stop at the first step boundary whose ready score passes, skip when the prompt's
skip score passes); the loss against full thinking comes with its exact 95% interval against epsilon
(evaluation/promise.py), next to the share of thinking saved. Compare probes calibrated with and without strata
on the same held-out questions:

    python scripts/strata_heldout.py --probes runs/p-none runs/p-level --data runs/heldout-seed --json out.json
    python scripts/strata_heldout.py --probes runs/p-none runs/p-level --data runs/heldout-seed --levels 4 5 6
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from adaptive_think.evaluation.promise import loss_row
from adaptive_think.probe import Probe
from adaptive_think.training.calibrate import questions_of, simulate
from adaptive_think.training.scoring import collection_scores
from adaptive_think.training.shards import load_collections


def rung_rows(probe: Probe, records, hidden, levels=None, seen=frozenset()) -> dict:
    """{rung: {decoding: {group: loss row + think_tokens_saved + skip_rate}}}, groups: all and each level; questions
    whose hash is in `seen` are left out."""
    ready, skip = collection_scores(probe, hidden, records)
    qs = questions_of(records, ready, skip, [(levels is None or r.get("level") in levels) and r.get("qhash") not in seen
                                             for r in records])
    mode = records[0].get("decoding", "greedy")  # main() admits one decoding at a time
    out = {}
    for rung in probe.ladder:
        out[rung.name] = {}
        for mode in (mode,):
            groups = defaultdict(list)
            for q in qs:
                groups["all"].append(q)
                groups[f"level {q['level']}"].append(q)
            res = {}
            for g, gq in groups.items():
                runs = [simulate(q, *rung.pair(mode)) for q in gq]
                row = loss_row([q["full"] for q in gq], [ok for ok, _, _ in runs], rung.epsilon)
                full_tokens = sum(q["length"] for q in gq)
                row["think_tokens_saved"] = 1 - sum(t for _, t, _ in runs) / full_tokens if full_tokens else 0.0
                row["skip_rate"] = sum(s for _, _, s in runs) / len(gq)
                res[g] = row
            out[rung.name][mode] = dict(sorted(res.items(), key=lambda kv: (kv[0] != "all", kv[0])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", nargs="+", required=True)
    ap.add_argument("--data", nargs="+", required=True, help="held-out collection folder(s) of one decoding")
    ap.add_argument("--levels", type=int, nargs="+", default=None, help="only these levels (a mix)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    hidden, records, settings = load_collections(args.data)
    if len({r.get("decoding", "greedy") for r in records}) > 1:
        raise SystemExit("--data: give collections of one decoding at a time.")
    out = {}
    for path in args.probes:
        probe = Probe.from_pretrained(path)
        if probe.fingerprint != settings["fingerprint"]:
            raise SystemExit(f"{path} was trained on another model than --data.")
        seen = set((probe.provenance.get("questions_seen") or {}).get("sha256_16") or [])
        if any(r.get("qhash") in seen for r in records):
            print(f"note: {path} saw {len({r['qhash'] for r in records if r.get('qhash') in seen})} of these questions: "
                  "left out")
        out[path] = rung_rows(probe, records, hidden, set(args.levels) if args.levels else None, seen)
        for rung, by_mode in out[path].items():
            for mode, groups in by_mode.items():
                for g, row in groups.items():
                    lo, hi = row["interval"]
                    print(f"{path} {rung:7s} {mode:7s} {g:8s} n {row['n']:4d} lost {row['lost']:3d} = {row['loss']:.4f} "
                          f"[{lo:.4f}, {hi:.4f}] eps {row['epsilon']} {row['verdict']:10s} "
                          f"saved {row['think_tokens_saved']:.1%} skipped {row['skip_rate']:.1%}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
