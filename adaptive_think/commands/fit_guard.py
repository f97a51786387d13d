"""Fit a probe's out-of-distribution guard on in-distribution questions and write the probe with it.

    adaptive-think fit-guard --model bundled --probe P --n 600 --seed 5 --alpha 0.05 --out P2
    adaptive-think fit-guard --model DIR --probe P --questions q.jsonl --checker boxed --alpha 0.05 --out P2
    adaptive-think fit-guard --model bundled --probe P --families last_digit long_chain --n 4000 --rank 64 \
        --strata category --out P                        # at most alpha of EACH family's rows fall back

One prefill per question (no thoughts, no forced exits). The questions are split into fit and calibration
parts (--calib-fraction); the threshold is the conformal quantile of the calibration scores, so that at most
alpha of in-distribution rows fall back (training/guard.py). The questions must be of the kinds the probe was
trained and calibrated on. --out may equal --probe (the file is rewritten atomically).
"""

from __future__ import annotations

import json

from adaptive_think.commands.collect import add_families_argument

HELP = "fit and calibrate a probe's out-of-distribution guard (one prefill per question)"


def add_arguments(p):
    from adaptive_think.training.guard import DEFAULT_ALPHA, DEFAULT_RANK

    src = p.add_argument_group("questions (in distribution: the kinds the probe was trained on)")
    src.add_argument("--model", required=True, help="local model folder, or `bundled` (`bundled-v1`)")
    src.add_argument("--probe", required=True, help="probe folder to add the guard to")
    src.add_argument("--questions", default=None, help='JSONL of {"question", "answer"} (default: bundled tasks)')
    src.add_argument("--checker", default=None, help="for --questions: as in `collect` (answers are only validated)")
    src.add_argument("--n", type=int, default=600, help="bundled questions to draw")
    src.add_argument("--seed", type=int, default=5, help="seed of the bundled questions and of the fit/calibration split")
    src.add_argument("--levels", type=int, nargs="+", default=None, choices=range(1, 7), metavar="L",
                     help="bundled questions of these levels only (default: all)")
    add_families_argument(src)
    g = p.add_argument_group("guard")
    g.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"false-alarm rate: at most this share of in-distribution rows falls back (default {DEFAULT_ALPHA})")
    g.add_argument("--rank", type=int, default=DEFAULT_RANK,
                   help=f"principal directions of the Mahalanobis distance (default {DEFAULT_RANK})")
    g.add_argument("--strata", choices=("none", "category", "level"), default="none",
                   help="hold alpha in each stratum of the calibration questions, not only in their mix: `category` "
                        "(a question file's \"category\", a bundled question's family) or `level` (default none)")
    g.add_argument("--calib-fraction", type=float, default=0.5,
                   help="share of the questions held out to calibrate the threshold (default 0.5)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--out", required=True, help="probe folder to write (the probe and its new guard)")
    dev = p.add_argument_group("device")
    dev.add_argument("--device", default="auto")
    dev.add_argument("--dtype", default="auto")


def run(args) -> int:
    from adaptive_think.commands.collect import items_from_args
    from adaptive_think.loading import load_model_and_tokenizer
    from adaptive_think.probe.probe import Probe
    from adaptive_think.training.guard import conformal_rank, features, fit_guard, prompt_states, split_for_guard

    args.think_tokens = None
    items, _ = items_from_args(args)
    fit_rows, cal_rows = split_for_guard(len(items), args.calib_fraction, args.seed)
    conformal_rank(len(cal_rows), args.alpha)  # too few calibration questions: refuse before loading the model
    probe = Probe.from_pretrained(args.probe)
    if probe.reads_logits:
        raise ValueError(f"{args.probe!r} is a {probe.kind!r} score file: a guard reads the hidden state of a "
                         "trained probe's layer; train one with `adaptive-think train-probe`.")
    model, tok = load_model_and_tokenizer(args.model, args.device, args.dtype)
    probe.check_model(model)
    hidden = prompt_states(model, tok, [it.question for it in items], probe.layer, args.batch_size,
                           log=lambda m: None)
    x = features(probe, hidden)
    source = args.questions or (f"bundled n={args.n} seed={args.seed} levels={args.levels or 'all'}"
                                f"{' families=' + ','.join(args.families) if args.families else ''}")
    cal_strata = None
    if args.strata != "none":
        cal_strata = [f"{args.strata} {getattr(items[i], args.strata)}" for i in cal_rows.tolist()]
    probe.guard = fit_guard(x[fit_rows], x[cal_rows], rank=args.rank, alpha=args.alpha, cal_strata=cal_strata,
                            provenance={"fitted_by": "fit-guard", "questions": source, "split_seed": args.seed,
                                        "calib_fraction": args.calib_fraction, "strata": args.strata})
    probe.save_pretrained(args.out)
    g = probe.guard
    print(json.dumps({"out": str(args.out), "layer": probe.layer, "rank": g.rank, "alpha": g.alpha,
                      "threshold": g.threshold, "n_fit": g.n_fit, "n_calibration": g.n_calibration,
                      **({"conformal_rank": g.provenance["conformal_rank"]} if "conformal_rank" in g.provenance else
                         {"strata": {k: v["threshold"] for k, v in g.provenance["stratified"]["strata"].items()},
                          "not_covered": g.provenance["stratified"]["not_covered"]})}))
    return 0
