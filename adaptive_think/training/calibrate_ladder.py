"""Calibrate a probe's effort ladder: every rung's Learn-then-Test run, on held-out and calibration-only questions.

The threshold path of each rung is ordered on the questions the heads were fitted and validated on; the tests
run on calibration questions: the calibration split of the training collections plus every question of the
calibration-only collections (`--calib-data`: drawn like the others, never seen by the heads; a question also
in the training or validation split is dropped from them). More calibration questions tighten the binomial
bound, and questions the heads never saw in any form are exactly as the probe will meet them.

Family-wise (the default): the ladder's R rungs are tested under each of its M decoding modes, R x M tests in
all; each runs at its rung's delta / (R x M), so that every rung holds under every decoding at once with
probability at least 1 - delta (Bonferroni). Otherwise each test runs at its rung's own delta.

Strata (`--strata level | category | length:K`, strata.py): within each of those tests a pair passes only if
it passes in every stratum, each stratum at the same per-test delta (an intersection-union test needs no
further split); length bins are placed once, on the training and validation questions.

Route (`--route category`, training/route.py): each question is placed in a group by the probe's route from its
prompt-end state, and each rung is calibrated once per group, on the group's own path (ordered on its training
and validation questions) and calibration questions, with the strata tests inside it. Each group keeps its own
pair, so one kind of question no longer sets the thresholds of all: every group's promise holds for the rows the
route sends there (its own claim, like a rung's or a decoding's, each with probability at least 1 - delta; with
--family-wise the split counts the groups too). The rung's top-level pair is the most conservative of the groups'.

Patience (`--patience 2` or `greedy=1,sampled=2`, training/patience.py): the probe stops at the k-th boundary in a
row over its threshold; each boundary's score is replaced by the minimum of the last k before anything else runs,
and the probe's policy_defaults carry the patience so that a row without its own runs as it was calibrated.

`recalibrate` re-runs this for a trained probe without touching its heads, e.g. after collecting more
calibration questions (`adaptive-think calibrate`).
"""

from __future__ import annotations

import time

from adaptive_think.training.calibrate import achieved_by_pairs, build_path, calibrate, path_labels, questions_of
from adaptive_think.probe.ladder import Rung, default_rung
from adaptive_think.training.patience import parse_patience, patience_spec, with_patience
from adaptive_think.training.splits import CALIB, TRAIN, VAL, assign_parts, calibration_only_summary, question_identity
from adaptive_think.training.strata import parse_strata

def calibrate_ladder(probe, records, ready, skip, part, rungs, skip_share: float, family_wise: bool = True,
                     log=print, strata="none", path_cost: str = "per-stratum", groups: list[int] | None = None,
                     patience="1") -> Rung:
    """Calibrate `rungs` [(name, epsilon, delta)] on `part`'s calibration records; install them on `probe` and
    return the default rung. strata: "none" | "level" | "category" | "length:K" (strata.py); path_cost:
    "per-stratum" | "pooled", how the threshold path prices a step under strata (calibrate.build_path);
    groups: each record's route group (training/route.py; `probe.route` must be set), None: one group;
    patience: the boundaries in a row a stop waits for, "K" or "greedy=K1,sampled=K2" (training/patience.py)."""
    is_cal = [p == CALIB for p in part]
    if not any(is_cal):
        raise ValueError("No calibration questions: collect more questions, raise --calib-fraction or add "
                         "--calib-data collections.")
    per_decoding = parse_patience(patience)
    ready = with_patience(records, ready, per_decoding)
    probe.policy_defaults = {**(getattr(probe, "policy_defaults", None) or {}), "patience": per_decoding}
    if any(k > 1 for k in per_decoding.values()):
        log("patience: " + ", ".join(f"{d} {k}" for d, k in per_decoding.items())
            + " boundaries in a row over the threshold before a stop")
    if groups is not None:
        return _calibrate_routed(probe, records, ready, skip, part, rungs, skip_share, family_wise, log, strata,
                                 path_cost, groups)
    strata = parse_strata(strata)
    # the order in which threshold pairs are tested comes from the training and validation questions; each
    # rung's path first spends skip_share of its budget there on skipping (easy questions skip thinking)
    path_qs = questions_of(records, ready, skip, [p in (TRAIN, VAL) for p in part])
    strata = strata.fit(path_qs)
    if strata.by != "none":
        log(f"strata: {strata.spec}" + (f", cut points {list(strata.cuts)} from the full thought lengths of "
                                        f"{len(path_qs)} training and validation questions" if strata.by == "length"
                                        else "") + "; every rung must pass its test in each stratum")
    # with strata the path's steps are costed per stratum, as the walk will test them
    labels = path_labels(path_qs, strata, path_cost)
    modes = sorted({r.get("decoding", "greedy") for r, c in zip(records, is_cal) if c})
    tests = len(rungs) * len(modes) if family_wise else 1
    ladder = []
    for name, eps, dlt in rungs:
        path = build_path(path_qs, skip_losses=skip_share * eps * len(path_qs), labels=labels)
        result = calibrate(records, ready, skip, is_cal, eps, dlt / tests, path=path, strata=strata)
        result["skip_share"] = skip_share
        result["family"] = {"family_wise": family_wise, "tests": tests, "delta": dlt, "delta_per_test": dlt / tests}
        pairs = {m: (got["ready_threshold"], got["skip_threshold"]) for m, got in result["by_decoding"].items()}
        ladder.append(Rung(name, eps, dlt, result["ready_threshold"], result["skip_threshold"], result,
                           by_decoding=pairs if len(pairs) > 1 or "greedy" not in pairs else {}))
        _log_result(result, name, eps, dlt, tests, log)
    default = default_rung(ladder)
    probe.set_ladder(ladder, default.name)
    log(f"default effort: {default.name} (epsilon {default.epsilon}, delta {default.delta}"
        + ("" if default.meets_promise else "; NO rung meets the 0.5-point promise") + ")")
    return default


def _calibrate_routed(probe, records, ready, skip, part, rungs, skip_share, family_wise, log, strata, path_cost,
                      groups: list[int]) -> Rung:
    """calibrate_ladder with one calibration per route group (module docstring): each rung's pairs per group."""
    names = probe.route.groups
    strata = parse_strata(strata)
    in_group = [[g == k for g in groups] for k in range(len(names))]
    is_cal = [p == CALIB for p in part]
    empty = [n for n, sel in zip(names, in_group) if not any(c and s for c, s in zip(is_cal, sel))]
    if empty:
        raise ValueError(f"The route sends no calibration question to group(s) {empty}: collect calibration "
                         "questions of every group (or leave --route out).")
    modes = sorted({r.get("decoding", "greedy") for r, c in zip(records, is_cal) if c})
    tests = len(rungs) * len(modes) * len(names) if family_wise else 1
    paths = []
    for sel in in_group:
        path_qs = questions_of(records, ready, skip, [p in (TRAIN, VAL) and s for p, s in zip(part, sel)])
        fitted = strata.fit(path_qs)  # length bins within the group: its own hard and easy questions
        paths.append((path_qs, fitted, path_labels(path_qs, fitted, path_cost)))
    # each group's calibration questions under each decoding: what the routed policy's totals are taken over
    cal_qs = {(g, m): questions_of(records, ready, skip, [c and s and r.get("decoding", "greedy") == m
                                                          for c, s, r in zip(is_cal, sel, records)])
              for g, sel in zip(names, in_group) for m in modes}
    ladder = []
    for name, eps, dlt in rungs:
        by_group, results = {}, {}
        for gname, sel, (path_qs, fitted, labels) in zip(names, in_group, paths):
            path = build_path(path_qs, skip_losses=skip_share * eps * len(path_qs), labels=labels)
            res = calibrate(records, ready, skip, [c and s for c, s in zip(is_cal, sel)], eps, dlt / tests,
                            path=path, strata=fitted)
            results[gname] = res
            by_group[gname] = {m: (got["ready_threshold"], got["skip_threshold"]) for m, got in res["by_decoding"].items()}
        # per decoding: the most conservative pair of the groups, and what the routed policy achieves on all of them
        by_decoding = {}
        for mode in modes:
            pairs = [by_group[g][mode] for g in names if mode in by_group[g]]
            qs, qpairs = [], []
            for gname in names:
                if mode in by_group[gname]:
                    qs += cal_qs[(gname, mode)]
                    qpairs += [by_group[gname][mode]] * len(cal_qs[(gname, mode)])
            by_decoding[mode] = {"n_questions": len(qs), "ready_threshold": max(p[0] for p in pairs),
                                 "skip_threshold": max(p[1] for p in pairs), "achieved": achieved_by_pairs(qs, qpairs)}
        main = by_decoding["greedy" if "greedy" in by_decoding else modes[0]]
        result = {"method": "learn-then-test per route group (each group's own fixed-sequence path and test, "
                            "strata inside it); the top-level pairs are the most conservative of the groups'",
                  "epsilon": eps, "delta": dlt, "n_questions": main["n_questions"],
                  "ready_threshold": main["ready_threshold"], "skip_threshold": main["skip_threshold"],
                  "achieved": main["achieved"], "decodings": modes, "by_decoding": by_decoding,
                  "route": {"by": probe.route.by, "groups": list(names)}, "by_group": results,
                  "skip_share": skip_share,
                  # length bins are placed per group; a reader without the row's group cannot use them (strata.py)
                  "strata": {"by": strata.by, "spec": strata.spec,
                             "by_group": {g: f.to_dict() for g, (_, f, _) in zip(names, paths)}},
                  "family": {"family_wise": family_wise, "tests": tests, "delta": dlt, "delta_per_test": dlt / tests}}
        pairs = {m: (got["ready_threshold"], got["skip_threshold"]) for m, got in by_decoding.items()}
        ladder.append(Rung(name, eps, dlt, main["ready_threshold"], main["skip_threshold"], result,
                           by_decoding=pairs if len(pairs) > 1 or "greedy" not in pairs else {}, by_group=by_group))
        for gname, res in results.items():
            _log_result(res, name, eps, dlt, tests, log, f", group {gname}")
    default = default_rung(ladder)
    probe.set_ladder(ladder, default.name)
    log(f"default effort: {default.name} (epsilon {default.epsilon}, delta {default.delta}"
        + ("" if default.meets_promise else "; NO rung meets the 0.5-point promise") + ")")
    return default


def _log_result(result: dict, name: str, eps: float, dlt: float, tests: int, log, where: str = "") -> None:
    """One line per decoding of a rung's calibration result (`where`: which group), and its strata."""
    for mode, got in result["by_decoding"].items():
        a = got["achieved"]
        log(f"effort {name} ({mode}; epsilon {eps}, delta {dlt}"
            + (f", {dlt / tests:.4g} per test of {tests}" if tests > 1 else "") + f"){where}: ready >= "
            f"{got['ready_threshold']:.3f}, skip >= {got['skip_threshold']:.3f}; on {got['n_questions']} calibration "
            f"questions: accuracy lost {a['accuracy_lost']:.4f}, thinking tokens saved {a['think_tokens_saved']:.1%}, "
            f"skipped {a['skip_rate']:.1%}")
        if "strata" in got:
            _log_strata(got["strata"], log)


def _log_strata(report: dict, log) -> None:
    """Each stratum's loss and saving at the kept pair, and the strata too small to be tested alone."""
    for s, a in report["achieved"].items():
        log(f"    {s}: {report['sizes'][s]} questions, accuracy lost {a['accuracy_lost']:.4f}, thinking saved "
            f"{a['think_tokens_saved']:.1%}, skipped {a['skip_rate']:.1%}")
    if report["too_small"]:
        how = ("tested together as one group (covered at their calibration mix only)" if report["tested_together"]
               else "NOT COVERED by this rung's promise (too few even together)")
        log(f"    WARNING: {', '.join(report['too_small'])}: fewer than the {report['min_questions']} calibration "
            f"questions a loss-free pair needs at this epsilon and delta, so not tested alone: {how}; collect more "
            "of them or use coarser strata")
    if report["stopped_by"]:
        log(f"    the walk stopped on {report['stopped_by']}")


def recalibrate(probe, data, calib_data=(), rungs=None, delta: float | None = None, skip_share: float | None = None,
                family_wise: bool = True, log=print, strata: str | None = None, budget=None,
                path_cost: str | None = None, route: str | None = None, patience: str | None = None):
    """Re-run the ladder's calibration of a trained `probe` (heads unchanged) and return it.

    data: the collection folders the probe was trained on (exactly those: the train / validation / calibration
    split is reproduced from them); calib_data: calibration-only collections. rungs (["name:epsilon[:delta]"]) /
    delta / skip_share / strata ("none" | "level" | "category" | "length:K"): None keeps the probe's own (a probe
    that records no strata was calibrated without: "none") / path_cost ("per-stratum" | "pooled"; a probe that
    records none was calibrated "pooled"). budget: budget.MemoryBudget of the hidden states read
    to score the checkpoints (None: no limit). route: None keeps the probe's route (none without one), "none" drops
    it, "category" / "level" fits a new one (training/route.py). patience ("K" | "greedy=K1,sampled=K2"): None
    keeps the probe's (1 for a probe that records none).
    """
    from adaptive_think.training.route import fit_route, route_groups
    from adaptive_think.training.scoring import collection_scores
    from adaptive_think.training.shards import open_collections
    from adaptive_think.training.splits import seen_questions, split_questions
    from adaptive_think.training.train_config import TrainConfig

    data, calib_data = list(data), list(calib_data)
    prov = probe.provenance or {}
    tc = prov.get("train_config")
    seen = prov.get("questions_seen") or {}
    if not tc or not seen.get("complete"):
        raise ValueError("This probe does not record how it was trained (train_config) or which questions it was "
                         "collected on (questions_seen): retrain it with `adaptive-think train-probe` instead.")
    hidden, records, settings = open_collections(data + calib_data, budget)
    theirs = settings["fingerprint"]
    if theirs != probe.fingerprint:
        raise ValueError(f"The collections come from model {theirs}, the probe from {probe.fingerprint}.")
    training = {question_identity(r) for r in records if r["source"] < len(data)}
    recorded = set(seen.get("sha256_16", [])) - set((prov.get("calibration_only") or {}).get("sha256_16", []))
    if training != recorded:
        raise ValueError(f"--data holds {len(training)} distinct questions, {len(training - recorded)} of them not "
                         f"among the {len(recorded)} the probe was trained on and {len(recorded - training)} of those "
                         "missing: give exactly the collections it was trained on (provenance 'data' in its probe.json: "
                         f"{prov.get('data')}), and new collections as --calib-data.")
    keys = {f.name for f in TrainConfig.__dataclass_fields__.values()}
    cfg = TrainConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in tc.items() if k in keys})
    if "path_cost" not in tc:  # a probe that records no path_cost was calibrated on the pooled path
        cfg.path_cost = "pooled"
    if path_cost is not None:
        cfg.path_cost = path_cost
    if rungs is not None:
        cfg.efforts, cfg.epsilon = tuple(rungs), None
    if delta is not None:
        cfg.delta = delta
    if skip_share is not None:
        cfg.skip_share = skip_share
    if strata is not None:
        cfg.strata = parse_strata(strata).spec
    cfg.family_wise = family_wise
    if patience is not None:
        cfg.patience = patience_spec(parse_patience(patience))
    if route is not None:
        cfg.route = route
    elif probe.route is not None:
        cfg.route = probe.route.by
    else:
        cfg.route = "none"
    ladder_spec = cfg.rungs()
    split = split_questions([question_identity(r) for r in records if r["source"] < len(data)], cfg.seed,
                            cfg.val_fraction, cfg.calib_fraction)
    part = assign_parts(records, len(data), split)
    ready, skip = collection_scores(probe, hidden, records, cfg.chunk_rows)
    groups = None
    if cfg.route == "none":
        probe.route = None
    else:
        if route is not None or probe.route is None:  # asked for, or the probe had none: fit it now
            probe.route = fit_route(probe, hidden, records, part, cfg.route, log)
        groups = route_groups(probe, probe.route, hidden, records)
    del hidden
    calibrate_ladder(probe, records, ready, skip, part, ladder_spec, cfg.skip_share, family_wise, log, cfg.strata,
                     cfg.path_cost, groups, cfg.patience)
    prov = dict(prov)
    tc = dict(tc)
    tc.update(efforts=list(cfg.efforts), epsilon=cfg.epsilon, delta=cfg.delta, skip_share=cfg.skip_share,
              family_wise=family_wise, strata=cfg.strata, path_cost=cfg.path_cost, route=cfg.route,
              patience=cfg.patience)
    prov["train_config"] = tc
    if calib_data:
        prov["calibration_only"] = calibration_only_summary(records, part, len(data), calib_data)
        prov["collections"] = [{**c, "role": "training" if i < len(data) else "calibration only"}
                               for i, c in enumerate(settings["collections"])]
    else:
        prov.pop("calibration_only", None)
    prov["questions_seen"] = seen_questions(records)
    prov.setdefault("recalibrations", []).append(
        {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data": [str(d) for d in data],
         "calib_data": [str(d) for d in calib_data]})
    probe.provenance = prov
    return probe
