"""Patience in calibration: a probe that stops at boundaries only after k consecutive ones pass its threshold.

Online (controller/step.py), a row that stops only at step boundaries counts its patience in boundaries: it
stops at the k-th boundary in a row whose ready score passes the threshold. That is a patience-1 stop on a
transformed score, the minimum of the last k boundary scores (NaN until k boundaries have been read), so
calibration replaces each boundary checkpoint's score by that minimum and then runs unchanged.

Why k > 1: a ready head can fire one step early, at the boundary just before the step that states the answer
(the forced exit there still answers with the previous pass's result). Waiting one more step costs a few
tokens and removes most of those losses, so the threshold can go lower; under sampling that saves more than it
costs. The patience is chosen per decoding ("greedy=1,sampled=2") and travels in the probe's policy_defaults.

    parse_patience("2")                  -> {"greedy": 2, "sampled": 2}
    parse_patience("greedy=1,sampled=2") -> {"greedy": 1, "sampled": 2}
"""

from __future__ import annotations

import math
from collections import defaultdict

DECODINGS = ("greedy", "sampled")


def parse_patience(spec) -> dict[str, int]:
    """{decoding: patience} from "K" (every decoding) or "greedy=K1,sampled=K2" (an unnamed decoding gets 1)."""
    text = str(spec).strip()

    def count(value: str, where: str) -> int:
        try:
            k = int(value)
        except ValueError:
            k = 0
        if k < 1:
            raise ValueError(f"--patience {spec!r}: {where} must be an int >= 1, e.g. 2 or greedy=1,sampled=2.")
        return k

    if "=" not in text:
        k = count(text, "the patience")
        return {d: k for d in DECODINGS}
    out = {d: 1 for d in DECODINGS}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in DECODINGS:
            raise ValueError(f"--patience {spec!r}: unknown decoding {name!r}; name greedy and / or sampled.")
        out[name] = count(value.strip(), name)
    return out


def patience_spec(patience: dict[str, int]) -> str:
    """The spec string parse_patience reads back (TrainConfig keeps the spec)."""
    if len(set(patience.values())) == 1:
        return str(next(iter(patience.values())))
    return ",".join(f"{d}={patience[d]}" for d in DECODINGS)


def with_patience(records, ready, patience: dict[str, int]) -> list[float]:
    """The ready scores with each boundary checkpoint's replaced by the minimum of its thought's last k boundary
    scores (k = the patience of the record's decoding; NaN before k boundaries or where one of them is NaN).
    Other records keep theirs (calibration reads boundary checkpoints only)."""
    out = list(ready)
    if all(k == 1 for k in patience.values()):
        return out
    thoughts = defaultdict(list)
    for i, r in enumerate(records):
        if r["kind"] != 0 and r.get("boundary"):
            thoughts[(r.get("decoding", "greedy"), r["qid"])].append(i)  # one thought, as questions_of groups
    for (decoding, _), rows in thoughts.items():
        k = patience.get(decoding, 1)
        if k == 1:
            continue
        rows.sort(key=lambda i: records[i]["pos"])
        window = [float(ready[i]) for i in rows]
        for j, i in enumerate(rows):
            last = window[max(0, j - k + 1): j + 1]
            out[i] = float("nan") if len(last) < k or any(math.isnan(x) for x in last) else min(last)
    return out
