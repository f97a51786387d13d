"""The main job: the bundled reasoner on fresh questions, full thinking against adaptive thinking.

    adaptive-think demo              # the shipped probe when there is one, else a thinking budget
    adaptive-think demo --n 12 --seed 7 --engine graph
    adaptive-think demo --show 3     # question 3's thought with the probe's stop and the settled point marked, + PNG
    adaptive-think demo --families long_chain --n 4
    adaptive-think demo --model bundled-v1   # the one-family reasoner and its probe

The questions come from every task family the bundled reasoner answers (tasks/families.py), mixed evenly; with
the one-family reasoner, from `last_digit` alone, in that family's own question sequence.
"""

from __future__ import annotations

import time

HELP = "run the bundled reasoner with full and adaptive thinking, side by side"


def add_arguments(p):
    from adaptive_think.bundled import BUNDLED

    p.add_argument("--model", choices=list(BUNDLED), default="bundled", help="which bundled reasoner (and its probe)")
    p.add_argument("--n", type=int, default=8, help="questions to draw")
    p.add_argument("--seed", type=int, default=12345, help="question seed")
    p.add_argument("--families", nargs="+", default=None, metavar="NAME",
                   help="task families to draw from (default: every one the bundled reasoner answers)")
    p.add_argument("--budget", type=int, default=40, help="thinking budget when no probe ships")
    p.add_argument("--engine", choices=("hf", "graph"), default="hf")
    p.add_argument("--device", default="auto")
    p.add_argument("--effort", default=None, help="probe effort rung (default: the probe's default rung)")
    p.add_argument("--show", type=int, default=None, metavar="N",
                   help="show question N's thought with the probe's decision marked, and plot its score trace")
    p.add_argument("--png", default=None, help="where --show writes its plot (default: demo_show_N.png)")


def _mark(ok: bool) -> str:
    return "ok" if ok else "x"


def adaptive_config(has_probe: bool, budget: int, effort: str | None = None):
    from adaptive_think import ThinkConfig

    if has_probe:
        return "probe" + (f" (effort {effort})" if effort else ""), ThinkConfig(policy="probe", effort=effort)
    return f"budget {budget}", ThinkConfig(policy="budget", max_think_tokens=budget, exit_text="\n\n")


def run(args) -> int:

    from adaptive_think import AdaptiveThinker, ThinkConfig
    from adaptive_think.bundled import probe_path
    from adaptive_think.loading import chat_prompt, load_model_and_tokenizer
    from adaptive_think.tasks import is_correct, parse_answer

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}.")
    model, tok = load_model_and_tokenizer(args.model, args.device)
    if model.device.type == "cpu":
        import torch

        torch.set_num_threads(1)  # a 2M-parameter model only loses time to intra-op thread sync
    try:
        probe = probe_path(args.model)
    except FileNotFoundError:
        probe = None
    thinker = AdaptiveThinker(model, tok, probe=probe)
    questions = demo_questions(tok, args.n, args.seed, args.families)
    max_new = model.config.max_position_embeddings  # the long family thinks for up to ~2,000 tokens
    if args.show is not None:
        from adaptive_think.commands.show import show

        if not 0 <= args.show < args.n:
            raise ValueError(f"--show {args.show}: pick a question number from 0 to {args.n - 1} (--n {args.n}).")
        if probe is None:
            from adaptive_think.bundled import BUNDLED

            raise ValueError(f"--show needs the shipped probe; build it with `{BUNDLED[args.model][2]}`.")
        return show(model, tok, probe, questions[args.show], args.show, args.effort,
                    args.png or f"demo_show_{args.show}.png", args.engine)
    label, adaptive = adaptive_config(probe is not None, args.budget, args.effort)
    families = sorted({q.category for q in questions})
    print(f"{args.model} reasoner, {args.n} questions (seed {args.seed}; {', '.join(families)}); adaptive policy: {label}\n")
    print(f"{'#':>2} {'family':10s} {'lvl':>3}  {'question':46s} {'truth':>5} | {'full':>9} {'tok':>4} | "
          f"{'adaptive':>9} {'tok':>4} {'ended by':>9}")
    totals = {(fam, name): [0, 0, 0.0, 0] for fam in families for name in ("full", "adaptive")}
    fell_back = {fam: 0 for fam in families}
    for i, q in enumerate(questions):
        batch = tok([chat_prompt(tok, q.question)], return_tensors="pt", add_special_tokens=False).to(model.device)
        row = []
        for name, think in (("full", ThinkConfig()), ("adaptive", adaptive)):
            t0 = time.perf_counter()
            out = thinker.generate(**batch, think=think, max_new_tokens=max_new - batch["input_ids"].shape[1],
                                   do_sample=False, engine=args.engine)
            dt = time.perf_counter() - t0
            text = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=False)
            rep = thinker.last_reports[0]
            ok = is_correct(text, q.answer)
            row.append((parse_answer(text) or "?", ok, rep))
            tot = totals[(q.category, name)]
            tot[0] += ok
            tot[1] += rep.think_tokens
            tot[2] += dt
            tot[3] += 1
        (fa, fok, frep), (aa, aok, arep) = row
        guarded = arep.guard == "fallback"  # the probe's guard found the prompt unlike its training questions
        fell_back[q.category] += guarded
        text = " ".join(q.question.split())
        print(f"{i:2d} {q.category:10s} {q.level:3d}  {text[:46]:46s} {q.answer:>5} | {fa:>6} {_mark(fok):>2} "
              f"{frep.think_tokens:4d} | {aa:>6} {_mark(aok):>2} {arep.think_tokens:4d} {arep.ended_by:>9}"
              + (" (guard)" if guarded else ""))
    print()
    for fam in families:
        f, a = totals[(fam, "full")], totals[(fam, "adaptive")]
        saved = 1 - a[1] / f[1] if f[1] else 0.0
        guard = f", guard fell back on {fell_back[fam]}" if fell_back[fam] else ""
        print(f"{fam + ':':11s} full {f[0]}/{f[3]} correct, {f[1]} thinking tokens, {f[2]:.2f} s | "
              f"adaptive {a[0]}/{a[3]} correct, {a[1]} thinking tokens ({saved:.0%} fewer), {a[2]:.2f} s{guard}")
    if any(fell_back.values()):
        print("\n(guard): the probe's out-of-distribution guard found the prompt unlike the questions it was trained "
              "on,\nso the row thought in full (ThinkConfig(guard_fallback=...) picks another fallback).")
    return 0


def demo_questions(tok, n: int, seed: int, families=None):
    """The demo's questions: of `families` (default: every family the bundled tokenizer encodes), mixed evenly;
    the first family alone keeps its own question sequence, so a one-family reasoner shows what it always did."""
    from adaptive_think.tasks import make_questions
    from adaptive_think.tasks.families import FAMILIES, families_answered_by, make_family_questions

    answered = families_answered_by(tok)
    families = list(dict.fromkeys(families or answered))
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"--families {' '.join(unknown)}: not a task family; the families are {', '.join(FAMILIES)}.")
    unanswered = [f for f in families if f not in answered]
    if unanswered:
        raise ValueError(f"--families {' '.join(unanswered)}: the bundled reasoner was not trained on "
                         f"{'that family' if len(unanswered) == 1 else 'those families'} (it answers "
                         f"{', '.join(answered)}).")
    if families == ["last_digit"]:
        return make_questions(n, seed)
    return make_family_questions(n, seed, families=families)
