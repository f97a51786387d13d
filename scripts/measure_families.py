"""Per-family accuracy of a reasoner trained on the task families (greedy, plain HF `model.generate`).

    python scripts/measure_families.py --model /work/reasoner-v2/snapshot --per-level 5
    python scripts/measure_families.py --model DIR --families long_chain --per-level 20 --json out.json

For every family and level: full-thinking accuracy (target >= 97% per family), no-thinking accuracy (well
below it on the harder levels) and the thought's length in tokens. Questions come from --seed, which training
never draws (scripts/train_reasoner.py seeds its batches from its own seed and step). Prints a table, then one
JSON line (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_reasoner import greedy, prompt_ids  # noqa: E402

from adaptive_think.files import atomic_write  # noqa: E402
from adaptive_think.tasks.families import FAMILIES, checker_for, make_family_questions  # noqa: E402

LEVELS = range(1, 7)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a reasoner folder (config, weights, tokenizer)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--seed", type=int, default=777_002, help="question seed (training draws its own)")
    p.add_argument("--per-level", type=int, default=10, help="questions per family and level")
    p.add_argument("--max-new-tokens", type=int, default=2200, help="thought + answer budget of a full answer")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.per_level < 1:
        raise SystemExit(f"--per-level {args.per_level}: measure at least one question per level.")
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    n = args.per_level * len(LEVELS) * len(args.families)
    qs = make_family_questions(n, seed=args.seed, families=args.families)
    t0 = time.time()
    full = greedy(model, tok, [prompt_ids(tok, q.question, True) for q in qs], args.max_new_tokens, args.batch_size)
    none = greedy(model, tok, [prompt_ids(tok, q.question, False) for q in qs], 16, args.batch_size)
    close_id = tok.convert_tokens_to_ids("</think>")
    rows = defaultdict(lambda: {"n": 0, "think": 0, "no_think": 0, "think_tokens": []})
    for q, f, z in zip(qs, full, none):
        check = checker_for(q.category)
        for key in ((q.category, q.level), (q.category, "all")):
            r = rows[key]
            r["n"] += 1
            r["think"] += bool(check(tok.decode(f), q.answer))
            r["no_think"] += bool(check("</think>\n\n" + tok.decode(z), q.answer))
            r["think_tokens"].append(f.index(close_id) if close_id in f else len(f))
    out = {}
    print(f"{'family':12s} {'level':>5s} {'n':>4s} {'think':>7s} {'no-think':>9s} {'thought (median)':>17s}")
    for (fam, lv), r in sorted(rows.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        row = {"n": r["n"], "think_accuracy": r["think"] / r["n"], "no_think_accuracy": r["no_think"] / r["n"],
               "thought_tokens_median": statistics.median(r["think_tokens"]), "thought_tokens_max": max(r["think_tokens"])}
        out.setdefault(fam, {})[str(lv)] = row
        print(f"{fam:12s} {lv!s:>5s} {r['n']:4d} {row['think_accuracy']:7.3f} {row['no_think_accuracy']:9.3f} "
              f"{row['thought_tokens_median']:17.0f}")
    result = {"model": str(args.model), "seed": args.seed, "per_level": args.per_level, "seconds": round(time.time() - t0, 1),
              "families": out}
    print(json.dumps(result))
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))


if __name__ == "__main__":
    main()
