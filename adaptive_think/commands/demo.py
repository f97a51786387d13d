"""The main job: the bundled reasoner on fresh questions, full thinking against adaptive thinking.

    adaptive-think demo              # the shipped probe when there is one, else a thinking budget
    adaptive-think demo --n 12 --seed 7 --engine graph
    adaptive-think demo --show 3     # question 3's thought with the probe's stop and the settled point marked, + PNG
"""

from __future__ import annotations

import time

HELP = "run the bundled reasoner with full and adaptive thinking, side by side"


def add_arguments(p):
    p.add_argument("--n", type=int, default=8, help="questions to draw")
    p.add_argument("--seed", type=int, default=12345, help="question seed")
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
    from adaptive_think.tasks import is_correct, make_questions, parse_answer

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}.")
    model, tok = load_model_and_tokenizer("bundled", args.device)
    if model.device.type == "cpu":
        import torch

        torch.set_num_threads(1)  # a 2M-parameter model only loses time to intra-op thread sync
    try:
        probe = probe_path()
    except FileNotFoundError:
        probe = None
    thinker = AdaptiveThinker(model, tok, probe=probe)
    questions = make_questions(args.n, args.seed)
    if args.show is not None:
        from adaptive_think.commands.show import show

        if not 0 <= args.show < args.n:
            raise ValueError(f"--show {args.show}: pick a question number from 0 to {args.n - 1} (--n {args.n}).")
        if probe is None:
            raise ValueError("--show needs the shipped probe; build it with `bash scripts/train_bundled_probe.sh`.")
        return show(model, tok, probe, questions[args.show], args.show, args.effort,
                    args.png or f"demo_show_{args.show}.png", args.engine)
    label, adaptive = adaptive_config(probe is not None, args.budget, args.effort)
    print(f"bundled reasoner, {args.n} questions (seed {args.seed}); adaptive policy: {label}\n")
    print(f"{'#':>2} {'lvl':>3}  {'question':58s} {'truth':>5} | {'full':>9} {'tok':>4} | {'adaptive':>9} {'tok':>4} {'ended by':>9}")
    totals = {"full": [0, 0, 0.0], "adaptive": [0, 0, 0.0]}
    for i, q in enumerate(questions):
        batch = tok([chat_prompt(tok, q.question)], return_tensors="pt", add_special_tokens=False).to(model.device)
        row = []
        for name, think in (("full", ThinkConfig()), ("adaptive", adaptive)):
            t0 = time.perf_counter()
            out = thinker.generate(**batch, think=think, max_new_tokens=400, do_sample=False, engine=args.engine)
            dt = time.perf_counter() - t0
            text = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=False)
            rep = thinker.last_reports[0]
            ok = is_correct(text, q.answer)
            row.append((parse_answer(text) or "?", ok, rep))
            totals[name][0] += ok
            totals[name][1] += rep.think_tokens
            totals[name][2] += dt
        (fa, fok, frep), (aa, aok, arep) = row
        print(f"{i:2d} {q.level:3d}  {q.question[:58]:58s} {q.answer:>5} | {fa:>6} {_mark(fok):>2} {frep.think_tokens:4d} | "
              f"{aa:>6} {_mark(aok):>2} {arep.think_tokens:4d} {arep.ended_by:>9}")
    f, a = totals["full"], totals["adaptive"]
    saved = 1 - a[1] / f[1] if f[1] else 0.0
    print(f"\ntotals: full {f[0]}/{args.n} correct, {f[1]} thinking tokens, {f[2]:.2f} s | "
          f"adaptive {a[0]}/{args.n} correct, {a[1]} thinking tokens ({saved:.0%} fewer), {a[2]:.2f} s")
    return 0
