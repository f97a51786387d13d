"""How collected questions are split into training, validation and calibration parts, with no leaks.

A question's identity is its content hash (`question_identity`), so the same text drawn under two ids or two
seeds lands in one part; calibration-only collections join the calibration part unless their question is also
a training or validation question (then it is dropped). Shared by train-probe and `calibrate`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter

TRAIN, VAL, CALIB, DROPPED = "train", "val", "calib", "dropped"


def question_identity(r: dict) -> str:
    """A question's identity across draws: its content hash where the collection made one, else its id."""
    return r.get("qhash") or r["qid"]


def assign_parts(records: list[dict], n_training_sources: int, split: dict[str, str]) -> list[str]:
    """The part of each record: its question's split for the training collections (sources < n); calibration for
    the calibration-only collections, unless the question is also a training or validation question (dropped)."""
    part = []
    for r in records:
        g = question_identity(r)
        if r["source"] < n_training_sources:
            part.append(split[g])
        else:
            part.append(DROPPED if split.get(g) in (TRAIN, VAL) else CALIB)
    return part


def calibration_only_summary(records, part, n_training_sources: int, folders) -> dict:
    """What the probe records about its calibration-only collections: how many questions, how many dropped, and
    the hashes of those not in the training collections (questions_seen less these = the training questions)."""
    training = {question_identity(r) for r in records if r["source"] < n_training_sources}
    extra = {r["qid"]: (question_identity(r), p) for r, p in zip(records, part) if r["source"] >= n_training_sources}
    return {"data": [str(f) for f in folders], "questions": len(extra),
            "dropped_seen_in_training": sum(p == DROPPED for _, p in extra.values()),
            "sha256_16": sorted({g for g, _ in extra.values()} - training)}


def seen_questions(records: list[dict]) -> dict:
    """What a probe records about the questions it was collected on: content hashes and bundled seeds.

    `complete` is False for collections made before questions were hashed (then nothing can be excluded).
    """
    qids = {r["qid"]: r.get("qhash") for r in records}
    hashes = sorted({h for h in qids.values() if h})
    seeds = Counter(m.group(1) for q in qids if (m := re.fullmatch(r"s(-?\d+(?:L\d+)?)-\d+", str(q))))
    return {"n_questions": len(qids), "n_distinct": len(hashes), "complete": all(qids.values()),
            "hash": "sha256 of the whitespace-normalised question text, first 16 hex digits",
            "bundled_seeds": dict(sorted(seeds.items())), "sha256_16": hashes}


def split_questions(qids: list[str], seed: int, val: float, calib: float) -> dict[str, str]:
    """qid -> "train" | "val" | "calib", by a seeded hash of the id (stable, no leaks)."""
    def key(q):
        return hashlib.sha256(f"{seed}:{q}".encode()).hexdigest()

    ordered = sorted(set(qids), key=key)
    n = len(ordered)
    n_val, n_cal = int(round(n * val)), int(round(n * calib))
    if n - n_val - n_cal < 2 or n_val < 1 or n_cal < 1:
        raise ValueError(f"Only {n} questions collected: too few to split into train/val/calibration; collect more.")
    out = {}
    for i, q in enumerate(ordered):
        out[q] = "val" if i < n_val else "calib" if i < n_val + n_cal else "train"
    return out
