"""Re-calibrate a trained probe's effort ladder without retraining its heads, e.g. on more calibration questions.

    adaptive-think calibrate --probe runs/probe --data runs/collect --calib-data runs/more --out runs/probe2
    adaptive-think calibrate --probe bundled --data DIRS... --efforts high:0.005 low:0.05 --out runs/probe2
    adaptive-think calibrate --probe runs/probe --data runs/collect --strata length:4 --out runs/probe-strata
    adaptive-think calibrate --probe runs/probe --data runs/collect --route category --out runs/probe-routed

--data must be exactly the collections the probe was trained on (its probe.json lists them under
provenance.data): their train / validation / calibration split is reproduced, the threshold path is ordered on
the training and validation questions and the rungs are tested on the calibration split plus every question of
--calib-data. Flags not given (--efforts, --delta, --skip-share, --strata, --path-cost, --route, --patience) keep the probe's own
(--route: a probe with a route keeps it; --route category fits a new one on the training split's prompts), so the same
collections reproduce its ladder. The heads and their weights are unchanged; the ladder, and the questions the probe records as
seen (so `eval` leaves them out), are replaced.
"""

from __future__ import annotations

import json

from adaptive_think.commands.train_probe import (add_calib_data_argument, add_calibration_arguments, add_memory_argument,
                                                 ladder_summary)

HELP = "re-calibrate a trained probe's effort ladder (heads unchanged), e.g. on more calibration questions"


def add_arguments(p):
    p.add_argument("--probe", required=True, help="probe folder (or 'bundled') to re-calibrate")
    p.add_argument("--data", required=True, nargs="+", help="the collection folders the probe was trained on")
    p.add_argument("--out", required=True, help="probe folder to write (may not be the probe's own folder)")
    add_calib_data_argument(p)
    add_memory_argument(p)
    add_calibration_arguments(p, defaults=False)


def run(args) -> int:
    from pathlib import Path

    from adaptive_think.commands.eval import load_probe
    from adaptive_think.training.budget import MemoryBudget
    from adaptive_think.training.calibrate_ladder import recalibrate

    probe, where = load_probe(args.probe)
    if Path(args.out).resolve() == Path(where).resolve():
        raise ValueError(f"--out {args.out} is the probe's own folder: write the re-calibrated probe elsewhere "
                         "and compare before replacing it.")
    recalibrate(probe, args.data, args.calib_data, rungs=args.efforts, delta=args.delta, skip_share=args.skip_share,
                family_wise=args.family_wise, strata=args.strata, budget=MemoryBudget.gigabytes(args.max_memory),
                path_cost=args.path_cost, route=args.route, patience=args.patience)
    probe.save_pretrained(args.out)
    print(json.dumps(ladder_summary(probe, args.out)))
    return 0
