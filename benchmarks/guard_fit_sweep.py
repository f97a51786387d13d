"""How many fit prompts and which rank the bundled probe's guard needs to flag the family it never saw.

The shipped probe was trained on `last_digit` and `long_chain`; `walk` is held out. For each (fit prompts per
family, rank), the guard is fitted as `fit-guard --strata category` fits it (training/guard.py: the first prompts of
each family for the fit, the rest for a per-family conformal threshold at --alpha) and scores fresh prompts of every
family: the share flagged is a false alarm in distribution and a catch on `walk`. One prefill per prompt; about two
minutes on two CPU cores.

    python benchmarks/guard_fit_sweep.py --out benchmarks/results/guard_fit_sweep_bundled.json
"""

from __future__ import annotations

import argparse
import json
import os

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-family", type=int, default=1600, help="in-distribution prompts of each trained family")
    p.add_argument("--held-out", type=int, default=400, help="prompts of the held-out family")
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--fits", type=int, nargs="+", default=[300, 800], help="fit prompts per family")
    p.add_argument("--ranks", type=int, nargs="+", default=[16, 32, 64, 96, 128])
    p.add_argument("--alpha", type=float, default=0.03)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from adaptive_think.bundled import probe_path
    from adaptive_think.loading import load_model_and_tokenizer
    from adaptive_think.probe.probe import Probe
    from adaptive_think.tasks.families import make_family_questions
    from adaptive_think.training.guard import features, fit_guard, prompt_states

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model, tok = load_model_and_tokenizer("bundled", "cpu")
    probe = Probe.from_pretrained(probe_path())
    trained, held = ("last_digit", "long_chain"), "walk"
    x = {}
    for fam in (*trained, held):
        n = args.held_out if fam == held else args.per_family
        qs = make_family_questions(n, args.seed, families=[fam])
        x[fam] = features(probe, prompt_states(model, tok, [q.question for q in qs], probe.layer, 64, log=lambda m: None))
    shipped = probe.guard
    rows = [{"guard": "shipped", "rank": shipped.rank, "n_fit": shipped.n_fit,
             "flagged": {f: round((shipped.score(v) > shipped.threshold).float().mean().item(), 4) for f, v in x.items()}}]
    for n_fit in args.fits:
        if n_fit >= args.per_family:
            raise SystemExit(f"--fits {n_fit} leaves no calibration prompts of the {args.per_family} per family.")
        fit = torch.cat([x[f][:n_fit] for f in trained])
        cal = torch.cat([x[f][n_fit:] for f in trained])
        strata = [f"category {f}" for f in trained for _ in range(args.per_family - n_fit)]
        for rank in args.ranks:
            g = fit_guard(fit, cal, rank=rank, alpha=args.alpha, cal_strata=strata)
            # in distribution, only the calibration prompts' own family mates outside the fit are scored
            flagged = {f: round((g.score(x[f][n_fit:] if f in trained else x[f]) > g.threshold).float().mean().item(), 4)
                       for f in x}
            rows.append({"guard": "refit", "n_fit_per_family": n_fit, "rank": rank, "threshold": g.threshold,
                         "flagged": flagged})
            print(f"fit {n_fit} a family, rank {rank:3d}: flagged {flagged}", flush=True)
    with open(args.out, "w") as fh:
        json.dump({"seed": args.seed, "alpha": args.alpha, "per_family": args.per_family, "held_out": args.held_out,
                   "note": "in-distribution shares are of the calibration prompts themselves (at most alpha by "
                           "construction, up to the conformal rounding); the held-out share is the catch rate",
                   "rows": rows}, fh, indent=1)
    print(f"shipped guard: {rows[0]['flagged']}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
