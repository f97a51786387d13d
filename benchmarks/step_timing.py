"""Per-decode-step timing that resolves a 1% difference: the engine's step itself, cases alternated, ratios paired.

    from step_timing import Clock, generate_case, measure, pair, runner_case
    clock = Clock("cuda")                           # CUDA events ("cpu": this thread's CPU time; "wall")
    cases = [runner_case("graph_none", model, None, ids), runner_case("graph_probe", model, ctl, ids, probe_layer=L),
             generate_case("hf_static_compile", lambda n: model.generate(ids, max_new_tokens=n, ...))]
    doc = measure(cases, clock, steps=32, reps=15, baseline="graph_none")

What is timed:
  runner cases   n replays of the graph engine's captured step (n eager steps where nothing is captured): the
                 runner is rewound (prefill, controller state reset) before each timed segment, outside the
                 timing, and one clock interval covers the n steps; per step = interval / n.
  generate cases a whole call that carries fixed costs (HF's generate()): per step = (t(base + n) - t(base)) / n.
Each repetition times every case once, in an order that rotates by one per repetition, so drift (clocks, heat,
a neighbour's job) falls on every case alike. Per case: median, p20, p80 of the per-step times; per case
against the baseline: the same quantiles of the per-repetition ratio (rep r of the case / rep r of the
baseline), which cancels the drift the two share. A p20-p80 range of the paired ratio narrower than 2% is a
measurement that resolves 1%.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

CLOCKS = ("cuda", "cpu", "wall")
MIN_REPS = 15


class Clock:
    """Times a callable in ms. "cuda": events around it on the current stream (the GPU's time, launch gaps
    included); "cpu": this thread's CPU time (a busy machine's other jobs do not count; one thread); "wall"."""

    def __init__(self, kind: str):
        if kind not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {kind!r}.")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError('clock "cuda" needs a CUDA device; use "cpu" or "wall" here.')
        self.kind = kind

    def time(self, fn: Callable[[], object]) -> float:
        if self.kind == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        now = time.thread_time if self.kind == "cpu" else time.perf_counter
        t0 = now()
        fn()
        return (now() - t0) * 1e3


@dataclass
class StepCase:
    """run(n): n decode steps (timed); prepare(): untimed set-up before every timed run; base > 0: a run carries
    a fixed cost, so per step = (t(base + n) - t(base)) / n."""

    name: str
    run: Callable[[int], object]
    prepare: Callable[[], object] = field(default=lambda: None)
    base: int = 0
    info: dict = field(default_factory=dict)

    def per_step_ms(self, clock: Clock, steps: int) -> float:
        self.prepare()
        if not self.base:
            return clock.time(lambda: self.run(steps)) / steps
        # the longer run first: a cache sized by the first call (HF's static cache) then holds both
        long = clock.time(lambda: self.run(self.base + steps))
        self.prepare()
        return max(long - clock.time(lambda: self.run(self.base)), 0.0) / steps


def spread(xs: list[float]) -> dict:
    """Median, 20th and 80th percentiles (inclusive method), count."""
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=10, method="inclusive") if len(xs) > 1 else xs * 9
    return {"median": statistics.median(xs), "p20": q[1], "p80": q[7], "n": len(xs)}


def measure(cases: list[StepCase], clock: Clock, steps: int, reps: int = MIN_REPS, baseline: str | None = None,
            warmup: int = 1) -> dict:
    """Time every case `reps` times, alternated; returns per-case ms per step and paired ratios to `baseline`.

    {"clock", "steps", "reps", "baseline", "cases": {name: {median, p20, p80, n, samples}},
     "paired": {name: {median, p20, p80, n} of per-rep case / baseline}}"""
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"case names must be distinct, got {names}.")
    if baseline is not None and baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not one of the cases {names}.")
    if reps < 1 or steps < 1:
        raise ValueError(f"steps and reps must be >= 1, got steps={steps}, reps={reps}.")
    for case in cases:  # first runs: capture, compile, allocator and clock warm-up
        for _ in range(warmup):
            case.per_step_ms(clock, steps)
    samples = {name: [] for name in names}
    for rep in range(reps):
        for case in cases[rep % len(cases):] + cases[: rep % len(cases)]:
            samples[case.name].append(case.per_step_ms(clock, steps))
    out = {"clock": clock.kind, "steps": steps, "reps": reps, "baseline": baseline,
           "cases": {n: {**spread(xs), "samples": xs, **c.info} for (n, xs), c in zip(samples.items(), cases)},
           "paired": {}}
    if baseline is not None:
        out["paired"] = {name: pair(out, name, baseline) for name in names if name != baseline}
    return out


def pair(doc: dict, case: str, base: str) -> dict:
    """Spread of the per-repetition ratio case / base of a `measure` document (rep r of one over rep r of the
    other: timed back to back, so the drift they share cancels)."""
    xs, ys = doc["cases"][case]["samples"], doc["cases"][base]["samples"]
    return spread([a / b for a, b in zip(xs, ys) if b > 0])


def latest_runner(model):
    """The graph engine's runner that `model`'s latest generate_graph call used (the most recently used)."""
    from adaptive_think.engines import graph

    runners = graph._RUNNERS.get(model)
    if not runners:
        raise RuntimeError("the model holds no graph-engine runner: call generate_graph first.")
    return next(reversed(runners.values()))


def runner_case(name: str, model, controller, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                steps: int = 32, **generate_kw) -> StepCase:
    """A case timing the graph engine's step: builds (captures / compiles) the runner with one generate_graph
    call of `steps` new tokens, then each timed run replays n <= steps steps after a fresh prefill.

    controller: a ThinkController (a fresh one per case: the runner keeps a private copy) or None."""
    from adaptive_think.engines.graph import generate_graph

    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    generate_graph(model, controller, input_ids, attention_mask=mask, max_new_tokens=steps, **generate_kw)
    runner = latest_runner(model)
    if controller is not None:
        controller.begin(input_ids)
        start = controller.state.clone()

    def prepare():
        if controller is not None:
            runner.ctl.state.copy_(start)  # every segment starts from the prompt's state
        runner.active = True
        runner.prefill(input_ids, mask)

    def run(n: int):
        if runner.next_slot + n > runner.length:
            raise ValueError(f"{n} steps after a {input_ids.shape[1]}-token prompt overflow the runner's "
                             f"{runner.length}-slot cache; build the case with steps >= {n}.")
        runner.decode_n_tokens(n)
        runner.active = False  # other forwards of the model (another case) leave this runner's buffer alone

    return StepCase(name, run, prepare, info={"graph_mode": runner.graph_mode, "batch": runner.batch,
                                              "bucket": runner.length})


def generate_case(name: str, generate: Callable[[int], object], base: int = 8, **info) -> StepCase:
    """A case timing a whole generate(n) call, differential: per step = (t(base + n) - t(base)) / n."""
    return StepCase(name, generate, base=base, info=info)


def table(doc: dict, title: str = "") -> str:
    """The measured cases as a text table (ms per step, spread, paired ratio to the baseline)."""
    lines = [f"{title}  clock={doc['clock']} steps={doc['steps']} reps={doc['reps']} baseline={doc['baseline']}",
             f"{'case':22s} {'ms/step':>9s} {'p20':>9s} {'p80':>9s} {'x base':>8s} {'p20':>7s} {'p80':>7s}"]
    for name, c in doc["cases"].items():
        r = doc["paired"].get(name)
        ratio = f"{r['median']:8.4f} {r['p20']:7.4f} {r['p80']:7.4f}" if r else f"{'-':>8s}"
        lines.append(f"{name:22s} {c['median']:9.4f} {c['p20']:9.4f} {c['p80']:9.4f} {ratio}")
    return "\n".join(lines)
