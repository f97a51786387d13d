"""Train, layer-sweep and calibrate a probe on a collection, and save it.

    adaptive-think train-probe --data runs/collect --out runs/probe --efforts high:0.005 medium:0.02 low:0.05
    adaptive-think train-probe --data runs/collect --out runs/probe --epsilon 0.02 --delta 0.1   # one rung
    adaptive-think train-probe --data runs/collect runs/collect-sampled --out runs/probe      # greedy + sampled
    adaptive-think train-probe --data runs/collect --calib-data runs/more --out runs/probe   # + calibration-only
    adaptive-think train-probe --data runs/collect --out runs/probe --strata level   # the promise per level
"""

from __future__ import annotations

import json

from adaptive_think.probe.ladder import DEFAULT_RUNGS

HELP = "train and calibrate a probe from collected data"


def add_arguments(p):
    p.add_argument("--data", required=True, nargs="+",
                   help="folder(s) written by `adaptive-think collect` for this model; add a sampled collection "
                        "(collect --do-sample ...) to calibrate every rung under sampling too")
    p.add_argument("--out", required=True, help="probe folder to write (probe.safetensors + probe.json)")
    add_calib_data_argument(p)
    add_memory_argument(p)
    g = p.add_argument_group("training")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--width", type=int, default=64, help="MLP hidden width")
    g.add_argument("--epochs", type=int, default=300)
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--neg-weight", type=float, default=4.0,
                   help="ready head: loss weight of a wrong checkpoint against a right one's 1 (default 4); the head "
                        "is used at high thresholds, where an early false positive loses the question; 1 is plain BCE")
    g.add_argument("--ready-at-boundaries", action="store_true",
                   help="fit the ready head on step-boundary checkpoints only (the only places a calibrated probe stops)")
    g.add_argument("--memory", type=int, default=0, metavar="K",
                   help="ready head with memory: it also reads a running maximum of K learned features of every "
                        "earlier thought token (needs collections made with --token-states; 0: none, the default)")
    g.add_argument("--memory-counts", type=int, default=0, metavar="C",
                   help="with --memory: C more units that count (a running sum of a learned feature over the thought, "
                        "e.g. passes made) instead of keeping a maximum (default 0)")
    g.add_argument("--memory-batch", type=int, default=0, metavar="N",
                   help="with --memory: one optimiser step per N training thoughts (default 0: full batch, one step "
                        "an epoch)")
    g.add_argument("--memory-epochs", type=int, default=None, metavar="E",
                   help="with --memory: the memory head's epochs (default: --epochs)")
    g.add_argument("--memory-lr", type=float, default=None, help="with --memory: its learning rate (default: --lr)")
    g.add_argument("--kinds", nargs="+", default=["linear", "mlp"], choices=["linear", "mlp"])
    c = add_calibration_arguments(p)
    c.add_argument("--epsilon", type=float, default=None, help="one rung named 'custom' instead of --efforts")
    c.add_argument("--val-fraction", type=float, default=0.15)
    c.add_argument("--calib-fraction", type=float, default=0.35)


def add_calib_data_argument(p):
    p.add_argument("--calib-data", nargs="+", default=[], metavar="DIR",
                   help="calibration-only collection(s) of the same model: every question is a calibration question "
                        "(never trained on); more of them tighten each rung's bound")


def add_memory_argument(p):
    from adaptive_think.training.budget import DEFAULT_MAX_MEMORY_GB

    p.add_argument("--max-memory", type=float, default=DEFAULT_MAX_MEMORY_GB, metavar="GB",
                   help="the most GB of hidden states held in memory at once (default "
                        f"{DEFAULT_MAX_MEMORY_GB:g}); the rest is read from the collection's shards as needed. The "
                        "probe does not depend on it; a larger budget reads the disk less often")


def add_calibration_arguments(p, defaults: bool = True):
    """The calibration flags train-probe and calibrate share (defaults=False: None keeps the probe's own)."""
    def default(text):
        return text if defaults else "the probe's own"

    c = p.add_argument_group("calibration (Learn-then-Test), one run per effort rung")
    c.add_argument("--efforts", nargs="+", default=list(DEFAULT_RUNGS) if defaults else None, metavar="NAME:EPSILON[:DELTA]",
                   help="effort ladder: each rung loses at most EPSILON accuracy against full thinking with "
                        f"probability >= 1 - DELTA (default: {default(' '.join(DEFAULT_RUNGS))})")
    c.add_argument("--delta", type=float, default=0.1 if defaults else None,
                   help=f"DELTA of rungs that name none (default: {default('0.1')})")
    c.add_argument("--skip-share", type=float, default=0.25 if defaults else None,
                   help=f"share of each rung's epsilon spent on skipping before early stops (default: {default('0.25')}): "
                        "easy questions then skip thinking outright; 0 orders thresholds by tokens saved per loss alone")
    c.add_argument("--strata", type=_strata_spec, default="length:2" if defaults else None, metavar="BY",
                   help="none | level | category | length:K: every rung must pass its test in each stratum of the "
                        "calibration questions (their level, their category, or K quantile bins of the full "
                        "thought's length), so that it keeps its promise on any mix of them "
                        f"(default: {default('length:2')})")
    c.add_argument("--path-cost", choices=("per-stratum", "pooled"), default="per-stratum" if defaults else None,
                   help="how the threshold path prices a step under --strata: the largest rise of one stratum's loss "
                        "rate (per-stratum, where the stratified test will stop) or questions lost over all (pooled) "
                        f"(default: {default('per-stratum')})")
    c.add_argument("--route", choices=("none", "category", "level"), default="none" if defaults else None,
                   help="give each category (or level) of question thresholds of its own: a route fitted on the "
                        "training prompts places each row in its group at the prompt's end, and every rung is "
                        "calibrated per group, so the hardest kind no longer sets the thresholds of all "
                        f"(default: {default('none')})")
    c.add_argument("--patience", type=_patience_spec, default="1" if defaults else None, metavar="K",
                   help="boundaries in a row over the threshold before a stop, K or per decoding "
                        "(greedy=1,sampled=2): a head that fires a step early loses less when the stop waits one "
                        f"more step, so the thresholds can go lower (default: {default('1')})")
    c.add_argument("--per-rung-delta", dest="family_wise", action="store_false",
                   help="test each rung under each decoding at its own DELTA (default: family-wise, each of the "
                        "rungs x decodings tests at DELTA / their number, so that all hold at once with "
                        "probability >= 1 - DELTA)")
    return c


def _strata_spec(text: str) -> str:
    """argparse type of --strata: the spec, checked (a bad one exits with the reason)."""
    import argparse

    from adaptive_think.training.strata import parse_strata

    try:
        return parse_strata(text).spec
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _patience_spec(text: str) -> str:
    """argparse type of --patience: the spec, checked."""
    import argparse

    from adaptive_think.training.patience import parse_patience, patience_spec

    try:
        return patience_spec(parse_patience(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def run(args) -> int:
    from adaptive_think.training.budget import MemoryBudget
    from adaptive_think.training.train_config import TrainConfig
    from adaptive_think.training.train import train_probe

    cfg = TrainConfig(seed=args.seed, width=args.width, epochs=args.epochs, lr=args.lr, epsilon=args.epsilon,
                      efforts=tuple(args.efforts), delta=args.delta, val_fraction=args.val_fraction,
                      calib_fraction=args.calib_fraction, kinds=tuple(args.kinds),
                      ready_at_boundaries=args.ready_at_boundaries, skip_share=args.skip_share,
                      neg_weight=args.neg_weight, memory=args.memory, memory_counts=args.memory_counts,
                      memory_batch=args.memory_batch, memory_epochs=args.memory_epochs, memory_lr=args.memory_lr,
                      family_wise=args.family_wise,
                      strata=args.strata, path_cost=args.path_cost, route=args.route, patience=args.patience)
    probe = train_probe(args.data, cfg, calib_data=args.calib_data, budget=MemoryBudget.gigabytes(args.max_memory))
    probe.save_pretrained(args.out)
    print(json.dumps(ladder_summary(probe, args.out)))
    return 0


def ladder_summary(probe, out) -> dict:
    """What train-probe and calibrate print when done: every rung's thresholds and calibration result."""
    return {"out": str(out), "layer": probe.layer, "kind": probe.kind, "default_effort": probe.default_effort,
            "ladder": {r.name: {"epsilon": r.epsilon, "delta": r.delta, "ready_threshold": r.ready_threshold,
                                "skip_threshold": r.skip_threshold, "achieved": r.calibration["achieved"],
                                "family": r.calibration.get("family"), "strata": r.calibration.get("strata"),
                                "by_decoding": r.calibration.get("by_decoding"),
                                **({"by_group": {g: {m: list(p) for m, p in pairs.items()}
                                                 for g, pairs in r.by_group.items()}} if r.by_group else {})}
                       for r in probe.ladder}}
