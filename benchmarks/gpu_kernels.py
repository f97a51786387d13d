"""Kernel latency benchmark: controller_step (fused, two launches, torch reference) and logit_stats, on CUDA.

    python benchmarks/gpu_kernels.py --out kernels.json                 # CUDA: about a minute
    python benchmarks/gpu_kernels.py --out-dir "$OUT" --quick           # each result file written as it exists

Timing: every implementation of a case is captured in a CUDA graph of --graph-steps calls; the graphs' replays
are timed with CUDA events, alternating the implementations round by round (--rounds), so a drift of the
machine's clocks falls on all of them alike; per-call median and p20/p80 over the rounds, in microseconds.
controller_step cases: the engine's shipped probe shape (D 192, H 64, K 8, memory on) and D 4096, H 256, K 8,
  at batch 1 and 32 (--batches), bf16 hidden states, probe policy, every row thinking (the skip head is idle
  after step 0); implementations: `fused` (one launch), `two_launches` (heads, then the state machine;
  `controller_step_triton(..., split=True)`), `fused_levels1` / `fused_levels2` (the heads' reduction forced to
  one or two levels, where D is split), `reference` (torch). Target: fused <= 7 us at D 4096 (TARGETS).
logit_stats: batch 32, vocab 151,936, bf16; each replay reads a different logits buffer (more bytes than L2)
  so the bandwidth is HBM's, against a device copy of the same bytes timed the same way (target >= 0.7).
--out writes one JSON, rewritten after every case (`complete` says whether all ran); --out-dir writes `<case>.json` per case as soon as it is timed (and
`kernels.json` at the end), so a run cut short keeps what finished. Without CUDA: a skipped result, exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
from bench_env import versions

from adaptive_think.controller.params import MIN_FORCE_CAPACITY, RowParams, RowSettings
from adaptive_think.controller.state import NO_LIMIT, POLICY_PROBE, THINKING, ControllerSpec, ControllerState, ProbeTensors

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"controller_step_us_max_d4096": 7.0, "logit_stats_bw_fraction_min": 0.7}
# (D, H, K): the shipped probe's shape on the bundled engine, and a 4096-wide model's
SHAPES = ((192, 64, 8), (4096, 256, 8))


# ---------------------------------------------------------------------------------------------- cases


def make_probe_case(batch: int, d: int, h: int, device, dtype=torch.bfloat16, seed: int = 0, memory: int = 0,
                    groups: int = 1):
    """(hidden [B, D], last_token [B], state, params, spec) for a probe-policy step with every row thinking;
    memory: K running maxima of a probe with memory (0: a memoryless probe); groups: G > 1 adds a route of G
    groups (the row's thresholds then come from its group's pair)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    probe = ProbeTensors(
        mean=randn(d, scale=0.1), inv_std=torch.ones(d, device=device),
        ready_w1=randn(h, d, scale=d**-0.5), ready_b1=randn(h), ready_w2=randn(h, scale=h**-0.5), ready_b2=randn(1),
        skip_w1=randn(h, d, scale=d**-0.5), skip_b1=randn(h), skip_w2=randn(h, scale=h**-0.5), skip_b2=randn(1), relu=True,
    )
    if memory:  # the ready head reads [x, m]: ready_w1 is [H, D + K]
        probe.memory_w, probe.memory_b = randn(memory, d, scale=d**-0.5), randn(memory)
        probe.ready_w1 = torch.cat([probe.ready_w1, randn(h, memory, scale=memory**-0.5)], 1)
    if groups > 1:
        probe.route_w, probe.route_b = randn(groups, d, scale=d**-0.5), randn(groups)
    vocab = 151936
    spec = ControllerSpec.build((151667,), (151668,), (151645, 151643), vocab_size=vocab, probe=probe, device=device)
    row = RowSettings(policy=POLICY_PROBE, min_think=10**6, max_think=NO_LIMIT, threshold=0.99, skip_threshold=2.0,
                      alpha=0.3, patience=3, boundary_only=False, trace=False, exit_ids=(271,), stop_ids=(),
                      group_thresholds=((0.98, 2.0),) * (groups - 1))
    # min_think keeps every row thinking: each step does the same work
    params = RowParams.pack([row] * batch, (151667,), (), (151668,), MIN_FORCE_CAPACITY, device, groups=groups)
    state = ControllerState.allocate(batch, device, memory_size=memory)
    state.phase.fill_(THINKING)
    state.step.fill_(1)  # past the prompt: the ready head only, as in every later decode step
    hidden = randn(batch, d).to(dtype)
    tok = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    return hidden, tok, state, params, spec


def make_logits(batch: int, vocab: int, device, dtype=torch.bfloat16, copies: int = 1, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(batch, vocab, generator=gen, device=device).mul_(3).to(dtype) for _ in range(copies)]


# ---------------------------------------------------------------------------------------------- timing


def graph_of(calls, n: int) -> torch.cuda.CUDAGraph:
    """Capture calls(i) for i in range(n) in one graph (after a warm-up on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(min(n, 2)):
            calls(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n):
            calls(i)
    return graph


def time_interleaved(graphs: dict[str, torch.cuda.CUDAGraph], per: int, rounds: int, replays: int) -> dict[str, list[float]]:
    """Per-call microseconds of each graph, one sample per round; the graphs take turns within each round."""
    for g in graphs.values():  # warm: first replays upload the graph
        g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = {name: [] for name in graphs}
    for _ in range(rounds):
        for name, g in graphs.items():
            start.record()
            for _ in range(replays):
                g.replay()
            end.record()
            end.synchronize()
            samples[name].append(1000.0 * start.elapsed_time(end) / (replays * per))
    return samples


def quantiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=10, method="inclusive") if len(xs) > 1 else [xs[0]] * 9
    return {"median_us": round(statistics.median(xs), 3), "p20_us": round(q[1], 3), "p80_us": round(q[7], 3),
            "samples": len(xs)}


# ---------------------------------------------------------------------------------------------- cases


def controller_step_impls(d: int):
    """name -> fn(hidden, tok, state, params, spec) of the implementations timed at hidden size d."""
    from adaptive_think.controller.kernel_buffers import controller_step_triton
    from adaptive_think.controller.step import controller_step_reference

    impls = {"fused": controller_step_triton,
             "two_launches": lambda *a: controller_step_triton(*a, split=True),
             "reference": controller_step_reference}
    if d > 512:  # D is split into chunks: both reduction schemes
        impls["fused_levels1"] = lambda *a: controller_step_triton(*a, levels=1)
        impls["fused_levels2"] = lambda *a: controller_step_triton(*a, levels=2)
    return impls


def bench_controller_step(b: int, d: int, h: int, k: int, steps: int, rounds: int, replays: int) -> dict:
    from adaptive_think.controller.kernel_buffers import controller_step_triton

    graphs = {}
    for name, fn in controller_step_impls(d).items():
        hidden, tok, state, params, spec = make_probe_case(b, d, h, "cuda", memory=k)  # each its own state
        graphs[name] = graph_of(lambda i, fn=fn, a=(hidden, tok, state, params, spec): fn(*a), steps)
    # a probe with a route of two groups: the route runs in torch before the launch (controller/step.py route_rows)
    routed = make_probe_case(b, d, h, "cuda", memory=k, groups=2)
    graphs["fused_routed"] = graph_of(lambda i, a=routed: controller_step_triton(*a), steps)
    samples = time_interleaved(graphs, steps, rounds, replays)
    case = f"controller_step_B{b}_D{d}_H{h}_K{k}"
    results = {name: quantiles(xs) for name, xs in samples.items()}
    fused = results["fused"]["median_us"]
    summary = {"two_launches_over_fused": round(results["two_launches"]["median_us"] / fused, 3),
               "routed_over_fused": round(results["fused_routed"]["median_us"] / fused, 3),
               "reference_over_fused": round(results["reference"]["median_us"] / fused, 2)}
    if d == 4096:
        summary["meets_target"] = fused <= TARGETS["controller_step_us_max_d4096"]
    return {"case": case, "batch": b, "d": d, "h": h, "k": k, "hidden_dtype": "bf16", "results": results,
            "summary": summary}


def bench_logit_stats(batch: int, vocab: int, steps: int, rounds: int, replays: int) -> dict:
    from adaptive_think.kernels.logit_stats import logit_stats_reference
    from adaptive_think.kernels.logit_stats.triton_kernel import logit_stats_triton

    logits = make_logits(batch, vocab, "cuda", copies=steps)  # distinct buffers: more bytes than L2 holds
    dst = [torch.empty_like(x) for x in logits]
    nbytes = logits[0].numel() * logits[0].element_size()
    calls = {"triton": lambda i: logit_stats_triton(logits[i]), "reference": lambda i: logit_stats_reference(logits[i]),
             "device_copy": lambda i: dst[i].copy_(logits[i])}
    samples = time_interleaved({n: graph_of(c, steps) for n, c in calls.items()}, steps, rounds, replays)
    results = {n: quantiles(xs) for n, xs in samples.items()}
    moved = {"triton": nbytes, "reference": nbytes, "device_copy": 2 * nbytes}
    for n, r in results.items():
        r["gb_per_s"] = round(moved[n] / (r["median_us"] * 1e-6) / 1e9, 1)
    fraction = results["triton"]["gb_per_s"] / results["device_copy"]["gb_per_s"]
    return {"case": f"logit_stats_B{batch}_V{vocab}", "results": results,
            "summary": {"bw_fraction_of_copy": round(fraction, 3),
                        "meets_target": fraction >= TARGETS["logit_stats_bw_fraction_min"]}}


# ---------------------------------------------------------------------------------------------- report


def write_json(path: Path, doc: dict) -> None:
    """Atomic: a reader (or a run cut short) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def print_case(entry: dict) -> None:
    for impl, r in entry["results"].items():
        print(f"{entry['case']:<36} {impl:<14} {r['median_us']:>9.2f} us  (p20 {r['p20_us']:.2f}, p80 {r['p80_us']:.2f})"
              + (f"  {r['gb_per_s']} GB/s" if "gb_per_s" in r else ""), flush=True)
    print(f"{entry['case']:<36} {entry['summary']}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="the whole run's JSON, rewritten after every case")
    p.add_argument("--out-dir", type=Path, help="one JSON per case as soon as it is timed, and kernels.json at the end")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32], help="controller_step batch sizes")
    p.add_argument("--shapes", nargs="+", default=[f"{d},{h},{k}" for d, h, k in SHAPES], help="D,H,K of each probe")
    p.add_argument("--logit-batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--no-logit-stats", action="store_true")
    p.add_argument("--graph-steps", type=int, default=20, help="calls captured in one graph")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds (each implementation once per round)")
    p.add_argument("--replays", type=int, default=5, help="graph replays per timed sample")
    p.add_argument("--quick", action="store_true", help="15 rounds of 3 replays")
    args = p.parse_args(argv)
    if args.out is None and args.out_dir is None:
        p.error("give --out FILE and/or --out-dir DIR")
    rounds, replays = (15, 3) if args.quick else (args.rounds, args.replays)

    doc = {"benchmark": "kernels", "argv": sys.argv[1:] if argv is None else list(argv), **versions(),
           "targets": TARGETS, "timing": {"graph_steps": args.graph_steps, "rounds": rounds, "replays": replays}}
    entries = []
    if not torch.cuda.is_available():
        doc.update(skipped=True, reason="no CUDA device: the Triton kernels are timed on a GPU only", device="cpu")
        print("gpu_kernels: no CUDA device, nothing to time; writing a skipped result.")
    else:
        doc["device"] = torch.cuda.get_device_name()
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference stays fp32
        print(f"device: {doc['device']}  torch {doc['torch']}  triton {doc['triton']}  commit {(doc['git_commit'] or '')[:10]}")
        jobs = [(bench_controller_step, (b, *map(int, s.split(",")))) for s in args.shapes for b in args.batches]
        if not args.no_logit_stats:
            jobs.append((bench_logit_stats, (args.logit_batch, args.vocab)))
        for fn, shape in jobs:
            entry = fn(*shape, args.graph_steps, rounds, replays)
            entry.update(device=doc["device"], git_commit=doc["git_commit"])
            entries.append(entry)
            print_case(entry)
            if args.out_dir is not None:
                write_json(args.out_dir / f"{entry['case']}.json", entry)
            if args.out is not None:  # the cases so far, so that a cut run keeps them
                write_json(args.out, {**doc, "skipped": False, "complete": False, "cases": entries})
        doc.update(skipped=False, complete=True, cases=entries)
    for path in ([args.out] if args.out else []) + ([args.out_dir / "kernels.json"] if args.out_dir else []):
        write_json(path, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
