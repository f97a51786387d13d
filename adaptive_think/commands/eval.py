"""Evaluate thinking policies side by side on the same questions.

    adaptive-think eval --model bundled --probe bundled --n 600 --seed 9001 --json runs/eval.json
    adaptive-think eval --model bundled --probe bundled --n 600 --seed 9001 --do-sample --temperature 0.6 --top-p 0.95
    adaptive-think eval --model DIR --probe runs/probe --questions q.jsonl --policies full budget:128 effort:high oracle
    adaptive-think eval --model bundled --probe bundled --n 600 --seed 9001 --levels 4 5 6 --policies full effort:high
    adaptive-think eval --model DIR --score-file runs/score --n 300 --policies full score-effort:close-margin:high \
        score:entropy:0.3 oracle
    adaptive-think eval --model DIR --probe runs/probe --families last_digit walk long_chain \
        --policies full effort:high effort:high+noguard oracle

With a probe or a score file, every rung run beside `full` (effort:NAME, probe, score-effort:KIND:NAME) is checked
against its promise (evaluation/promise.py): the questions it loses against full thinking, with an exact 95%
interval against its epsilon, on the evaluated mix (--levels picks one), per level, and per the strata its file
was calibrated with.

Questions of several task families (--families) or categories are also reported per family: accuracy, thinking,
skips, each rung's share of the oracle's saving and its promise. A probe carrying an out-of-distribution guard runs
with it (the share of rows that fell back is reported); `POLICY+noguard` runs the same probe policy with the guard
off, so a family the probe never saw shows what the guard is worth there.

Every requested policy is checked before anything is generated; with no --policies, the default sweep
leaves out what cannot run here and says so. Questions the probe was collected on are left out unless
--include-seen.

Training-free scores: `score:KIND:X` runs score KIND (close-margin | entropy) at an explicit threshold (no
guarantee, no file needed); each `--score-file` (from `calibrate-score`) adds `score-effort:KIND:NAME` for its rungs,
and the default sweep then runs its rungs and a threshold sweep of its score beside the probe.
"""

from __future__ import annotations

import warnings

from adaptive_think.commands.collect import add_families_argument
from adaptive_think.commands.sampling_flags import add_sampling_arguments, sampling_from_args
from adaptive_think.config import decoding_of

HELP = "compare thinking policies: accuracy, thinking and forward tokens, wall-clock"


EVAL_MAX_NEW_TOKENS = 400


def add_arguments(p):
    p.add_argument("--model", required=True, help="local model folder, or `bundled` (`bundled-v1`)")
    p.add_argument("--probe", default=None, help="probe folder, or `bundled` (`bundled-v1`) for a shipped probe")
    p.add_argument("--score-file", nargs="+", default=[], metavar="DIR",
                   help="calibrated training-free score file(s) (calibrate-score), one per score kind: their rungs run "
                        "as score-effort:KIND:NAME")
    p.add_argument("--questions", default=None, help='JSONL of {"question", "answer"} (default: bundled tasks)')
    p.add_argument("--checker", default=None,
                   help="boxed | last-number | exact | choice | answer-is (default) | package.module:function")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=2024, help="question seed (use one not used in collection)")
    p.add_argument("--levels", type=int, nargs="+", default=None, choices=range(1, 7), metavar="L",
                   help="bundled questions of these levels only (1-6; default: all, mixed evenly): the mix on which "
                        "each rung is checked against its promise, e.g. --levels 4 5 6 for the hard questions")
    add_families_argument(p)
    p.add_argument("--policies", nargs="*", default=None,
                   help="e.g. full none budget:32 marker confidence:0.95 consistency:3 router effort:high probe:0.7 "
                        "effort:high+noguard (the guard off) oracle (default: a sweep of each family that applies)")
    p.add_argument("--include-seen", action="store_true",
                   help="keep questions the probe was collected / calibrated on (left out by default)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="PNG of accuracy vs forward tokens (default: next to --json)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"thought + answer budget of every policy (default {EVAL_MAX_NEW_TOKENS}, or what --families "
                        "needs: long_chain 2200)")
    p.add_argument("--exit-text", default="\\n\\n")
    p.add_argument("--engine", choices=("hf", "graph"), default="hf")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    add_sampling_arguments(p, "decoding (every policy, the same settings and seed)",
                           "torch seed set before each policy's run")


def load_probe(spec):
    if spec is None:
        return None, None
    from adaptive_think.probe import Probe

    from adaptive_think.bundled import is_bundled, probe_path

    if is_bundled(spec):
        spec = probe_path(spec)
    return Probe.from_pretrained(spec), str(spec)


def load_score_files(paths) -> dict:
    """{kind: score file} of the --score-file folders; a trained probe or two files of one kind is an error."""
    from adaptive_think.probe import Probe

    out = {}
    for path in paths:
        probe = Probe.from_pretrained(path)
        if not probe.reads_logits:
            raise ValueError(f"--score-file {path}: a trained probe (kind {probe.kind!r}), not a training-free score "
                             "file; pass it as --probe.")
        if probe.kind in out:
            raise ValueError(f"--score-file: two {probe.kind} score files; pass one per score kind.")
        out[probe.kind] = probe
    return out


def run(args) -> int:
    import json
    from pathlib import Path

    from adaptive_think.commands.collect import fill_max_new_tokens, items_from_args
    from adaptive_think.evaluation.heldout import exclude_seen
    from adaptive_think.evaluation.policies import check_policies, default_policies, parse_policy
    from adaptive_think.evaluation.promise import format_promise, promise_report
    from adaptive_think.evaluation.report import (format_levels, format_table, oracle_shares, oracle_shares_by_category,
                                                 pareto_check, plot, vs_full, write_json)
    from adaptive_think.evaluation.run import Evaluator, evaluate
    from adaptive_think.loading import load_model_and_tokenizer

    explicit = [parse_policy(t) for t in args.policies or []]  # fail before loading anything
    sampling = sampling_from_args(args)
    probe, probe_name = load_probe(args.probe)
    score_probes = load_score_files(args.score_file)
    pattern = parse = None
    if not args.questions:
        from adaptive_think.tasks import ANSWER_STATED, parse_answer

        pattern, parse = ANSWER_STATED, parse_answer
    ctx = dict(has_probe=probe is not None, efforts=probe.efforts if probe else [], has_pattern=pattern is not None,
               score_efforts={k: sp.efforts for k, sp in score_probes.items()})
    if explicit:
        why = check_policies(explicit, **ctx)
        if why:
            raise ValueError("These policies cannot run here: " + "; ".join(f"{k}: {v}" for k, v in why.items()) + ".")
        left_out = {}
    else:
        left_out = check_policies([parse_policy(t) for t in default_policies(1.0, True, ctx["efforts"],
                                                                             ctx["score_efforts"])], **ctx)
        if left_out:
            print("left out of the default sweep: " + "; ".join(f"{k} ({v})" for k, v in left_out.items()))
    items, checker = items_from_args(args)
    fill_max_new_tokens(args, EVAL_MAX_NEW_TOKENS)
    held_out = {"drawn": len(items), "excluded": 0, "how": "--include-seen: nothing excluded"}
    if not args.include_seen:
        items, held_out = exclude_seen(items, probe)
        print(f"held out: {held_out['excluded']} of {held_out['drawn']} questions excluded as seen by the probe "
              f"(per level {held_out['excluded_per_level']}); {held_out['how']}")
    for kind, sp in score_probes.items() if not args.include_seen else ():
        items, held_out[f"score_file:{kind}"] = exclude_seen(items, sp)
        print(f"held out: {held_out[f'score_file:{kind}']['excluded']} more questions excluded as seen by the {kind} "
              "score file")
    if not items:
        raise ValueError("Every question was seen by the probe; draw another --seed or pass --include-seen.")
    model, tok = load_model_and_tokenizer(args.model, args.device, args.dtype)
    ev = Evaluator(model, tok, items, checker, probe=probe, batch_size=args.batch_size,
                   max_new_tokens=args.max_new_tokens, exit_text=args.exit_text.encode().decode("unicode_escape"),
                   engine=args.engine, pattern=pattern, sampling=sampling, sampling_seed=args.sampling_seed, parse=parse,
                   score_probes=score_probes)
    results = {}
    if explicit:
        results.update(evaluate(ev, [s.name for s in explicit]))
    else:
        results.update(evaluate(ev, ["full"]))
        sweep = default_policies(results["full"]["think_tokens_mean"], probe is not None, ctx["efforts"],
                                 ctx["score_efforts"])
        results.update(evaluate(ev, [p for p in sweep if p != "full" and p not in left_out]))
    payload = {"model": args.model, "probe": probe_name, "n": len(items), "seed": args.seed, "levels": args.levels,
               "decoding": dict(sampling, sampling_seed=args.sampling_seed), "held_out": held_out,
               "left_out_of_default_sweep": left_out, "policies": results,
               "pareto": pareto_check(results), "pareto_rungs_only": pareto_check(results, ("effort",)),
               "oracle_share": oracle_shares(results)}
    if oracle_shares_by_category(results):
        payload["oracle_share_per_category"] = oracle_shares_by_category(results)
    scored = [k for k in results if k.startswith(("score:", "score-effort:"))]
    if scored:
        payload["vs_full_scores"] = {k: vs_full(results, k) for k in scored}
    if score_probes:
        payload["score_files"] = {k: {"path": str(path), "rungs": [{"name": r.name, "epsilon": r.epsilon,
                                                                    "ready_threshold": r.ready_threshold,
                                                                    "skip_threshold": r.skip_threshold}
                                                                   for r in sp.ladder]}
                                  for (k, sp), path in zip(score_probes.items(), args.score_file)}
        payload["pareto_score_rungs"] = {k: pareto_check(results, (f"score-effort:{k}",)) for k in score_probes}
    if probe is not None:
        mode = decoding_of(sampling)
        with warnings.catch_warnings():  # a greedy-only rung warns once per generate() call already
            warnings.simplefilter("ignore")
            used = {r.name: r.pair(mode) for r in probe.ladder}
        payload["probe_ladder"] = [{"name": r.name, "epsilon": r.epsilon, "delta": r.delta,
                                    "ready_threshold": r.ready_threshold, "skip_threshold": r.skip_threshold,
                                    "thresholds_by_decoding": {m: list(t) for m, t in r.by_decoding.items()},
                                    "thresholds_used": {"decoding": mode, "ready": used[r.name][0],
                                                        "skip": used[r.name][1],
                                                        "calibrated_for_it": mode in r.by_decoding or mode == "greedy"},
                                    "calibration_achieved": r.calibration.get("achieved"),
                                    "calibration_by_decoding": {m: g["achieved"] for m, g in
                                                                r.calibration.get("by_decoding", {}).items()}}
                                   for r in probe.ladder]
        payload["probe_default_effort"] = probe.default_effort
        payload["vs_full"] = {k: vs_full(results, k) for k in results
                              if k in ("probe", "router", "oracle") or k.startswith(("effort:", "stops:"))}
    if probe is not None or score_probes:  # every rung run beside `full`, the probe's and the score files'
        payload["promise"] = promise_report(ev.full_rows or [], ev.outcomes, probe, score_probes)
    print(format_table(results))
    shown = [k for k in results if k in ("full", "oracle", "router", "probe") or k.startswith(
        ("probe+", "router+", "effort:", "stops:", "score-effort:"))]
    print(format_levels(results, shown))
    if any("per_category" in results[k] for k in shown):  # questions of several task families (or sources)
        print(format_levels(results, shown, by="category"))
    if probe is not None or score_probes:
        print(format_promise(payload["promise"], decoding_of(sampling)) if payload["promise"] else
              "promise: not checked (it needs the `full` policy and at least one effort:NAME, probe or "
              "score-effort:KIND:NAME policy)")
    for key in ("pareto", "pareto_rungs_only", "pareto_score_rungs", "oracle_share", "oracle_share_per_category",
                "vs_full", "vs_full_scores"):
        if payload.get(key):
            print(f"{key}: {json.dumps(payload[key])}")
    if args.json:
        write_json(args.json, payload)
        png = plot(results, args.plot or Path(args.json).with_suffix(".png"))
        print(f"wrote {args.json}" + (f" and {png}" if png else " (install matplotlib for the plot)"))
    elif args.plot:
        plot(results, args.plot)
    return 0
