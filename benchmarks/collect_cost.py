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

Where vLLM is importable (the vLLM venv), each T also times `collect --engine vllm` on the same questions (the
model saved to a temporary folder; vLLM's engine in this process, VLLM_ENABLE_V1_MULTIPROCESSING=0, so that this
process's CPU clock holds its work; close marker and eos banned through a logit bias, as the hf hook bans them)
and, for reference, vLLM's plain generation of the same thoughts; the process CPU clock then times every row
(`*_proc_s`), and the rows add vllm collect / hf collect and vllm collect / generate. `--no-vllm` skips it.

    python benchmarks/collect_cost.py --lengths 128 512 2048 --out benchmarks/results/collect_cost_cpu.json
    OMP_NUM_THREADS=1 python benchmarks/collect_cost.py --lengths 128 512 \\
        --out benchmarks/results/collect_cost_vllm_cpu.json                     # in the vLLM venv
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
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


def timed(fn, proc: dict | None = None, key: str = ""):
    """(fn's result, this thread's CPU seconds, wall seconds); with `proc`, also proc[key] = process CPU seconds."""
    c0, p0, w0 = time.thread_time(), time.process_time(), time.perf_counter()
    out = fn()
    if proc is not None:
        proc[key] = round(time.process_time() - p0, 2)
    return out, time.thread_time() - c0, time.perf_counter() - w0


def one_length(model, tok, items, T: int, every: int, answer: int, prefill: bool, llm=None) -> dict:
    prompts = [tok.apply_chat_template([{"role": "user", "content": it.question}], add_generation_prompt=True,
                                       tokenize=False) for it in items]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    cfg = CollectConfig(every=every, batch_size=len(items), max_new_tokens=T, max_answer_tokens=answer,
                        shard_questions=len(items), fail_fast=False)
    proc = {}
    with torch.no_grad():
        gen, g_cpu, g_wall = timed(lambda: model.generate(**batch, max_new_tokens=T, do_sample=False, pad_token_id=0),
                                   proc, "generate_proc_s")
    row = {"T": T, "questions": len(items), "generated_tokens": int(gen.shape[1] - batch["input_ids"].shape[1]),
           "generate_cpu_s": round(g_cpu, 2), "generate_wall_s": round(g_wall, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        summary, c_cpu, c_wall = timed(lambda: collect(model, tok, items, Path(tmp) / "c", lambda t, a: False, cfg,
                                                       progress=False, log=lambda _: None), proc, "collect_proc_s")
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
    if llm is not None:
        row.update(vllm_rows(llm, model, tok, items, cfg, T, proc))
    return row


def ban_in_vllm(banned: list[int]):
    """Make every vLLM request of collect --engine vllm ban `banned` too (what the hf hook does to lm_head)."""
    from adaptive_think.training import collect_vllm

    real = collect_vllm.sampling_params

    def banning(*args, **kwargs):
        params = real(*args, **kwargs)
        params.logit_bias = {t: -100.0 for t in banned}  # vLLM's strongest bias; random logits stay within a few units
        return params

    collect_vllm.sampling_params = banning


def vllm_rows(llm, model, tok, items, cfg, T: int, proc: dict) -> dict:
    """vLLM's plain generation of the thoughts and collect --engine vllm, timed; ratios on the process CPU clock."""
    from vllm import SamplingParams

    from adaptive_think.training.collect_vllm import collect_vllm

    prompts = [{"prompt_token_ids": tok.encode(tok.apply_chat_template([{"role": "user", "content": it.question}],
                                               add_generation_prompt=True, tokenize=False), add_special_tokens=False)}
               for it in items]
    plain = SamplingParams(temperature=0.0, max_tokens=T, ignore_eos=True, detokenize=False,
                           logit_bias={t: -100.0 for t in (tok.convert_tokens_to_ids("</think>"), tok.eos_token_id)})
    outs, _, vg_wall = timed(lambda: llm.generate(prompts, plain, use_tqdm=False), proc, "vllm_generate_proc_s")
    with tempfile.TemporaryDirectory() as tmp:
        summary, _, vc_wall = timed(lambda: collect_vllm(llm, model, tok, items, Path(tmp) / "v", lambda t, a: False,
                                                         cfg, progress=False, log=lambda _: None),
                                    proc, "vllm_collect_proc_s")
    ratio = lambda a, b: round(proc[a] / proc[b], 2)  # noqa: E731
    return dict(proc, vllm_generated_tokens=[len(o.outputs[0].token_ids) for o in outs],
                vllm_generate_wall_s=round(vg_wall, 2), vllm_collect_wall_s=round(vc_wall, 2),
                vllm_collect_over_hf_collect_proc=ratio("vllm_collect_proc_s", "collect_proc_s"),
                # what doctor scales its measured generation time by for the vllm engine
                vllm_ratio_cpu=ratio("vllm_collect_proc_s", "generate_proc_s"),
                vllm_collect_over_vllm_generate_proc=ratio("vllm_collect_proc_s", "vllm_generate_proc_s"),
                vllm_bytes_per_question=summary["cost"]["bytes_per_question"], vllm_cost=summary["cost"])


def vllm_engine_for(model, tok, folder: Path, longest: int, kv_bytes: int):
    """vLLM's engine over `model` saved to `folder` (the same weights as the hf model)."""
    from adaptive_think.training.collect_vllm import vllm_engine

    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    ban_in_vllm([tok.convert_tokens_to_ids("</think>"), tok.eos_token_id])
    return vllm_engine(folder, model, enforce_eager=True, max_model_len=longest, kv_cache_memory_bytes=kv_bytes)


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
    ap.add_argument("--no-vllm", dest="vllm", action="store_false", help="skip the vLLM engine even where installed")
    ap.add_argument("--kv-cache-bytes", type=int, default=2**31, help="vLLM's KV cache (kv_cache_memory_bytes)")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = setup(args.shape)
    items = [Item(f"q{i}", f"question {i}: what is {i} + {2 * i}?", str(3 * i)) for i in range(args.questions)]
    use_vllm = args.vllm and importlib.util.find_spec("vllm") is not None
    rows, extra = [], {}
    with tempfile.TemporaryDirectory() as folder:
        llm = None
        if use_vllm:  # in this process: its CPU clock then holds the engine's work
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            llm = vllm_engine_for(model, tok, Path(folder), max(args.lengths) + 64 + args.answer_tokens,
                                  args.kv_cache_bytes)
            import vllm

            extra = {"vllm": vllm.__version__, "vllm_block_size": llm.llm_engine.vllm_config.cache_config.block_size,
                     "torch_threads_after_vllm": torch.get_num_threads()}
        for T in args.lengths:
            rows.append(one_length(model, tok, items, T, args.every, args.answer_tokens, T <= args.prefill_route, llm))
            print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "collect_cost", "shape": args.shape, "device": "cpu", "threads": args.threads,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "every": args.every,
              "answer_tokens": args.answer_tokens, "versions": dict(versions(), **extra), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
