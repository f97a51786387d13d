"""Cases of the engine benchmark beyond the per-engine step timings of gpu_engines.py.

- `random_model`: real shapes with random weights (Qwen3-0.6B / 4B, SmolLM2-135M as a Llama), no download;
- `interleaved_cases`: plain generate() vs the hf engine under `budget` vs the graph engine, timed in
  alternation within each repetition (the machine's load hits every case alike), with per-rep ratios;
- `context_cases`: graph-engine ms per decode step against the real context length at one cache bucket,
  with the attention tiers on and (for the shortest context) off, so the attention cost is visible;
- `mixed_cases`: a batch whose rows carry different policies, on both engines, against uniform probe rows.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.engines import graph
from adaptive_think.engines.graph import generate_graph

SHAPES = {  # real sizes, random weights (no download)
    "qwen3-0.6b": dict(arch="qwen3", vocab_size=151936, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, intermediate_size=3072),
    "qwen3-4b": dict(arch="qwen3", vocab_size=151936, hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, intermediate_size=9728),
    "qwen3-tiny": dict(arch="qwen3", vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, intermediate_size=128),  # walk-throughs (gpu_check dry run)
    "smollm2-135m": dict(arch="llama", vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, rope_theta=100000.0),
}


def random_model(name: str, device: str, dtype: torch.dtype):
    """A causal LM of a real shape with random weights, built directly on `device` in `dtype` (eos off)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    shape = dict(SHAPES[name])
    config_cls, model_cls = {"qwen3": (Qwen3Config, Qwen3ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[
        shape.pop("arch")]
    cfg = config_cls(max_position_embeddings=40960, tie_word_embeddings=True, pad_token_id=0, eos_token_id=None,
                     bos_token_id=None, **shape)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):  # initialise on the GPU: CPU init of 4B parameters takes minutes
            model = model_cls(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
CLOCK = {"now": time.perf_counter}  # "cpu": this thread's CPU time, which a busy machine's other jobs do not inflate


def now() -> float:
    """Seconds on the benchmark's clock (wall by default; `use_clock("cpu")` for one-thread CPU runs)."""
    return CLOCK["now"]()


def use_clock(name: str) -> None:
    CLOCK["now"] = CLOCKS[name]


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(run, n, device) -> float:
    sync(device)
    t0 = now()
    run(n)
    sync(device)
    return now() - t0


def interleaved(runs: dict, device, steps: int, reps: int, base: int = 8) -> dict[str, list[float]]:
    """{case: run(n)} -> {case: per-rep ms per decode step}; each rep times every case once, in a rotating order.

    Per step = (wall(base + steps tokens) - wall(base tokens)) / steps, so prefill and set-up cancel out."""
    names = list(runs)
    for name in names:  # first calls: capture / warm-up, the longer first so a static cache fits both
        runs[name](base + steps)
        runs[name](base)
    out = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            short = _timed(runs[name], base, device)
            long = _timed(runs[name], base + steps, device)
            out[name].append(max(long - short, 0.0) * 1e3 / steps)
    return out


def paired_ratios(ms: dict[str, list[float]], base: str) -> dict[str, dict]:
    """Per case: median ms / median base ms, and the median of the per-rep ratios (rep r of both)."""
    out = {}
    for name, xs in ms.items():
        if name == base:
            continue
        out[name] = {"ratio_of_medians": statistics.median(xs) / statistics.median(ms[base]),
                     "median_paired_ratio": statistics.median(a / b for a, b in zip(xs, ms[base]) if b > 0)}
    return out


def _prompt(tok, model, batch: int, length: int, device, thinking: bool):
    """Random prompt ids [B, length] (a fixed seed); `thinking`: the last token opens a thought (R1-style)."""
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(3, min(model.config.vocab_size, 1000), (batch, length), generator=g)
    if thinking:
        ids[:, -1] = AdaptiveThinker(model, tok).markers.open_ids[-1]
    return ids.to(device)


def interleaved_cases(name, model, tok, device, batch, steps, reps, add):
    """plain generate() vs the hf engine under a budget that never fires vs the graph engine (eager on CPU)."""
    ids = _prompt(tok, model, batch, 64, device, thinking=True)
    mask = torch.ones_like(ids)
    thinker = AdaptiveThinker(model, tok)
    budget = ThinkConfig(policy="budget", max_think_tokens=100_000)  # the controller works every step, never cuts
    kw = dict(attention_mask=mask, do_sample=False, eos_token_id=None, pad_token_id=0)
    runs = {
        "hf_eager": lambda n: model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw),
        "hf_engine_budget": lambda n: thinker.generate(ids, max_new_tokens=n, min_new_tokens=n, think=budget,
                                                       engine="hf", **kw),
        "graph_none": lambda n: generate_graph(model, None, ids, max_new_tokens=n, **kw),
        "graph_budget": lambda n: thinker.generate(ids, max_new_tokens=n, think=budget, engine="graph", **kw),
    }
    ms = interleaved(runs, device, steps, reps)
    ratios = paired_ratios(ms, "hf_eager")
    for case, xs in ms.items():
        add(case, "interleaved", xs, vs_hf_eager=ratios.get(case))
    graph.clear_graph_cache(model)
    return ratios


@contextlib.contextmanager
def _full_bucket(model):
    """Attend to the whole cache in every step (attention tiers off): what a step cost before the tiers."""
    saved = [(r, r.tiers) for r in graph._RUNNERS.get(model, {}).values()]
    for r, _ in saved:
        r.tiers = [r.length]
    try:
        yield
    finally:
        for r, tiers in saved:
            r.tiers = tiers


def context_cases(name, model, tok, device, batch, contexts, steps, reps, add, per_step_ms, mode):
    """Graph engine, no controller: ms per step at each real context length, one bucket for all of them."""
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0, graph_mode=mode)
    for ctx in sorted(contexts, reverse=True):  # the longest first: its runner's bucket then serves the others
        ids = _prompt(tok, model, batch, ctx, device, thinking=False)
        run = lambda n, ids=ids: generate_graph(model, None, ids, max_new_tokens=n, **kw)  # noqa: E731
        ms = per_step_ms(run, device, steps, reps)
        add(f"graph_context_{ctx}", mode, ms, context=ctx, bucket=graph.cache_info(model)[0]["bucket"])
        if ctx == min(contexts):
            with _full_bucket(model):
                add(f"graph_context_{ctx}_full_bucket", mode, per_step_ms(run, device, steps, reps), context=ctx,
                    bucket=graph.cache_info(model)[0]["bucket"], tiers="off")
    info = graph.cache_info(model)
    graph.clear_graph_cache(model)
    return info


def mixed_cases(name, model, tok, device, batch, steps, reps, add, per_step_ms, mode):
    """A batch cycling through full / none / budget 64 with stop text / probe rows vs all-probe rows, both engines."""
    from adaptive_think.probe import Probe

    probe = Probe.random_for(model, width=256, seed=0)
    thinker = AdaptiveThinker(model, tok, probe=probe)
    never = ThinkConfig(policy="probe", threshold=1.0, skip_threshold=1.0)  # runs every step, never stops
    cycle = [ThinkConfig(), ThinkConfig(policy="none"), ThinkConfig(policy="budget", max_think_tokens=64,
                                                                     stop_text=" so", exit_text="\n\n"), never]
    mixed = [cycle[i % len(cycle)] for i in range(batch)]
    ids = _prompt(tok, model, batch, 72, device, thinking=True)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=None, pad_token_id=0)
    for case, think, engine in (("graph_probe_uniform", never, "graph"), ("graph_mixed", mixed, "graph"),
                                ("hf_engine_mixed", mixed, "hf")):
        extra = dict(graph_mode=mode) if engine == "graph" else {}
        run = lambda n, think=think, engine=engine, extra=extra: thinker.generate(  # noqa: E731
            ids, max_new_tokens=n, think=think, engine=engine, **kw, **extra)
        add(case, mode if engine == "graph" else "eager", per_step_ms(run, device, steps, reps),
            policies=[c.policy for c in (think if isinstance(think, list) else [think])][: len(cycle)])
    graph.clear_graph_cache(model)
