"""Measures the one-family reasoner (bundled-v1) against its four targets, with plain HF `model.generate` (greedy).

    python scripts/measure_reasoner.py                         # the one-family reasoner, adaptive_think/bundled/v1
    python scripts/measure_reasoner.py --model /tmp/run --per-level 20

Targets: full-thinking accuracy >= 97%; no-thinking accuracy >= 95% on level 1 and <= 40% on level 6;
overthinking (mean share of thinking tokens after the earliest step boundary from which every forced
exit answers correctly) >= 40%, with the first-pass slip rate of the model's own thoughts; wall time of
one greedy full-thinking answer < 1 s. Questions come from --seed, which training never uses. Prints a
table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adaptive_think.tasks import ANSWER_STATED, is_correct, make_questions, parse_answer

LEVELS = range(1, 7)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "adaptive_think/bundled/v1/reasoner")
    p.add_argument("--seed", type=int, default=777_001, help="question seed (training draws its own)")
    p.add_argument("--per-level", type=int, default=30, help="questions per level for the accuracies")
    p.add_argument("--traces-per-level", type=int, default=8, help="traces per level for overthinking")
    p.add_argument("--timing-runs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    # Decoding a 2M-parameter model is host-bound: a second intra-op thread only adds spin-waits,
    # which cost 5x when the two cores are shared (0.80 s vs 0.14 s an answer, measured).
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def prompt_ids(tok, question: str, thinking: bool) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=thinking)
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def greedy(model, tok, prompts: list[list[int]], max_new: int, batch_size: int) -> list[list[int]]:
    """Greedy continuations (new token ids, eos and padding removed) of left-padded prompt batches."""
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False)
        for row in gen[:, width:].tolist():
            out.append([t for t in row if t not in (tok.pad_token_id, tok.eos_token_id)])
    return out


def overthinking(model, tok, question, gen: list[int], answer: str, batch_size: int) -> tuple[float, int] | None:
    """Share of thinking tokens after the earliest boundary from which every forced exit is correct.

    Returns (share, thinking tokens), or None when the trace has no closed think block.
    """
    open_id, close_id = tok.convert_tokens_to_ids(["<think>", "</think>"])
    if not gen or gen[0] != open_id or close_id not in gen:
        return None
    thought = gen[1 : gen.index(close_id)]  # [T] tokens between the markers
    newline = tok.convert_tokens_to_ids("\n")
    # Step boundaries: after every line end (the first is the "\n" right after <think>).
    cuts = [j + 1 for j, t in enumerate(thought) if t == newline]
    exit_ids = [close_id] + tok("\n\n", add_special_tokens=False)["input_ids"]
    base = prompt_ids(tok, question, True) + [open_id]
    answers = greedy(model, tok, [base + thought[:c] + exit_ids for c in cuts], 8, batch_size)
    ok = [is_correct("</think>\n\n" + tok.decode(a), answer) for a in answers]
    earliest = len(thought)  # never settled: nothing to cut
    for c, good in zip(reversed(cuts), reversed(ok)):
        if not good:
            break
        earliest = c
    return (len(thought) - earliest) / len(thought), len(thought)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    qs = make_questions(args.per_level * 6, seed=args.seed)
    rows: dict[int, dict] = {lv: {"n": 0, "think": 0, "no_think": 0, "first_wrong": 0, "traces": 0,
                                  "over": [], "think_tokens": []} for lv in LEVELS}

    t0 = time.time()
    full = greedy(model, tok, [prompt_ids(tok, q.question, True) for q in qs], 256, args.batch_size)
    none = greedy(model, tok, [prompt_ids(tok, q.question, False) for q in qs], 8, args.batch_size)
    for q, f, n in zip(qs, full, none):
        r = rows[q.level]
        text = tok.decode(f)
        r["n"] += 1
        r["think"] += is_correct(text, q.answer)
        r["no_think"] += is_correct("</think>\n\n" + tok.decode(n), q.answer)
        stated = ANSWER_STATED.search(text.split("</think>")[0])
        r["first_wrong"] += stated is not None and stated.group(1) != q.answer

    taken = {lv: 0 for lv in LEVELS}
    for q, f in zip(qs, full):
        if taken[q.level] >= args.traces_per_level:
            continue
        res = overthinking(model, tok, q.question, f, q.answer, args.batch_size)
        if res is not None:
            taken[q.level] += 1
            rows[q.level]["over"].append(res[0])
            rows[q.level]["think_tokens"].append(res[1])
    eval_s = time.time() - t0

    # Wall time of one greedy full-thinking answer, batch 1, on the longest questions (level 6).
    hard = [q for q in make_questions(args.timing_runs * 6 + 6, seed=args.seed + 1) if q.level == 6]
    greedy(model, tok, [prompt_ids(tok, hard[0].question, True)], 256, 1)  # warm-up
    times, new_tokens = [], []
    for q in hard[: args.timing_runs]:
        t = time.perf_counter()
        g = greedy(model, tok, [prompt_ids(tok, q.question, True)], 256, 1)[0]
        times.append(time.perf_counter() - t)
        new_tokens.append(len(g))

    print(f"model {args.model}  seed {args.seed}  torch {torch.__version__}  threads {args.threads}")
    print(f"{'level':>5} {'n':>4} {'think acc':>9} {'no-think':>9} {'1st wrong':>9} {'overthink':>9} {'think tok':>9}")
    for lv, r in rows.items():
        over = statistics.mean(r["over"]) if r["over"] else float("nan")
        tokens = statistics.mean(r["think_tokens"]) if r["think_tokens"] else float("nan")
        print(f"{lv:>5} {r['n']:>4} {r['think'] / r['n']:>9.1%} {r['no_think'] / r['n']:>9.1%} "
              f"{r['first_wrong'] / r['n']:>9.1%} {over:>9.1%} {tokens:>9.1f}")
    n_all = sum(r["n"] for r in rows.values())
    all_over = [x for r in rows.values() for x in r["over"]]
    result = {
        "think_acc": sum(r["think"] for r in rows.values()) / n_all,
        "no_think_acc_by_level": {lv: r["no_think"] / r["n"] for lv, r in rows.items()},
        "first_answer_wrong_by_level": {lv: r["first_wrong"] / r["n"] for lv, r in rows.items()},
        "overthinking_share": statistics.mean(all_over),
        "overthinking_traces": len(all_over),
        "wall_s_median": statistics.median(times),
        "wall_s_max": max(times),
        "timing_new_tokens_mean": statistics.mean(new_tokens),
        "n_questions": n_all,
        "seed": args.seed,
        "eval_s": round(eval_s, 1),
    }
    result["targets_met"] = (result["think_acc"] >= 0.97 and result["no_think_acc_by_level"][1] >= 0.95
                             and result["no_think_acc_by_level"][6] <= 0.40
                             and result["overthinking_share"] >= 0.40 and result["wall_s_median"] < 1.0)
    print(f"full-thinking acc {result['think_acc']:.1%} | overthinking {result['overthinking_share']:.1%} "
          f"over {len(all_over)} traces | one answer {result['wall_s_median']:.3f} s median "
          f"({result['timing_new_tokens_mean']:.0f} new tokens) | targets met: {result['targets_met']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
