"""Fit a probe's route (probe/route.py) and place every collected question in one of its groups.

The route is a multinomial logistic regression on the probe's normalised features of each question's prompt-end
state (one row per question, the state the skip head reads), with the question's `category` (or `level`) as its
group. It is fitted on the training split's prompts and checked on the validation split's; calibration questions
are never fitted on. `calibrate_ladder` then calibrates each group's thresholds on the calibration questions the
route sends there, so a question's group at calibration is exactly the one the controller gives it online.

    route = fit_route(probe, hidden, records, part, by="category")
    groups = route_groups(probe, route, hidden, records)       # one group index per record
"""

from __future__ import annotations

import torch

from adaptive_think.probe.route import Route
from adaptive_think.training.health import KIND_PROMPT
from adaptive_think.training.splits import TRAIN, VAL

ROUTE_BY = ("category", "level")
L2 = 1e-3  # a light pull towards 0: the groups of a task mix are far apart, the fit needs no more


def prompt_features(probe, hidden, records: list[dict]) -> tuple[list[int], torch.Tensor]:
    """(record index of each prompt record, their normalised prompt-end features [N, D] fp32)."""
    from adaptive_think.controller.step import normalised

    rows = [i for i, r in enumerate(records) if r["kind"] == KIND_PROMPT]
    key = f"layer{probe.layer}"
    if key not in hidden:
        raise ValueError(f"The collections hold layers {sorted(hidden)} but the probe reads layer {probe.layer}.")
    h = hidden[key][torch.tensor(rows, dtype=torch.long)]
    t = probe.tensors()
    return rows, normalised(h.float(), t).float()


def group_of(record: dict, by: str) -> str:
    value = record.get(by)
    if value is None or value == "":
        raise ValueError(f"--route {by}: a collected question carries no {by!r} (its collection predates it, or its "
                         f"question file has no {by!r} field); route by a field every question has.")
    return str(value)


def fit_route(probe, hidden, records: list[dict], part: list[str], by: str = "category", log=print,
              steps: int = 200) -> Route:
    """The route of `probe` fitted on the training split's prompt-end features (groups: the values of `by`)."""
    if by not in ROUTE_BY:
        raise ValueError(f"--route {by!r}: route by one of {ROUTE_BY}.")
    rows, x = prompt_features(probe, hidden, records)
    labels = [group_of(records[i], by) for i in rows]
    groups = sorted(set(labels))
    if len(groups) < 2:
        raise ValueError(f"--route {by}: the collections hold one {by} ({groups}); a route needs questions of at least "
                         "two groups (or leave --route out).")
    y = torch.tensor([groups.index(g) for g in labels])
    train = torch.tensor([part[i] == TRAIN for i in rows])
    val = torch.tensor([part[i] == VAL for i in rows])
    missing = [g for k, g in enumerate(groups) if not bool((y[train] == k).any())]
    if missing:
        raise ValueError(f"--route {by}: no training question of group(s) {missing}; collect some, or give their "
                         "collections as --data (training) rather than --calib-data only.")
    torch.manual_seed(0)
    w = torch.zeros(len(groups), x.shape[1], requires_grad=True)
    b = torch.zeros(len(groups), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
    xt, yt = x[train], y[train]

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w.t() + b, yt) + L2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    route = Route(w=w.detach().clone(), b=b.detach().clone(), groups=groups, by=by)
    pred = route.assign(x)
    acc = {name: float((pred[m] == y[m]).float().mean()) if bool(m.any()) else None
           for name, m in (("train", train), ("validation", val))}
    counts = {g: int((y[train] == k).sum()) for k, g in enumerate(groups)}
    route.provenance = {"fitted_on": "training split prompt-end states", "training_questions": counts,
                        "accuracy": acc, "l2": L2}
    log(f"route by {by}: groups {groups}, training accuracy {acc['train']:.4f}"
        + (f", validation accuracy {acc['validation']:.4f}" if acc["validation"] is not None else ""))
    return route


def route_groups(probe, route: Route, hidden, records: list[dict]) -> list[int]:
    """The route's group of every record (its question's: a question is placed by its prompt-end state)."""
    rows, x = prompt_features(probe, hidden, records)
    placed = dict(zip(((records[i]["source"], records[i]["qid"]) for i in rows), route.assign(x).tolist()))
    try:
        return [placed[(r["source"], r["qid"])] for r in records]
    except KeyError as err:
        raise ValueError(f"A collected question has thought records but no prompt record ({err}); the collection "
                         "is incomplete: re-run its collect command (it resumes).") from None
