"""Check, in seconds, that the probe pipeline can work on a model: markers, template, thoughts, checker.

    adaptive-think doctor --model DIR
    adaptive-think doctor --model DIR --think-tokens "<think>" "</think>" --questions q.jsonl --checker boxed

Prints a table (does the model open a thought, close it on its own, how long do thoughts run, does the
checker read the answers, accuracy with full thinking and without, and the AUROC of each training-free score
at the sample thoughts' checkpoints labelled by forced exits, what collecting --collect-n questions would cost
with each engine), one raw output with what the checker read, a verdict and the fix for each failing check.
Exit code 1 when `collect` would not produce data a probe can be trained on.
"""

from __future__ import annotations

from adaptive_think.commands.collect import COLLECT_DEFAULTS

HELP = "check that the probe pipeline works on a model (markers, template, thoughts, checker) in seconds"


def add_arguments(p):
    p.add_argument("--model", required=True, help="local model folder, or `bundled` (`bundled-v1`)")
    p.add_argument("--think-tokens", nargs=2, default=None, metavar=("OPEN", "CLOSE"),
                   help="think markers for a model the registry does not know")
    p.add_argument("--questions", default=None, help='JSONL of {"question", "answer"} (default: bundled tasks)')
    p.add_argument("--checker", default=None,
                   help="boxed | last-number | exact | choice | answer-is (default) | package.module:function")
    p.add_argument("--samples", type=int, default=4, help="sample questions to answer")
    p.add_argument("--seed", type=int, default=11, help="seed of the bundled questions")
    p.add_argument("--max-new-tokens", type=int, default=COLLECT_DEFAULTS["max_new_tokens"],
                   help="thought + answer budget, as in collect")
    p.add_argument("--max-answer-tokens", type=int, default=COLLECT_DEFAULTS["max_answer_tokens"],
                   help="answer budget without thinking, as in collect")
    p.add_argument("--exit-text", default="\\n\\n")
    p.add_argument("--every", type=int, default=8, help="collect's checkpoint interval, for the cost estimate")
    p.add_argument("--collect-n", type=int, default=1000, metavar="N",
                   help="questions the cost estimate is for (tokens and wall time per engine; default 1000)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")


def format_examination(ex, model: str) -> str:
    """The doctor's report: table, sample output, verdict and fixes."""
    lines = [f"adaptive-think doctor: {model}", ""]
    width = max(len(c.name) for c in ex.checks)
    for c in ex.checks:
        lines.append(f"  {c.name:<{width}}  {c.status:<4}  {c.result}")
    for name, text in ex.prompts.items():
        lines.append(f"\nprompt, {name} (end): {text[-160:]!r}")
    if ex.sample:
        s = ex.sample
        read = "nothing" if s["read"] is None else repr(s["read"])
        read = read if s["reads"] else "(this checker only says right or wrong)"
        lines.append(f"\none raw output (full thinking), question {s['question'][:80]!r}, reference {s['answer']!r}:")
        out = s["output"]
        lines.append(f"  {out if len(out) <= 600 else out[:250] + ' [...] ' + out[-300:]!r}")
        lines.append(f"  the checker read: {read} -> {'right' if s['right'] else 'wrong'}")
    failing = [c for c in ex.checks if c.status == "FAIL"]
    warned = [c for c in ex.checks if c.status == "warn"]
    lines.append("")
    if failing:
        lines.append(f"verdict: NOT READY: {len(failing)} check(s) fail; collect would waste the run. Fix:")
    else:
        lines.append("verdict: ready: collect can label thoughts on this model as configured"
                     + (" (see the warnings)" if warned else "") + ".")
    for c in failing + warned:
        lines.append(f"  - {c.name}: {c.fix}")
    return "\n".join(lines)


def run(args) -> int:
    from adaptive_think.commands.collect import items_from_args
    from adaptive_think.loading import load_model_and_tokenizer
    from adaptive_think.training.doctor import DoctorConfig, examine

    cfg = DoctorConfig(samples=args.samples, max_new_tokens=args.max_new_tokens,
                       max_answer_tokens=args.max_answer_tokens,
                       exit_text=args.exit_text.encode().decode("unicode_escape"), every=args.every,
                       collect_n=args.collect_n)
    args.n = args.samples  # bundled questions drawn when there is no --questions
    items, checker = items_from_args(args)
    model, tok = load_model_and_tokenizer(args.model, args.device, args.dtype)
    ex = examine(model, tok, items, checker, cfg, think_tokens=tuple(args.think_tokens) if args.think_tokens else None,
                 checker_name=args.checker)
    print(format_examination(ex, args.model))
    return 0 if ex.ready else 1
