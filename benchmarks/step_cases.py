"""The step cases of the engine benchmark (`gpu_engines.py --plan step`, and first in its default GPU plan).

At one (model, batch): the graph engine's captured step with no controller (`graph_none`, the baseline) and
with the probe policy on a probe of the shipped kind (`graph_probe`: memory, K = 8, width 64, a probe that
never stops), in each of --step-modes (GPU default: "compile", the whole step through inductor), against HF's
own fastest decode measured the same way in the same run (`hf_static_compile`: generate() with its static
cache, which compiles the forward; `hf_eager` on CPU). Timed with step_timing.py: replays of the captured
step between CUDA events, cases alternated, per-repetition ratios. Reported pairs: every case against
`graph_none` of the first mode (the controller's overhead), and HF against `graph_probe` (the speed-up).

Score-row cost (`--step-cases graph_budget graph_score hf_engine_budget hf_engine_score`): every row under a
training-free close-margin score file that never stops (`graph_score`, `hf_engine_score`) against every row
under a budget that never reaches its cap (`graph_budget`, `hf_engine_budget`), timed in the same alternation;
reported as the paired ratio score / budget of the same engine and mode (`paired_vs_budget`).
"""

from __future__ import annotations

import torch
from step_timing import Clock, generate_case, measure, pair, runner_case

from adaptive_think import AdaptiveThinker, ThinkConfig

PROMPT_LEN = 72  # + 32 steps fits one 128-slot bucket
CASES = ("graph_none", "graph_probe", "hf", "graph_budget", "graph_score", "hf_engine_budget", "hf_engine_score")
DEFAULT_CASES = ("graph_none", "graph_probe", "hf")  # "hf": hf_static_compile on GPU, hf_eager on CPU
SCORE_VS_BUDGET = {"graph_score": "graph_budget", "hf_engine_score": "hf_engine_budget"}


def memory_probe(model, width: int = 64, memory: int = 8, seed: int = 0):
    """A random probe of the shipped probe's kind: an MLP ready head that also reads K running maxima."""
    from adaptive_think.probe import Probe

    base = Probe.random_for(model, width=width, seed=seed)  # layer at 2/3 depth
    d = base.hidden_size
    g = torch.Generator().manual_seed(seed + 1)
    w = dict(base.weights)
    w["memory_w"] = torch.randn(memory, d, generator=g) / d**0.5
    w["memory_b"] = torch.randn(memory, generator=g) * 0.1
    w["ready_w1"] = torch.cat([w["ready_w1"], torch.randn(width, memory, generator=g) / memory**0.5], 1)
    return Probe(layer=base.layer, kind="mlp", weights=w, fingerprint=base.fingerprint,
                 provenance={"random": True, "seed": seed, "memory": memory})


def recorded(controller, make):
    """make(controller) -> a StepCase whose info records whether its rows read a score from the logits."""
    case = make(controller)
    case.info["reads_logits"] = controller.needs_logits
    return case


def step_phase(name, model, tok, device, batch: int, args, add, guard) -> dict | None:
    """Build every case (each under `guard`), time them together; add() each case's per-step samples.

    add(case, mode, samples_ms, **extra) records one result; guard(case, mode, fn) runs fn under the case time
    limit and reports a failure instead of raising. Returns step_timing's document (None if nothing was timed).
    The probe: width 64, K = 8, layer at 2/3 depth."""
    cuda = torch.device(device).type == "cuda"
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, min(model.config.vocab_size, 1000), (batch, PROMPT_LEN), generator=g).to(device)
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    probe = memory_probe(model)
    thinker = AdaptiveThinker(model, tok, probe=probe)
    never = ThinkConfig(policy="probe", threshold=1.0, skip_threshold=1.0)  # runs every step, never stops
    from adaptive_think.probe import Probe

    # an uncalibrated score file: its threshold (2.0) is out of a score's reach [0, 1], so no row stops; the
    # budget thinker has no probe, so its rows compute no score
    scorer = AdaptiveThinker(model, tok, probe=Probe.training_free("close-margin", model))
    never_score = ThinkConfig(policy="probe")
    budgeter = AdaptiveThinker(model, tok)
    uncapped = ThinkConfig(policy="budget", max_think_tokens=100_000)  # the controller works every step, never cuts
    wanted = set(getattr(args, "step_cases", None) or DEFAULT_CASES)
    modes = args.step_modes or (["compile"] if cuda else ["eager"])
    steps = args.step_steps
    cases, reported = [], {}  # reported: case name -> (name in the results, mode)

    def build(case, mode, make):
        if case.removesuffix(f"_{mode}") not in wanted:
            return

        def go():
            cases.append(make())
            reported[case] = (case.removesuffix(f"_{mode}") if mode != modes[0] else case, mode)
        guard(case, mode, go)

    for mode in modes:
        suffix = "" if mode == modes[0] else f"_{mode}"
        build("graph_none" + suffix, mode, lambda mode=mode, s=suffix: runner_case(
            "graph_none" + s, model, None, ids, mask, steps=steps, graph_mode=mode, **kw))
        build("graph_probe" + suffix, mode, lambda mode=mode, s=suffix: runner_case(
            "graph_probe" + s, model, thinker.controller(never, kw), ids, mask, steps=steps, graph_mode=mode,
            probe_layer=probe.layer, **kw))
        for case, t, think in (("graph_budget", budgeter, uncapped), ("graph_score", scorer, never_score)):
            build(case + suffix, mode, lambda case=case, t=t, think=think, mode=mode, s=suffix: recorded(
                t.controller(think, kw), lambda ctl: runner_case(case + s, model, ctl, ids, mask, steps=steps,
                                                                 graph_mode=mode, **kw)))
    for case, t, think in (("hf_engine_budget", budgeter, uncapped), ("hf_engine_score", scorer, never_score)):
        run = lambda n, t=t, think=think: t.generate(ids, attention_mask=mask, max_new_tokens=n,  # noqa: E731
                                                     min_new_tokens=n, think=think, engine="hf", **kw)
        build(case, "eager", lambda case=case, t=t, think=think, run=run: recorded(
            t.controller(think, kw), lambda _: generate_case(case, run)))
    hf_name = "hf_static_compile" if cuda else "hf_eager"
    hf_kw = dict(cache_implementation="static") if cuda else {}

    def hf():
        case = generate_case(hf_name, lambda n: model.generate(ids, attention_mask=mask, max_new_tokens=n,
                                                               min_new_tokens=n, **hf_kw, **kw))
        case.per_step_ms(Clock("wall"), steps)  # compiles (GPU) before the timed warm-up
        return case

    if "hf" in wanted and (args.hf_compile or not cuda):
        wanted.add(hf_name)
        build(hf_name, "compile" if cuda else "eager", hf)
    if not cases:
        return None
    baseline = "graph_none" if "graph_none" in reported else None
    clock = Clock("cuda" if cuda else args.clock)
    doc = {}
    guard("step_timing", modes[0], lambda: doc.update(measure(cases, clock, steps, args.step_reps, baseline, warmup=2)))
    if not doc:
        return None
    for case_name, c in doc["cases"].items():
        extra = {k: c[k] for k in ("reads_logits",) if k in c}
        if case_name == hf_name and "graph_probe" in doc["cases"]:
            extra["paired_vs_graph_probe"] = pair(doc, hf_name, "graph_probe")  # > 1: the graph engine is faster
        result_name, mode = reported[case_name]
        base = SCORE_VS_BUDGET.get(result_name)
        base = base and (case_name.replace(result_name, base))  # the budget case of the same mode
        if base in doc["cases"]:
            extra["paired_vs_budget"] = {**pair(doc, case_name, base), "vs": reported[base][0]}  # < 1.03: target
        add(result_name, mode, c["samples"], timing="step_timing", clock=doc["clock"],
            steps=steps, baseline_mode=modes[0], paired_vs_graph_none=doc["paired"].get(case_name), **extra)
    return doc
