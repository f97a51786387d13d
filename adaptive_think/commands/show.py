"""`adaptive-think demo --show N`: one question's decision, seen from inside.

Prints question N's full thought (greedy) with the point where the probe stopped it (or the note that it
skipped thinking) and the point where the answer settled (the oracle's point: after it every forced exit
answers right); writes a PNG of the ready score along the full thought against the threshold, with both
points marked.
"""

from __future__ import annotations

STOP_MARK, SETTLED_MARK = " <<PROBE STOP>> ", " <<SETTLED>> "


def ready_trace(scores: list[float], body: int, length: int) -> list[float]:
    """Ready score after each of the `length` thought tokens from a per-step trace (step s reads token s-1)."""
    return [scores[body + k] for k in range(1, length + 1) if body + k < len(scores)]


def marked_thought(tok, thought: list[int], marks: dict[int, str]) -> str:
    """The thought's text with `marks` inserted after the given numbers of thought tokens."""
    out, last = [], 0
    for pos in sorted(marks):
        out.append(tok.decode(thought[last:pos], skip_special_tokens=False))
        out.append(marks[pos])
        last = pos
    out.append(tok.decode(thought[last:], skip_special_tokens=False))
    return "".join(out)


def plot_trace(path, trace: list[float], threshold: float, stop: int | None, settled: int, title: str) -> str | None:
    """PNG of the ready score per thought token, the threshold, the probe's stop and the settled point."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(range(1, len(trace) + 1), trace, marker=".", label="ready score")
    ax.axhline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.2f}")
    if stop is not None:
        ax.axvline(stop, color="tab:green", label=f"probe stop ({stop} tokens)")
    ax.axvline(settled, color="tab:gray", linestyle=":", label=f"answer settled ({settled} tokens)")
    ax.set_xlabel("thinking tokens written")
    ax.set_ylabel("P(answer right if thinking stops now)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def show(model, tok, probe_path, question, index: int, effort: str | None, png: str, engine: str = "hf") -> int:
    from adaptive_think import AdaptiveThinker, ThinkConfig
    from adaptive_think.evaluation.oracle import oracle_points
    from adaptive_think.evaluation.run import Evaluator
    from adaptive_think.loading import chat_prompt
    from adaptive_think.training.thoughts import thought_span
    from adaptive_think.training.items import Item
    from adaptive_think.tasks import is_correct

    thinker = AdaptiveThinker(model, tok, probe=probe_path)
    probe = thinker.probe
    ready_t, skip_t = probe.thresholds(effort)
    batch = tok([chat_prompt(tok, question.question)], return_tensors="pt", add_special_tokens=False).to(model.device)
    plen = batch["input_ids"].shape[1]
    # room for the longest thought the model can hold (a long_chain thought runs to ~2,000 tokens)
    kw = dict(max_new_tokens=model.config.max_position_embeddings - plen, do_sample=False, engine=engine)
    # the full thought, scored at every step: the probe reads it but a minimum beyond any thought keeps it quiet
    full_out = thinker.generate(**batch, think=ThinkConfig(policy="probe", min_think_tokens=10**6, allow_skip=False,
                                                           trace=True), **kw)
    scores = thinker.last_reports[0].scores or []
    gen = full_out[0, plen:].tolist()
    prompt = batch["input_ids"][0].tolist()
    body, close = thought_span(prompt, gen, thinker.markers)
    if body is None or close < 0:
        print(f"question {index}: the model wrote no closed thought; nothing to show.")
        return 1
    thought = gen[body:close]
    full_text = tok.decode(gen, skip_special_tokens=False)
    adaptive_out = thinker.generate(**batch, think=ThinkConfig(policy="probe", effort=effort), **kw)
    rep = thinker.last_reports[0]
    group = ""
    if rep.group is not None:  # a probe with a route: the row ran its group's pair, not the rung's top-level one
        ready_t, skip_t = probe.group_thresholds(effort)[rep.group]
        group = f" (route group {probe.route.groups[rep.group]})"
    adaptive_text = tok.decode(adaptive_out[0, plen:], skip_special_tokens=False)
    item = Item(f"show-{index}", question.question, question.answer, question.level)
    ev = Evaluator(model, tok, [item], is_correct, progress=False)
    row = dict(prompt=prompt, gen=gen, correct=is_correct(full_text, question.answer), think=len(thought))
    settled = oracle_points(ev, [row])[0]

    rung = effort or probe.default_effort or "calibrated"
    print(f"question {index} (level {question.level}): {question.question}   truth {question.answer}")
    print(f"probe rung {rung}{group}: ready >= {ready_t:.3f}, skip >= {skip_t:.3f}; skip score at the prompt's end "
          f"{scores[0]:.3f}" if scores else "")
    if rep.guard == "fallback":  # the probe's decisions were never used on this row
        print(f"the probe's guard flagged this prompt as unlike its training questions (score {rep.guard_score:.1f}), "
              "so the row thought in full")
    marks = {settled: SETTLED_MARK}
    stop = None
    if rep.ended_by == "skipped":
        print(f"the probe SKIPPED thinking (answer: {'right' if is_correct(adaptive_text, question.answer) else 'WRONG'}); "
              "the full thought it saved:")
    else:
        stop = rep.think_tokens if rep.ended_by == "probe" else None
        if stop is not None:
            marks[stop] = STOP_MARK + (SETTLED_MARK if stop == settled else "")
        print(f"the probe's thought ended by {rep.ended_by} after {rep.think_tokens} of {len(thought)} tokens "
              f"(answer: {'right' if is_correct(adaptive_text, question.answer) else 'WRONG'}); full thought:")
    print("-" * 80)
    print(marked_thought(tok, thought, marks))
    print("-" * 80)
    print(f"settled after {settled} tokens (every forced exit from there on answers right)")
    trace = ready_trace(scores, body, len(thought))
    path = plot_trace(png, trace, ready_t, stop if stop is not None else (0 if rep.ended_by == "skipped" else None),
                      settled, f"q{index} (level {question.level}): {question.question}")
    print(f"wrote {path}" if path else "install matplotlib for the score plot")
    return 0
