"""How often a reasoner misreads the question, teacher-forced: the lookups of `long_chain` and `walk`.

    python scripts/measure_lookups.py --model /work/reasoner-v2/snapshot
    python scripts/measure_lookups.py --model DIR --n 16 --json lookups.json

A `long_chain` trace line copies its step from the question (label -> operation) and a `walk` line reads an
arrow (digit -> where it points). A thought makes 50-200 such lookups and its answer needs every one, so
the rate of misread lookups says more about a reasoner than its loss does. Two rates per family, each the
share of lookups whose target is not the model's top token:
- trace: on the family's own traces (fresh questions), where in `long_chain` (steps listed in order) a
  line's place also gives the answer away;
- drill: on the question's lines recalled in shuffled order (train_reasoner.py's lookup drill), where only
  what the line says does. A model that reads by place fails the drill while passing the trace.
Each rate is also split by the key a lookup reads (`by_key`: the step's label, the arrow's digit): a model
that misreads one key far more often than the others shows it there, and `--by-key` prints the trace's split.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_reasoner import IGNORE, drill_example, encode_example  # noqa: E402

from adaptive_think.files import atomic_write  # noqa: E402
from adaptive_think.tasks import chain, walk  # noqa: E402
from adaptive_think.tasks.families import make_family_questions  # noqa: E402

FAMILIES = (chain.FAMILY, walk.FAMILY)


def lookup_key(tok, ids: list[int], i: int, family: str) -> str:
    """The key the lookup at position `i` reads: a `long_chain` step's label, a `walk` arrow's digit."""
    before = tok.decode([ids[i - 1]])
    return before.strip() if family == chain.FAMILY else before.removesuffix(" to").strip()


def trace_lookups(tok, ids: list[int], labels: list[int], family: str) -> list[int]:
    """Positions (in `ids`) of the tokens a trace looks up in the question: the operation after a step's
    label, the digit after an arrow's `d to`; thought tokens only."""
    toks = [tok.decode([i]) for i in ids]
    out = []
    for i in range(1, len(ids) - 1):
        if labels[i + 1] == IGNORE:
            continue
        if family == chain.FAMILY and toks[i - 1] == "\n" and toks[i] in chain.LABELS:
            out.append(i + 1)
        elif family == walk.FAMILY and toks[i - 1] == ":" and toks[i].endswith(" to"):
            out.append(i + 1)
    return out


@torch.no_grad()
def lookup_errors(model, tok, questions, seed: int = 0) -> dict[str, dict[str, float]]:
    """{'trace'|'drill': {'lookups': n, 'wrong': k, 'error': k / n, 'by_key': {key: the same three}}} over
    `questions` (one family)."""
    rng = random.Random(seed)
    counts = {"trace": [0, 0], "drill": [0, 0]}
    keyed = {"trace": {}, "drill": {}}
    for q in questions:
        ids, labels = encode_example(tok, q, "full", rng)
        rows = {"trace": (ids, trace_lookups(tok, ids, labels, q.category))}
        d_ids, d_labels = drill_example(tok, q, rng)
        rows["drill"] = (d_ids, [i for i, lab in enumerate(d_labels) if lab != IGNORE])
        for name, (row, targets) in rows.items():
            pred = model(torch.tensor([row])).logits[0].argmax(-1).tolist()
            for i in targets:
                wrong = pred[i - 1] != row[i]
                counts[name][0] += 1
                counts[name][1] += wrong
                per_key = keyed[name].setdefault(lookup_key(tok, row, i, q.category), [0, 0])
                per_key[0] += 1
                per_key[1] += wrong

    def rates(n, w):
        return {"lookups": n, "wrong": w, "error": w / max(n, 1)}

    return {k: {**rates(*counts[k]), "by_key": {key: rates(*nw) for key, nw in sorted(keyed[k].items())}}
            for k in counts}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a reasoner folder (config, weights, tokenizer)")
    p.add_argument("--n", type=int, default=12, help="questions per family (levels 4-6, the long ones)")
    p.add_argument("--seed", type=int, default=31_337, help="question seed (training draws its own)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--by-key", action="store_true", help="also print each family's trace error rate per key read")
    args = p.parse_args()
    if args.n < 1:
        raise SystemExit(f"--n {args.n}: measure at least one question per family.")
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    result = {"model": str(args.model), "seed": args.seed, "n": args.n, "families": {}}
    for family in FAMILIES:
        qs = make_family_questions(args.n, seed=args.seed, families=[family], levels=[4, 5, 6])
        result["families"][family] = errs = lookup_errors(model, tok, qs)
        print(f"{family:11s} trace {errs['trace']['error']:.4f} of {errs['trace']['lookups']:5d}   "
              f"drill {errs['drill']['error']:.4f} of {errs['drill']['lookups']:5d}")
        if args.by_key:
            print("  trace by key: " + "  ".join(f"{key} {r['wrong']}/{r['lookups']}"
                                                 for key, r in errs["trace"]["by_key"].items()))
    print(json.dumps(result))
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))


if __name__ == "__main__":
    main()
