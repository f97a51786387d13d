"""Evaluate thinking policies side by side on the same questions.

    adaptive-think eval --model bundled --probe bundled --n 300 --seed 2024 --json runs/eval.json
    adaptive-think eval --model DIR --probe runs/probe --questions q.jsonl --policies full budget:128 probe
"""

from __future__ import annotations

HELP = "compare thinking policies: accuracy, thinking and forward tokens, wall-clock"


def add_arguments(p):
    p.add_argument("--model", required=True, help="local model folder, or `bundled`")
    p.add_argument("--probe", default=None, help="probe folder, or `bundled` for the shipped probe")
    p.add_argument("--questions", default=None, help='JSONL of {"question", "answer"} (default: bundled tasks)')
    p.add_argument("--checker", default=None,
                   help="boxed | last-number | exact | choice | answer-is (default) | package.module:function")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=2024, help="question seed (use one not used in collection)")
    p.add_argument("--policies", nargs="*", default=None,
                   help="e.g. full none budget:32 marker confidence:0.95 probe probe:0.7 (default: a sweep of each)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="PNG of accuracy vs forward tokens (default: next to --json)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=400)
    p.add_argument("--exit-text", default="\\n\\n")
    p.add_argument("--engine", choices=("hf", "graph"), default="hf")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")


def run(args) -> int:
    import json
    from pathlib import Path

    from adaptive_think.commands.collect import items_from_args
    from adaptive_think.evaluation.policies import default_policies, parse_policy
    from adaptive_think.evaluation.run import Evaluator, evaluate, format_table, pareto_check, plot, write_json
    from adaptive_think.loading import load_model_and_tokenizer

    for text in args.policies or []:
        parse_policy(text)  # fail before loading anything
    items, checker = items_from_args(args)
    model, tok = load_model_and_tokenizer(args.model, args.device, args.dtype)
    probe = args.probe
    if probe == "bundled":
        from adaptive_think.bundled import probe_path

        probe = probe_path()
    pattern = None
    if not args.questions:
        from adaptive_think.tasks import ANSWER_STATED

        pattern = ANSWER_STATED
    ev = Evaluator(model, tok, items, checker, probe=probe, batch_size=args.batch_size,
                   max_new_tokens=args.max_new_tokens, exit_text=args.exit_text.encode().decode("unicode_escape"),
                   engine=args.engine, pattern=pattern)
    policies = args.policies
    results = {}
    if not policies:
        results.update(evaluate(ev, ["full"]))
        policies = [p for p in default_policies(results["full"]["think_tokens_mean"], probe is not None) if p != "full"]
        if pattern is None:
            policies = [p for p in policies if p != "marker"]
    results.update(evaluate(ev, policies))
    payload = {"model": args.model, "probe": str(probe) if probe else None, "n": len(items), "seed": args.seed,
               "policies": results, "pareto": pareto_check(results)}
    if ev.thinker.probe is not None:
        payload["probe_calibration"] = ev.thinker.probe.calibration
        full = results.get("full")
        cal = results.get("probe")
        if full and cal:
            payload["probe_vs_full"] = {
                "think_tokens_saved": 1 - cal["think_tokens_mean"] / max(full["think_tokens_mean"], 1e-9),
                "accuracy_points_lost": 100 * (full["accuracy"] - cal["accuracy"]),
                "skip_rate_easiest": cal["per_level"][min(cal["per_level"], key=int)]["skip_rate"],
                "skip_rate_hardest": cal["per_level"][max(cal["per_level"], key=int)]["skip_rate"],
            }
    print(format_table(results))
    for key in ("pareto", "probe_vs_full"):
        if key in payload:
            print(f"{key}: {json.dumps(payload[key])}")
    if args.json:
        write_json(args.json, payload)
        png = plot(results, args.plot or Path(args.json).with_suffix(".png"))
        print(f"wrote {args.json}" + (f" and {png}" if png else " (install matplotlib for the plot)"))
    elif args.plot:
        plot(results, args.plot)
    return 0
