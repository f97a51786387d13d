"""The out-of-distribution guard on a bundled reasoner and its probe (default: the one-family `bundled-v1`, whose
last_digit questions and vocabulary the out-of-distribution prompts are built from): false alarms in distribution,
flags out of it.

Fits the guard as `adaptive-think fit-guard` does (bundled questions of --fit-seed, half for the fit, half for
the conformal threshold at --alpha), then scores prompt-end states of
- fresh in-distribution questions (bundled questions of --fresh-seed): the false-alarm rate, which the
  conformal threshold keeps at most alpha (up to sampling error);
- prompts of formats the reasoner never saw, built from its own vocabulary (no unknown words except where
  said): two-digit operands, reversed reading order, chains longer than level 6, sentences of its own thoughts
  asked as a question, shuffled words, and chat questions with unknown words;
and, through the controller itself (hf engine, policy probe), checks that the reports' `guard` field flags the
rows the offline scores flag. Writes the guard (as JSON numbers) and the figures to --out.

    python benchmarks/guard_ood.py --out benchmarks/results/guard_bundled.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time

import torch


def ood_prompts(n: int, seed: int) -> dict[str, list[str]]:
    """Prompts of formats the bundled reasoner was never trained on, n per kind, from its own vocabulary."""
    from adaptive_think.tasks import make_questions
    from adaptive_think.tasks.arithmetic import OPENERS

    rng = random.Random(seed)
    ops = "+-*"

    def chain(length: int, lo: int, hi: int) -> str:
        parts = [str(rng.randint(lo, hi))]
        for _ in range(length):
            parts += [rng.choice(ops), str(rng.randint(lo, hi))]
        return " ".join(parts)

    base = [q.question for q in make_questions(n, seed + 1)]

    def shuffled(q: str) -> str:
        words = q.split()
        rng.shuffle(words)
        return " ".join(words)

    return {
        "two_digit_operands": [f"Compute {chain(rng.randint(1, 6), 10, 99)} from left to right, keeping only the last "
                               "digit." for _ in range(n)],
        "right_to_left_first_digit": [f"Compute {chain(rng.randint(1, 6), 0, 9)} from right to left, keeping only the "
                                      "first digit." for _ in range(n)],
        "chains_of_10_to_16": [f"Compute {chain(rng.randint(10, 16), 0, 9)} from left to right, keeping only the last "
                               "digit." for _ in range(n)],
        "thought_sentence_as_question": [f"{rng.choice(OPENERS)} So the answer is {rng.randint(0, 9)}."
                                         for _ in range(n)],
        "shuffled_words": [shuffled(q) for q in base],
        "chat_unknown_words": [rng.choice(["What is the capital of France?", "Write a poem about the sea.",
                                           "Please translate hello into German.", "Who wrote Hamlet?"])
                               for _ in range(n)],
    }


def guard_flags_through_controller(model, tok, probe, questions: list[str], batch_size: int) -> list[str]:
    """Each question's report `guard` verdict from a real generate() (hf engine, policy probe, default rung)."""
    from adaptive_think import AdaptiveThinker, ThinkConfig
    from adaptive_think.loading import chat_prompt

    thinker = AdaptiveThinker(model, tok, probe=probe)
    verdicts = []
    for i in range(0, len(questions), batch_size):
        prompts = [chat_prompt(tok, q) for q in questions[i:i + batch_size]]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        thinker.generate(**enc, think=ThinkConfig(policy="probe"), max_new_tokens=8, do_sample=False)
        verdicts += [r.guard for r in thinker.last_reports]
    return verdicts


def thinking_saved(model, tok, probe, items, batch_size: int = 64) -> dict:
    """Accuracy and mean thinking tokens of full thinking and of the probe's default rung with the guard off and
    on, over `items` (greedy, hf engine): what the guard's false alarms cost in thinking saved."""
    from adaptive_think import AdaptiveThinker, ThinkConfig
    from adaptive_think.loading import chat_prompt
    from adaptive_think.tasks import is_correct

    thinker = AdaptiveThinker(model, tok, probe=probe)
    configs = {"full": ThinkConfig(), "probe_guard_off": ThinkConfig(policy="probe", guard=False),
               "probe_guard_on": ThinkConfig(policy="probe")}
    if probe.efforts and probe.efforts[0] != probe.default_effort:  # the most conservative rung as the fallback
        configs["probe_guard_on_fallback_" + probe.efforts[0]] = ThinkConfig(policy="probe",
                                                                             guard_fallback=probe.efforts[0])
    out = {}
    for name, config in configs.items():
        right, tokens, fallbacks = 0, 0, 0
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            enc = tok([chat_prompt(tok, it.question) for it in chunk], return_tensors="pt", padding=True,
                      add_special_tokens=False)
            seq = thinker.generate(**enc, think=config, max_new_tokens=400, do_sample=False)
            texts = tok.batch_decode(seq[:, enc["input_ids"].shape[1]:], skip_special_tokens=False)
            right += sum(is_correct(t, it.answer) for t, it in zip(texts, chunk))
            tokens += sum(r.think_tokens for r in thinker.last_reports)
            fallbacks += sum(r.guard == "fallback" for r in thinker.last_reports)
        out[name] = {"accuracy": round(right / len(items), 4), "think_tokens_mean": round(tokens / len(items), 2),
                     "fallbacks": fallbacks}
    full = out["full"]["think_tokens_mean"]
    for name in [n for n in configs if n != "full"]:
        out[name]["thinking_saved"] = round(1 - out[name]["think_tokens_mean"] / full, 4)
    out["guard_cost_points_of_thinking_saved"] = round(
        100 * (out["probe_guard_off"]["thinking_saved"] - out["probe_guard_on"]["thinking_saved"]), 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fit-n", type=int, default=1000)
    p.add_argument("--fit-seed", type=int, default=5)
    p.add_argument("--fresh-n", type=int, default=2000)
    p.add_argument("--fresh-seed", type=int, default=909)
    p.add_argument("--ood-n", type=int, default=200, help="prompts per out-of-distribution kind")
    p.add_argument("--alpha", type=float, default=None, help="default: fit-guard's")
    p.add_argument("--rank", type=int, default=None, help="default: fit-guard's")
    p.add_argument("--sweep-ranks", type=int, nargs="*", default=[4, 8, 16, 32, 64],
                   help="also record false alarms and flag rates of guards of these ranks (same fit and calibration)")
    p.add_argument("--check-n", type=int, default=64, help="rows per set run through the controller")
    p.add_argument("--saving-n", type=int, default=600,
                   help="fresh questions answered with the guard off and on (what false alarms cost; 0: skip)")
    p.add_argument("--model", choices=["bundled", "bundled-v1"], default="bundled-v1", help="which bundled reasoner")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from adaptive_think.bundled import probe_path
    from adaptive_think.files import atomic_write
    from adaptive_think.loading import load_model_and_tokenizer
    from adaptive_think.probe.probe import Probe
    from adaptive_think.training.guard import (DEFAULT_ALPHA, DEFAULT_RANK, features, fit_guard, prompt_states,
                                               split_for_guard)
    from adaptive_think.training.items import bundled_items

    t0 = time.time()
    args.rank = DEFAULT_RANK if args.rank is None else args.rank
    args.alpha = DEFAULT_ALPHA if args.alpha is None else args.alpha
    model, tok = load_model_and_tokenizer(args.model, "cpu")
    probe = Probe.from_pretrained(probe_path(args.model))
    quiet = lambda m: None  # noqa: E731

    def x_of(questions):
        return features(probe, prompt_states(model, tok, questions, probe.layer, 64, log=quiet))

    fit_items = bundled_items(args.fit_n, args.fit_seed)
    x = x_of([it.question for it in fit_items])
    fit_rows, cal_rows = split_for_guard(len(fit_items), 0.5, args.fit_seed)
    guard = fit_guard(x[fit_rows], x[cal_rows], rank=args.rank, alpha=args.alpha,
                      provenance={"fitted_by": "benchmarks/guard_ood.py", "questions": f"bundled n={args.fit_n} "
                                  f"seed={args.fit_seed}", "split_seed": args.fit_seed, "calib_fraction": 0.5})
    probe.guard = guard
    fresh = [it.question for it in bundled_items(args.fresh_n, args.fresh_seed)]
    fresh_scores = guard.score(x_of(fresh))
    flags = fresh_scores > guard.threshold
    n = len(fresh)
    rate = float(flags.float().mean())
    # the conformal bound: at most alpha in expectation; the rate a fresh sample shows varies by its binomial sd
    sd = math.sqrt(args.alpha * (1 - args.alpha) / n)
    by_level = {}
    for lvl in range(1, 7):
        rows = torch.tensor([it.level == lvl for it in bundled_items(args.fresh_n, args.fresh_seed)])
        by_level[str(lvl)] = round(float(flags[rows].float().mean()), 4)
    ood = {}
    ood_questions = ood_prompts(args.ood_n, args.fresh_seed + 1)
    x_ood = {kind: x_of(questions) for kind, questions in ood_questions.items()}
    x_fresh = x_of(fresh)
    sweep = {}
    for rank in args.sweep_ranks:
        g = fit_guard(x[fit_rows], x[cal_rows], rank=rank, alpha=args.alpha)
        sweep[str(rank)] = {"false_alarm_rate": round(float((g.score(x_fresh) > g.threshold).float().mean()), 4),
                            **{kind: round(float((g.score(v) > g.threshold).float().mean()), 4)
                               for kind, v in x_ood.items()}}
    for kind, questions in ood_questions.items():
        s = guard.score(x_ood[kind])
        ood[kind] = {"n": len(questions), "flag_rate": round(float((s > guard.threshold).float().mean()), 4),
                     "median_score": round(float(s.median()), 1), "example": questions[0]}
    # the controller's own verdicts (hf engine) agree with the offline scores on a sample of each set
    check_fresh = fresh[: args.check_n]
    check_ood = [q for qs in ood_questions.values() for q in qs[: max(1, args.check_n // len(ood_questions))]]
    verdict_fresh = guard_flags_through_controller(model, tok, probe, check_fresh, 32)
    verdict_ood = guard_flags_through_controller(model, tok, probe, check_ood, 32)
    offline_ood = (guard.score(x_of(check_ood)) > guard.threshold).tolist()
    agree = ([v == "fallback" for v in verdict_fresh] == flags[: args.check_n].tolist()
             and [v == "fallback" for v in verdict_ood] == offline_ood)
    fresh_items = bundled_items(args.fresh_n, args.fresh_seed)[: args.saving_n]
    saving = thinking_saved(model, tok, probe, fresh_items) if args.saving_n else None
    result = {
        "what": "out-of-distribution guard of the bundled probe (prompt-end state, layer %d)" % probe.layer,
        "guard": {"rank": guard.rank, "alpha": guard.alpha, "threshold": guard.threshold, "n_fit": guard.n_fit,
                  "n_calibration": guard.n_calibration, "conformal_rank": guard.provenance["conformal_rank"],
                  "res_var": guard.res_var, "var": [round(v, 6) for v in guard.var.tolist()],
                  "mean": [round(v, 6) for v in guard.mean.tolist()],
                  "dirs": [[round(v, 6) for v in row] for row in guard.dirs.tolist()],
                  "provenance": guard.provenance},
        "in_distribution": {"questions": f"bundled n={n} seed={args.fresh_seed}", "false_alarm_rate": round(rate, 4),
                            "alpha": args.alpha, "binomial_sd": round(sd, 4), "by_level": by_level,
                            "median_score": round(float(fresh_scores.median()), 1)},
        "out_of_distribution": ood,
        "rank_sweep": sweep,
        "thinking_saved_in_distribution": saving,
        "controller_check": {"rows": len(check_fresh) + len(check_ood), "engine": "hf",
                             "reports_match_offline_scores": bool(agree),
                             "fallback_in_distribution": sum(v == "fallback" for v in verdict_fresh),
                             "fallback_out_of_distribution": sum(v == "fallback" for v in verdict_ood)},
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "seconds": round(time.time() - t0, 1),
    }
    text = json.dumps(result, indent=1) + "\n"
    atomic_write(args.out, lambda path: open(path, "w").write(text))
    summary = {k: v for k, v in result.items() if k != "guard"}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
