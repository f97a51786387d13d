"""Throughput of vLLM serving with adaptive thinking, against plain vLLM, in one run on the same prompts.

    python benchmarks/vllm_throughput.py --json benchmarks/results/vllm_throughput_cpu.json   # in the vLLM venv

Cases (greedy, `--concurrency` slots, `--requests` arithmetic questions of the bundled task family):
  plain          vLLM alone (engine A: no adaptive_think)
  vllm_budget    vLLM's own `thinking_token_budget=--budget` (engine C: reasoning parser qwen3, which that needs)
  unsteered      engine B (adaptive_think processor + model wrapper + probe), requests without settings: the
                 cost of the wrapper and of having the processor loaded
  full           engine B with policy "full": the same
                 tokens as plain; a "full" row needs no decision, so this is the cost of the wrapper alone
  budget_nocap   engine B with policy "budget" and a cap no thought reaches: the same tokens again, with the
                 controller stepping every row every step (its true per-step cost)
  probe          engine B with policy "probe" (the calibrated probe decides skips and stops)
With `--speculative-config JSON` (vLLM's own, e.g. '{"method": "ngram", "num_speculative_tokens": 3,
"prompt_lookup_max": 4}'; needs Model Runner V2, so a GPU) three more cases on engines built with it:
  spec_plain         vLLM alone, speculative
  spec_budget_nocap  adaptive_think, policy "budget" never reached (the controller steps every draft row)
  spec_probe         adaptive_think, policy "probe"
and the JSON says whether each gives the same tokens as its non-speculative case (greedy: it should).
The engines stay up and the cases run interleaved (the order rotates every repeat), `--repeats` times each; the table shows medians and the
spread of requests/s and output tokens/s, thinking tokens per request, and the median over repeats of each
case's wall time divided by plain's wall time in the same repeat (paired, so load that comes and goes on a
shared machine cancels); the last line is one JSON document.
Target: `full` costs at most 10% of `plain`'s decode throughput at 32 concurrent requests on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled", help="local model folder, or `bundled` (`bundled-v1`)")
    p.add_argument("--probe", default="bundled", help="probe folder, or `bundled` (`bundled-v1`)")
    g = p.add_argument_group("load")
    g.add_argument("--requests", type=int, default=64)
    g.add_argument("--concurrency", type=int, default=32, help="vLLM max_num_seqs")
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--budget", type=int, default=32, help="thinking_token_budget of the vllm_budget case")
    g.add_argument("--repeats", type=int, default=5)
    g.add_argument("--seed", type=int, default=0, help="question set")
    e = p.add_argument_group("engine")
    e.add_argument("--dtype", default="float32")
    e.add_argument("--kv-cache-bytes", type=int, default=2**28)
    e.add_argument("--speculative-config", default=None, type=json.loads,
                   help="vLLM speculative_config as JSON: adds the spec_* cases (Model Runner V2: a GPU)")
    e.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def think_tokens(ids: list[int], open_id: int, close_id: int) -> int:
    """Tokens strictly between the first open and the first close marker (0 without a thought)."""
    if open_id not in ids:
        return 0
    start = ids.index(open_id) + 1
    end = ids.index(close_id, start) if close_id in ids[start:] else len(ids)
    return end - start


def run_case(llm, prompts, params, open_id, close_id) -> dict:
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    ids = [list(o.outputs[0].token_ids) for o in outs]
    tokens = sum(len(i) for i in ids)
    return {"wall_s": wall, "requests_per_s": len(prompts) / wall, "output_tokens_per_s": tokens / wall,
            "output_tokens": tokens, "think_tokens_mean": statistics.mean(think_tokens(i, open_id, close_id) for i in ids),
            "tokens": ids}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for key in ("wall_s", "requests_per_s", "output_tokens_per_s"):
        values = [r[key] for r in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    out["output_tokens"] = runs[0]["output_tokens"]
    out["think_tokens_mean"] = runs[0]["think_tokens_mean"]
    out["same_tokens_every_repeat"] = all(r["tokens"] == runs[0]["tokens"] for r in runs)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    from vllm import LLM, SamplingParams

    from adaptive_think.loading import resolve_model_path
    from adaptive_think.tasks import make_questions
    from adaptive_think.integrations.vllm import llm_kwargs
    from bench_env import versions

    model = str(resolve_model_path(args.model))
    from adaptive_think.bundled import is_bundled, probe_path

    probe = str(probe_path(args.probe)) if is_bundled(args.probe) else args.probe
    common = dict(model=model, dtype=args.dtype, enforce_eager=True, max_num_seqs=args.concurrency, seed=0,
                  kv_cache_memory_bytes=args.kv_cache_bytes, max_model_len=512)
    plain = LLM(**common)
    budgeted = LLM(reasoning_parser="qwen3", **common)  # the parser enables vLLM's thinking_token_budget
    ours = LLM(**common, **llm_kwargs(probe=probe))
    spec_cases = {}
    if args.speculative_config is not None:
        spec_plain = LLM(**common, speculative_config=args.speculative_config)
        spec_ours = LLM(**common, speculative_config=args.speculative_config, **llm_kwargs(probe=probe))
        spec_cases = {"spec_plain": (spec_plain, {}),
                      "spec_budget_nocap": (spec_ours, {"policy": "budget", "max_think_tokens": 100_000}),
                      "spec_probe": (spec_ours, {"policy": "probe"})}
    tok = plain.get_tokenizer()
    open_id, close_id = tok.convert_tokens_to_ids("<think>"), tok.convert_tokens_to_ids("</think>")
    prompts = [tok.apply_chat_template([{"role": "user", "content": q.question}], add_generation_prompt=True,
                                       tokenize=False) for q in make_questions(args.requests, seed=args.seed)]

    def sp(**kw):
        return SamplingParams(max_tokens=args.max_tokens, temperature=0.0, **kw)

    cases = {
        "plain": (plain, sp()),
        "vllm_budget": (budgeted, sp(thinking_token_budget=args.budget)),
        "unsteered": (ours, sp()),
        "full": (ours, sp(extra_args={"adaptive_think": {"policy": "full"}})),
        "budget_nocap": (ours, sp(extra_args={"adaptive_think": {"policy": "budget", "max_think_tokens": 100_000}})),
        "probe": (ours, sp(extra_args={"adaptive_think": {"policy": "probe"}})),
    }
    for name, (llm, settings) in spec_cases.items():
        cases[name] = (llm, sp(extra_args={"adaptive_think": settings}) if settings else sp())
    for llm, params in cases.values():  # warm-up
        llm.generate(prompts[: args.concurrency], params, use_tqdm=False)
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    names = list(cases)
    for rep in range(args.repeats):
        # rotate the order every repeat: no case always follows the same engine's run
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            llm, params = cases[name]
            runs[name].append(run_case(llm, prompts, params, open_id, close_id))
    results = {name: summarise(r) for name, r in runs.items()}
    base = results["plain"]["output_tokens_per_s"]["median"]
    for name, r in results.items():
        r["tokens_per_s_vs_plain"] = r["output_tokens_per_s"]["median"] / base
        r["wall_s"]["runs"] = [x["wall_s"] for x in runs[name]]
        # paired: this case's wall time over plain's in the same repeat, median over repeats
        r["wall_vs_plain_paired"] = statistics.median(
            x["wall_s"] / p["wall_s"] for x, p in zip(runs[name], runs["plain"]))
    for name in ("unsteered", "full", "budget_nocap"):
        results[name]["same_tokens_as_plain"] = runs[name][0]["tokens"] == runs["plain"][0]["tokens"]
    for name, twin in (("spec_plain", "plain"), ("spec_budget_nocap", "budget_nocap"), ("spec_probe", "probe")):
        if name in results:  # greedy speculative decoding gives the same tokens as its non-speculative twin
            results[name]["same_tokens_as_" + twin] = runs[name][0]["tokens"] == runs[twin][0]["tokens"]

    print(f"{'case':<13} {'req/s':>8} {'out tok/s':>10} {'(min-max)':>17} {'wall/plain':>11} {'think/req':>10}")
    for name, r in results.items():
        t = r["output_tokens_per_s"]
        print(f"{name:<13} {r['requests_per_s']['median']:8.2f} {t['median']:10.1f} {t['min']:8.1f}-{t['max']:<8.1f} "
              f"{r['wall_vs_plain_paired']:11.3f} {r['think_tokens_mean']:10.1f}")
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    payload = {"benchmark": "vllm_throughput", "device": device, "args": vars(args), "versions": versions(),
               "vllm": __import__("vllm").__version__, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "results": results,
               # same tokens as plain: the extra wall time is the overhead (paired medians)
               "full_overhead_vs_plain": results["full"]["wall_vs_plain_paired"] - 1,
               "controller_overhead_vs_plain": results["budget_nocap"]["wall_vs_plain_paired"] - 1}
    if args.json:
        from adaptive_think.files import atomic_write

        text = json.dumps(payload, indent=2) + "\n"
        atomic_write(Path(args.json), lambda p: Path(p).write_text(text))
    print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
