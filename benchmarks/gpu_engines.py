"""Engine latency benchmark: HF generate() vs the hf engine vs the graph engine, per decode step and per answer.

    python benchmarks/gpu_engines.py --out engines.json              # GPU: reasoner + Qwen3-0.6B/4B shapes, ~4 min
    python benchmarks/gpu_engines.py --plan step --out step.json     # GPU: the compiled step cases only (Qwen3-0.6B,
                                                                     # batch 1 and 32), ~3 min
    python benchmarks/gpu_engines.py --plan step --device cpu --threads 1 --clock cpu --models smollm2-135m --batches 1
    python benchmarks/gpu_engines.py --plan step --device cpu --threads 1 --clock cpu --batches 8 --step-cases \
        graph_budget graph_score hf_engine_budget hf_engine_score    # CPU: a training-free score row vs a budget row
    python benchmarks/gpu_engines.py --device cpu --threads 1 --out benchmarks/results/engines_cpu_smollm2.json
                                                                     # CPU: SmolLM2-135M's shape, batch 8
    python benchmarks/gpu_engines.py --device cpu --quick            # CPU: bundled-reasoner cases only

Step phase (step_cases.py; the targets' cases): graph_none, graph_probe (a probe with memory, K = 8) in each of
--step-modes (GPU: "compile") and hf_static_compile (CPU: hf_eager), timed by step_timing.py: replays of the
captured step between CUDA events (CPU: --clock), the cases alternated over --step-reps repetitions, each
case's median and p20/p80, and per-repetition ratios against graph_none (the controller's overhead) and of
HF against graph_probe (the graph engine's speed-up).
Other phases: per decode step = (wall(generate 8+N tokens) - wall(generate 8 tokens)) / N, so prefill and
set-up cancel out; the first call of every case (capture) is left out. Cases, per model and batch size:
  hf_eager           model.generate() with its dynamic cache (the baseline every ratio is against)
  hf_engine_probe    AdaptiveThinker engine="hf" with a random probe (width 256, layer at 2/3 depth)
  graph_{none,full,probe}  the graph engine (--graph-modes, uncompiled): no controller / policy full / probe
  graph_context_<n>  the graph engine at n tokens of real context, one cache bucket for every n (attention
                     tiers on; `_full_bucket`: the shortest context with the tiers off, attending to the bucket)
  graph_mixed, hf_engine_mixed, graph_probe_uniform  a batch cycling full / none / budget / probe rows vs
                     all-probe rows
  interleaved (CPU)  hf_eager, hf_engine_budget, graph_none, graph_budget timed in alternation per repetition,
                     with ratios to hf_eager (see engine_cases.py)
End to end: the bundled reasoner on a fixed question set, wall-clock per question under `full` and `probe`.
Order (GPU): the step phase (Qwen3-0.6B, batch 1 then 32), then the fast cases of each model (the context
and mixed cases right after Qwen3-0.6B's) while --budget-s lasts; each case has its own time limit, and a
case that fails or runs out of time is listed under "skipped". The JSON is rewritten after every batch.
Prints a table; the last stdout line is the JSON written to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

import torch
from bench_env import versions
from engine_cases import SHAPES, context_cases, interleaved_cases, mixed_cases, now, random_model, use_clock
from step_cases import CASES as STEP_CASES
from step_cases import DEFAULT_CASES as DEFAULT_STEP_CASES
from step_cases import step_phase
from step_timing import MIN_REPS, spread

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.engines import graph
from adaptive_think.engines.graph import generate_graph

ROOT = Path(__file__).resolve().parents[1]
def reasoner(device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptive_think.bundled import reasoner_path

    path = reasoner_path()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, tok


def bench_tokenizer():
    """Markers for controllers on random-weight models: the bundled tokenizer (its ids fit any vocabulary)."""
    from adaptive_think.bundled.tokenizer import build_tokenizer

    tok = build_tokenizer()
    tok.padding_side = "left"
    return tok


class TimeLimit(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeLimit in this thread after `seconds` (guards compile cases)."""
    if seconds <= 0:
        raise TimeLimit("no time left")

    def fire(*_):
        raise TimeLimit(f"over {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# -- cases ----------------------------------------------------------------------------------------------


def per_step_ms(run, device, steps: int, reps: int, base: int = 8) -> list[float]:
    """run(n) generates n new tokens; returns per-rep ms per decode step (differential, prefill cancels)."""
    run(base + steps)  # first calls: capture / compile / warm-up; the longer first, so HF's static cache fits both
    run(base)
    out = []
    for _ in range(reps):
        times = []
        for n in (base, base + steps):
            sync(device)
            t0 = now()
            run(n)
            sync(device)
            times.append(now() - t0)
        out.append(max(times[1] - times[0], 0.0) * 1e3 / steps)
    return out


def step_cases(name, model, tok, device, batch, args, deadline, results, skipped, phase):
    """Per-step timings on one (model, batch); eos is switched off so every run is full length.

    phase "fast": HF eager, the hf engine, the graph engine uncompiled (seconds each); phase "step": the
    step_timing cases (step_cases.py; compiling takes about a minute a case); "interleaved", "context",
    "mixed": engine_cases.py.
    """
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        _step_cases(name, model, tok, device, batch, args, deadline, results, skipped, phase)
    finally:
        model.generation_config.eos_token_id = eos
        graph.clear_graph_cache(model)


def _step_cases(name, model, tok, device, batch, args, deadline, results, skipped, phase):
    from adaptive_think.probe import Probe

    prompt_len = 72  # 72 + 8 and 72 + 8 + 48 fall in one static-cache bucket (128): one capture per case
    ids = torch.randint(3, min(model.config.vocab_size, 1000), (batch, prompt_len), device=device)
    mask = torch.ones_like(ids)
    probe = Probe.random_for(model, width=256, seed=0)  # layer at 2/3 depth
    thinker = AdaptiveThinker(model, tok, probe=probe)
    probe_think = ThinkConfig(policy="probe", threshold=1.0, skip_threshold=1.0)  # runs every step, never stops
    cuda = torch.device(device).type == "cuda"
    slow_steps, slow_reps = (16, 2) if cuda else (8, 2)
    fast_steps, fast_reps = (48, 5) if cuda else (16, 3)
    if args.reps:
        slow_reps = fast_reps = args.reps
    no_eos = dict(eos_token_id=None, pad_token_id=0)

    def add(case, mode, ms, **extra):
        results.append({"model": name, "batch": batch, "case": case, "mode": mode, "ms_per_step": spread(ms), **extra})
        print(f"  {name:11s} B={batch:<3d} {case:18s} {mode:15s} {spread(ms)['median']:9.3f} ms/step", flush=True)

    def guarded(case, mode, fn, limit):
        left = deadline - time.monotonic()
        try:
            with time_limit(min(limit, left - 5)):
                fn()
        except TimeLimit as err:
            skipped.append({"model": name, "batch": batch, "case": case, "mode": mode, "why": f"time limit: {err}"})
            print(f"  {name:11s} B={batch:<3d} {case:18s} {mode:15s} skipped ({err})", flush=True)
        except Exception as err:  # a failing case is reported, the others still run
            skipped.append({"model": name, "batch": batch, "case": case, "mode": mode, "why": f"{type(err).__name__}: {err}"[:300]})
            print(f"  {name:11s} B={batch:<3d} {case:18s} {mode:15s} failed: {type(err).__name__}: {str(err)[:120]}", flush=True)

    gen_kw = dict(attention_mask=mask, do_sample=False, **no_eos)
    mode = "cudagraph" if cuda else "eager"
    if phase == "interleaved":  # plain generate vs hf engine (budget) vs graph engine, timed in alternation
        steps = args.interleaved_steps or (48 if cuda else 16)
        reps = args.reps or (7 if cuda else 9)
        guarded("interleaved", "eager", lambda: interleaved_cases(name, model, tok, device, batch, steps, reps, add),
                args.case_limit_s)
        return
    if phase == "step":  # each case built under the compile limit; the timing itself under the case limit
        step_phase(name, model, tok, device, batch, args, add,
                   lambda case, mode, fn: guarded(case, mode, fn,
                                                  args.case_limit_s if case == "step_timing" else args.compile_limit_s))
        return
    if phase == "context":  # ms per step against the real context length at one bucket
        guarded("graph_context", mode, lambda: context_cases(name, model, tok, device, batch, args.contexts,
                                                             fast_steps, fast_reps, add, per_step_ms, mode),
                args.case_limit_s)
        return
    if phase == "mixed":  # rows with different policies in one batch, both engines
        guarded("mixed", mode, lambda: mixed_cases(name, model, tok, device, batch, fast_steps, fast_reps, add,
                                                   per_step_ms, mode), args.case_limit_s)
        return
    if phase == "fast":
        hf = lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, **gen_kw)  # noqa: E731
        guarded("hf_eager", "eager", lambda: add("hf_eager", "eager", per_step_ms(hf, device, slow_steps, slow_reps)), 120)
        hf_probe = lambda n: thinker.generate(ids, max_new_tokens=n, min_new_tokens=n, think=probe_think,  # noqa: E731
                                              engine="hf", **gen_kw)
        guarded("hf_engine_probe", "eager", lambda: add("hf_engine_probe", "eager",
                                                        per_step_ms(hf_probe, device, slow_steps, slow_reps)), 120)
        modes = args.graph_modes if cuda else ["eager"]
    for mode in modes:
        for case, think in (("graph_none", None), ("graph_full", ThinkConfig()), ("graph_probe", probe_think)):

            def run(n, think=think, mode=mode):
                ctl = thinker.controller(think, no_eos) if think is not None else None
                return generate_graph(model, ctl, ids, max_new_tokens=n, graph_mode=mode, check_every=args.check_every,
                                      probe_layer=probe.layer if think is probe_think else None, **gen_kw)

            guarded(case, mode, lambda run=run, case=case, mode=mode: add(
                case, mode, per_step_ms(run, device, fast_steps, fast_reps)), 120)


def end_to_end(model, tok, device, args, deadline, e2e, skipped):
    """The bundled reasoner answering a fixed question set one at a time: wall-clock per question."""
    from adaptive_think.loading import chat_prompt
    from adaptive_think.probe import Probe
    from adaptive_think.tasks import make_questions

    try:
        from adaptive_think.bundled import probe_path

        probe, probe_src = Probe.from_pretrained(probe_path()), "shipped"
    except (ImportError, FileNotFoundError, ValueError) as err:
        probe, probe_src = Probe.random_for(model, width=256, seed=0), f"random (no shipped probe: {str(err)[:80]})"
    thinker = AdaptiveThinker(model, tok, probe=probe)
    questions = make_questions(args.questions, seed=0)
    prompts = [tok(chat_prompt(tok, q.question), return_tensors="pt").to(device) for q in questions]
    for policy, think in (("full", ThinkConfig()), ("probe", ThinkConfig(policy="probe"))):
        for engine in ("hf", "graph"):
            if time.monotonic() > deadline - 10:
                skipped.append({"model": "reasoner", "case": f"e2e_{policy}_{engine}", "why": "time budget spent"})
                continue
            thinker.generate(**prompts[0], think=think, engine=engine, max_new_tokens=args.e2e_tokens)  # warm-up
            times, tokens = [], []
            for p in prompts:
                sync(device)
                t0 = time.perf_counter()
                out = thinker.generate(**p, think=think, engine=engine, max_new_tokens=args.e2e_tokens)
                sync(device)
                times.append((time.perf_counter() - t0) * 1e3)
                tokens.append(out.shape[1] - p["input_ids"].shape[1])
            row = {"policy": policy, "engine": engine, "ms_per_question": spread(times),
                   "mean_new_tokens": sum(tokens) / len(tokens), "probe": probe_src if policy == "probe" else None}
            e2e.append(row)
            print(f"  e2e reasoner {policy:6s} {engine:6s} {row['ms_per_question']['median']:9.2f} ms/question "
                  f"{row['mean_new_tokens']:7.1f} tokens", flush=True)
    graph.clear_graph_cache(model)


# -- report ---------------------------------------------------------------------------------------------


def summarise(results: list[dict], e2e: list[dict]) -> dict:
    """Ratios vs the same-run HF eager baseline and the controller's overhead on the graph engine."""
    med = {(r["model"], r["batch"], r["case"], r["mode"]): r["ms_per_step"]["median"] for r in results}
    for r in results:
        base = med.get((r["model"], r["batch"], "hf_eager", "eager"))
        r["speedup_vs_hf_eager"] = base / r["ms_per_step"]["median"] if base and r["ms_per_step"]["median"] else None
    overhead = []
    for (model, batch, case, mode), ms in med.items():
        if case != "graph_probe":
            continue
        for ref in ("graph_none", "graph_full"):
            if (model, batch, ref, mode) in med:
                overhead.append({"model": model, "batch": batch, "mode": mode, "vs": ref,
                                 "controller_overhead": ms / med[model, batch, ref, mode] - 1})
    paired, speedup, score_cost = [], [], []
    for r in results:  # step phase: per-repetition ratios of cases timed back to back
        where = {"model": r["model"], "batch": r["batch"], "mode": r["mode"]}
        p = r.get("paired_vs_graph_none")
        if r["case"] == "graph_probe" and p and r["mode"] == r.get("baseline_mode"):
            paired.append({**where, "vs": "graph_none", **{k: p[k] - 1 for k in ("median", "p20", "p80")}, "n": p["n"]})
        p = r.get("paired_vs_graph_probe")
        if p:
            speedup.append({**where, "case": r["case"], "graph_probe_speedup": p})
        p = r.get("paired_vs_budget")
        if p:  # a training-free score row against a budget row, per repetition
            score_cost.append({**where, "case": r["case"], **p})
    by = {(r["policy"], r["engine"]): r["ms_per_question"]["median"] for r in e2e}
    e2e_ratios = {f"{p}_{e}_vs_full_hf": by[p, e] / by["full", "hf"] for (p, e) in by if ("full", "hf") in by}
    return {"controller_overhead": overhead, "controller_overhead_paired": paired, "speedup_vs_hf_paired": speedup,
            "score_row_cost_paired": score_cost, "e2e_ratios": e2e_ratios}


def table(results, doc):
    lines = [f"{'model':11s} {'B':>3s} {'case':18s} {'mode':15s} {'ms/step':>9s} {'p20':>8s} {'p80':>8s} {'x HF eager':>10s}"]
    for r in results:
        q = r["ms_per_step"]
        sp = r.get("speedup_vs_hf_eager")
        lines.append(f"{r['model']:11s} {r['batch']:3d} {r['case']:18s} {r['mode']:15s} {q['median']:9.3f} "
                     f"{q['p20']:8.3f} {q['p80']:8.3f} {sp if sp is None else round(sp, 2)!s:>10s}")
    for o in doc["summary"]["controller_overhead"]:
        lines.append(f"controller overhead {o['model']} B={o['batch']} {o['mode']} vs {o['vs']}: "
                     f"{100 * o['controller_overhead']:+.1f}%")
    for o in doc["summary"]["controller_overhead_paired"]:
        lines.append(f"controller overhead {o['model']} B={o['batch']} {o['mode']} vs {o['vs']}, paired per repetition: "
                     f"{100 * o['median']:+.2f}% (p20 {100 * o['p20']:+.2f}%, p80 {100 * o['p80']:+.2f}%, n={o['n']})")
    for o in doc["summary"]["speedup_vs_hf_paired"]:
        q = o["graph_probe_speedup"]
        lines.append(f"speed-up of graph_probe over {o['case']} {o['model']} B={o['batch']}, paired: {q['median']:.3f}x "
                     f"(p20 {q['p20']:.3f}, p80 {q['p80']:.3f})")
    for o in doc["summary"]["score_row_cost_paired"]:
        lines.append(f"score row cost {o['case']} / {o['vs']} {o['model']} B={o['batch']} {o['mode']}, paired: "
                     f"{o['median']:.4f}x (p20 {o['p20']:.4f}, p80 {o['p80']:.4f}, n={o['n']})")
    for r in doc["e2e"]:
        lines.append(f"e2e reasoner {r['policy']:5s} {r['engine']:5s}: {r['ms_per_question']['median']:.1f} ms/question "
                     f"(p20 {r['ms_per_question']['p20']:.1f}, p80 {r['ms_per_question']['p80']:.1f}), "
                     f"{r['mean_new_tokens']:.1f} tokens")
    for k, v in doc["summary"]["e2e_ratios"].items():
        lines.append(f"e2e {k}: {v:.3f}")
    for s in doc["skipped"]:
        lines.append(f"skipped: {s}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # what to run
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="bundled-reasoner cases only")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 2; 1 on a core shared with a job)")
    p.add_argument("--models", nargs="+", default=None,
                   help=f"of reasoner {' '.join(SHAPES)} (default: GPU reasoner qwen3-0.6b qwen3-4b; CPU smollm2-135m)")
    p.add_argument("--batches", nargs="+", type=int, default=None, help="default: GPU 1 32; CPU 8")
    p.add_argument("--contexts", nargs="+", type=int, default=[128, 1024, 4096],
                   help="real context lengths of the context case (one cache bucket for all)")
    p.add_argument("--context-model", default="qwen3-0.6b", help="model of the context and mixed-policy cases (GPU)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: the main thread's CPU time (with --threads 1 on a busy machine: other jobs do not count)")
    p.add_argument("--cpu-phases", nargs="+", default=["interleaved", "context", "mixed"],
                   choices=["interleaved", "context", "mixed"], help="which CPU phases run (default: all)")
    p.add_argument("--plan", choices=("full", "step"), default="full",
                   help="step: only the step phase (step_cases.py) of --models (GPU default qwen3-0.6b, CPU "
                        "smollm2-135m) at --batches (GPU default 1 32, CPU 8)")
    p.add_argument("--graph-modes", nargs="+", default=["cudagraph"], choices=("cudagraph", "eager"),
                   help="graph-engine modes of the fast phase (the compiled step is the step phase's)")
    p.add_argument("--step-modes", nargs="+", default=None, choices=("compile", "cudagraph", "reduce-overhead", "eager"),
                   help="graph-engine modes of the step phase (default: GPU compile, CPU eager); the first is the baseline's")
    p.add_argument("--step-models", nargs="*", default=["qwen3-0.6b"], help="models of the step phase in the full GPU plan")
    p.add_argument("--step-cases", nargs="+", default=list(DEFAULT_STEP_CASES), choices=STEP_CASES,
                   help="cases of the step phase (hf: hf_static_compile on GPU, hf_eager on CPU); the score-row cost: "
                        "graph_budget graph_score (and hf_engine_budget hf_engine_score)")
    p.add_argument("--step-reps", type=int, default=MIN_REPS, help="alternated repetitions of the step phase")
    p.add_argument("--step-steps", type=int, default=32, help="decode steps per timed segment of the step phase")
    p.add_argument("--no-hf-compile", dest="hf_compile", action="store_false", help="skip HF static cache + compile")
    # budgets
    p.add_argument("--budget-s", type=float, default=230.0, help="stop starting cases after this many seconds")
    p.add_argument("--compile-limit-s", type=float, default=100.0, help="time limit of building one step case")
    p.add_argument("--case-limit-s", type=float, default=150.0, help="time limit of one context / mixed / interleaved case")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per case (default: 2 slow, 5 fast)")
    p.add_argument("--interleaved-steps", type=int, default=None,
                   help="decode steps timed per repetition of the interleaved cases (default: GPU 48, CPU 16); more "
                        "steps spread a run's fixed noise thinner")
    p.add_argument("--check-every", type=int, default=8)
    p.add_argument("--questions", type=int, default=12)
    p.add_argument("--e2e-tokens", type=int, default=256)
    # output
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    if args.step_reps < MIN_REPS:
        p.error(f"--step-reps must be at least {MIN_REPS}: fewer cannot resolve 1%")
    if args.clock == "cpu" and (torch.device(args.device).type != "cpu" or (args.threads or 2) != 1):
        p.error("--clock cpu measures one thread's CPU time: use it with --device cpu --threads 1")
    use_clock(args.clock)
    start = time.monotonic()
    deadline = start + args.budget_s
    device = args.device
    if device == "cpu":
        torch.set_num_threads(args.threads or min(2, os.cpu_count() or 1))
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    results, e2e, skipped = [], [], []
    cuda = torch.device(device).type == "cuda"
    plan = make_plan(args, cuda)
    dev_name = torch.cuda.get_device_name() if torch.device(device).type == "cuda" else platform.processor() or "cpu"
    print(f"# engines benchmark on {dev_name}, {dtype}", flush=True)

    env = versions()  # the commit measured: taken once, at the start

    def document() -> dict:
        doc = {"benchmark": "engines", "device": dev_name, "dtype": str(dtype), **env, "argv": sys.argv[1:], "clock": args.clock,
               "threads": torch.get_num_threads(),
               "wall_s": time.monotonic() - start, "cases": results, "e2e": e2e, "skipped": skipped}
        doc["summary"] = summarise(results, e2e)
        return doc

    def save(doc: dict) -> None:
        # written after every batch too, so a run cut short by its timeout still leaves its results
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
            os.replace(tmp, args.out)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    try:
        run_plan(plan, args, device, dtype, cuda, deadline, results, e2e, skipped, lambda: save(document()))
    except KeyboardInterrupt as err:
        skipped.append({"why": f"interrupted ({err}); results so far kept"})
    doc = document()
    print(table(results, doc))
    save(doc)
    print(json.dumps(doc))
    return doc


def make_plan(args, cuda: bool) -> list[tuple[str, str, list[int]]]:
    """(model, phase, batches) in run order.

    GPU: the step phase of --step-models (the targets' cases), then the fast cases of each model, with the
    context (batch 1) and mixed-policy (batch 32) cases right after the context model's. --plan step: the step
    phase only. CPU: the interleaved comparison, the context and the mixed-policy cases on each model
    (SmolLM2-135M's shape)."""
    if args.quick:
        return [("reasoner", "fast", args.batches or [1, 32])]
    if args.plan == "step":
        models = args.models or (["qwen3-0.6b"] if cuda else ["smollm2-135m"])
        return [(name, "step", args.batches or ([1, 32] if cuda else [8])) for name in models]
    if not cuda:
        batches = args.batches or [8]
        return [(name, phase, b) for name in args.models or ["smollm2-135m"]
                for phase, b in (("interleaved", batches), ("context", [1]), ("mixed", batches))
                if phase in args.cpu_phases]
    plan = [(name, "step", args.batches or [1, 32]) for name in args.step_models]
    for name in args.models or ["reasoner", "qwen3-0.6b", "qwen3-4b"]:
        plan.append((name, "fast", args.batches or [1, 32]))
        if name == args.context_model:
            plan += [(name, "context", [1]), (name, "mixed", [32])]
    return plan


def run_plan(plan, args, device, dtype, cuda, deadline, results, e2e, skipped, checkpoint) -> None:
    for name, phase, batches in plan:
        if time.monotonic() > deadline:
            skipped.append({"model": name, "phase": phase, "why": "time budget spent"})
            continue
        try:
            if name == "reasoner":
                model, tok = reasoner(device, dtype)
            else:
                model, tok = random_model(name, device, dtype), bench_tokenizer()
        except FileNotFoundError as err:
            skipped.append({"model": name, "why": str(err)[:200]})
            continue
        with torch.no_grad():
            for batch in batches:
                if time.monotonic() > deadline:
                    skipped.append({"model": name, "batch": batch, "phase": phase, "why": "time budget spent"})
                    continue
                step_cases(name, model, tok, device, batch, args, deadline, results, skipped, phase)
                checkpoint()
            if name == "reasoner" and phase == "fast":
                end_to_end(model, tok, device, args, deadline, e2e, skipped)
                checkpoint()
        del model
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
