"""What `collect` costs against plain generation of the same thoughts, at real thought lengths.

A random-weight model of SmolLM2-135M's shape (Llama, V = 49,152, hidden 576, 30 layers; no download) behind
a template that opens the thought in the prompt; the close marker and eos are never emitted, so every
question thinks exactly T tokens. For each T: plain greedy generate() of the questions (batch = all of them),
then `collect` (hf engine, --every 8, 16 answer tokens per forced exit) on the same questions, timed in
one run on this thread's CPU clock (other jobs on a busy machine do not inflate it) and on the wall clock;
the ratio collect / generate, the bytes per question of the collection (checkpoint states of the 6 candidate
layers, fp16) and collect's own cost accounting.
`--prefill-route` also times collect re-prefilling every forced exit through generate() (the route before
the shared cache), at T <= its value.

    python benchmarks/collect_cost.py --lengths 128 512 2048 --out benchmarks/results/collect_cost_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import versions  # noqa: E402
from engine_cases import random_model  # noqa: E402

from adaptive_think.training import collect as collect_mod  # noqa: E402
from adaptive_think.training.collect import CollectConfig, collect  # noqa: E402
from adaptive_think.training.items import Item  # noqa: E402

TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<think>\n{% endif %}"


def setup(shape: str):
    """(model, tokenizer) whose thoughts never close: lm_head's output never picks the close marker or eos."""
    from adaptive_think.bundled.tokenizer import build_tokenizer

    tok = build_tokenizer()  # its ids fit any vocabulary; it knows <think> </think>
    tok.chat_template = TEMPLATE
    tok.padding_side = "left"
    model = random_model(shape, "cpu", torch.float32)
    banned = [tok.convert_tokens_to_ids("</think>"), tok.eos_token_id]
    model.generation_config.eos_token_id = tok.eos_token_id

    def no_close(module, args, out):  # [B, Q, V]
        out[..., banned] = float("-inf")
        return out

    model.get_output_embeddings().register_forward_hook(no_close)
    return model, tok


def timed(fn):
    c0, w0 = time.thread_time(), time.perf_counter()
    out = fn()
    return out, time.thread_time() - c0, time.perf_counter() - w0


def one_length(model, tok, items, T: int, every: int, answer: int, prefill: bool) -> dict:
    prompts = [tok.apply_chat_template([{"role": "user", "content": it.question}], add_generation_prompt=True,
                                       tokenize=False) for it in items]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    cfg = CollectConfig(every=every, batch_size=len(items), max_new_tokens=T, max_answer_tokens=answer,
                        shard_questions=len(items), fail_fast=False)
    with torch.no_grad():
        gen, g_cpu, g_wall = timed(lambda: model.generate(**batch, max_new_tokens=T, do_sample=False, pad_token_id=0))
    row = {"T": T, "questions": len(items), "generated_tokens": int(gen.shape[1] - batch["input_ids"].shape[1]),
           "generate_cpu_s": round(g_cpu, 2), "generate_wall_s": round(g_wall, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        summary, c_cpu, c_wall = timed(lambda: collect(model, tok, items, Path(tmp) / "c", lambda t, a: False, cfg,
                                                       progress=False, log=lambda _: None))
        row.update(collect_cpu_s=round(c_cpu, 2), collect_wall_s=round(c_wall, 2),
                   ratio_cpu=round(c_cpu / g_cpu, 2), ratio_wall=round(c_wall / g_wall, 2),
                   bytes_per_question=summary["cost"]["bytes_per_question"], cost=summary["cost"])
    if prefill:
        with tempfile.TemporaryDirectory() as tmp:
            real = collect_mod.shared_route_refusal
            collect_mod.shared_route_refusal = lambda *a: "benchmark: the re-prefill route"
            try:
                _, p_cpu, p_wall = timed(lambda: collect(model, tok, items, Path(tmp) / "p", lambda t, a: False, cfg,
                                                         progress=False, log=lambda _: None))
            finally:
                collect_mod.shared_route_refusal = real
            row.update(prefill_route_cpu_s=round(p_cpu, 2), prefill_route_ratio_cpu=round(p_cpu / g_cpu, 2))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048], help="thought lengths T")
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--answer-tokens", type=int, default=16)
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPU clock is this thread's work)")
    ap.add_argument("--prefill-route", type=int, default=0, metavar="T",
                    help="also time collect re-prefilling every exit, at lengths <= T (0: never)")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = setup(args.shape)
    items = [Item(f"q{i}", f"question {i}: what is {i} + {2 * i}?", str(3 * i)) for i in range(args.questions)]
    rows = []
    for T in args.lengths:
        rows.append(one_length(model, tok, items, T, args.every, args.answer_tokens, T <= args.prefill_route))
        print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "collect_cost", "shape": args.shape, "device": "cpu", "threads": args.threads,
              "every": args.every, "answer_tokens": args.answer_tokens, "versions": versions(), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
