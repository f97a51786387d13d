"""Build a calibrated training-free score file for a model in one command: collect (no hidden states), calibrate.

    adaptive-think calibrate-score --model DIR --questions q.jsonl --checker boxed --score close-margin --out runs/score
    adaptive-think calibrate-score --model bundled --n 600 --seed 11 --out runs/score
    adaptive-think calibrate-score --model DIR --data runs/c1 runs/c2 --out runs/score     # from collections

The collection lands in OUT/collection (resumed when re-run) and records, at every step boundary of each full
thought, the forced-exit label and the close-margin and entropy scores of the logits there; no hidden states
are stored. The score file (OUT/probe.json) then works wherever a probe does: `AdaptiveThinker(probe=OUT)`,
`patch`, vLLM's `llm_kwargs`, `serve --probe OUT`, with `ThinkConfig(policy="probe", effort="high")`. Each
rung loses at most its epsilon of accuracy against full thinking with probability at least 1 - delta, on
questions drawn like the calibration ones, under the decoding collected (add --do-sample ... for sampling).
"""

from __future__ import annotations

import json
from pathlib import Path

from adaptive_think.commands import collect as collect_cmd
from adaptive_think.commands.train_probe import add_calibration_arguments, ladder_summary

HELP = "collect (no hidden states) and calibrate a training-free score file (close-margin / entropy)"


def add_arguments(p):
    collect_cmd.add_arguments(p)
    for action in p._actions:  # the collection goes under --out; the checkpoint spacing defaults to boundaries
        if action.dest == "out":
            action.help = "output folder: the score file (probe.json) and its collection (OUT/collection)"
        if action.dest == "every":
            action.default = 0
    p.add_argument("--data", nargs="+", default=None, metavar="DIR",
                   help="calibrate on these existing collections instead of collecting")
    s = p.add_argument_group("score")
    s.add_argument("--score", default="close-margin", choices=["close-margin", "entropy"],
                   help="the training-free ready score (default close-margin: p(close) / p(top))")
    s.add_argument("--skip", default="auto", choices=["auto", "yes", "no"],
                   help="skip on the same score at the prompt's end: auto keeps it only when it separates "
                        "no-think successes (AUROC >= 0.6 on the path questions)")
    s.add_argument("--path-fraction", type=float, default=0.3,
                   help="share of questions that order the threshold path (the rest test it)")
    s.add_argument("--split-seed", type=int, default=0, help="seed of the path / calibration split")
    add_calibration_arguments(p)
    for action in p._actions:  # a score file is calibrated without strata unless asked
        if action.dest == "strata":
            action.default = "none"
            action.help = action.help.replace("(default: length:2)", "(default: none)")


def run(args) -> int:
    from adaptive_think.training.calibrate_score import calibrate_score

    if args.route != "none":  # a route reads prompt-end hidden states, which a score file's collection does not keep
        raise ValueError(f"--route {args.route}: a training-free score file has no hidden states to route by; "
                         "leave --route out (or train a probe with `adaptive-think train-probe --route`).")

    out = Path(args.out)
    data = args.data
    if data is None:
        from adaptive_think.loading import load_model_and_tokenizer
        from adaptive_think.training.collect import collect

        args.states, args.token_states = False, False
        items, checker = collect_cmd.items_from_args(args)
        cfg = collect_cmd.config_from_args(args)
        model, tok = load_model_and_tokenizer(args.model, args.device, args.dtype, args.device_map)
        summary = collect(model, tok, items, out / "collection", checker, cfg,
                          think_tokens=tuple(args.think_tokens) if args.think_tokens else None,
                          doctor=collect_cmd.doctor_command(args))
        print(json.dumps({k: summary[k] for k in ("questions", "seconds", "out")}))
        data = [str(out / "collection")]
    probe = calibrate_score(data, args.score, efforts=args.efforts, delta=args.delta, path_fraction=args.path_fraction,
                            seed=args.split_seed, skip_share=args.skip_share, family_wise=args.family_wise,
                            skip=args.skip, strata=args.strata, path_cost=args.path_cost, patience=args.patience)
    probe.save_pretrained(out)
    print(json.dumps(ladder_summary(probe, out)))
    return 0
