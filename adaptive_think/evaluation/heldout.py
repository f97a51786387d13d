"""Held-out hygiene: leave out of an evaluation the questions a probe was collected and calibrated on.

A probe trained by this version records the content hashes of every collected question
(`provenance.questions_seen`, see training/train.py); `exclude_seen` drops matching items and says how
many, per level. Small question families repeat (level 1 of the bundled task has 260 distinct
questions), so some overlap is expected and is reported rather than hidden.
"""

from __future__ import annotations

from collections import Counter

from adaptive_think.training.items import Item, question_hash


def exclude_seen(items: list[Item], probe) -> tuple[list[Item], dict]:
    """(items the probe never saw, a report: drawn, excluded, excluded per level, how it was decided)."""
    seen = (probe.provenance.get("questions_seen") if probe is not None else None) or {}
    hashes = set(seen.get("sha256_16") or [])
    report = {"drawn": len(items), "excluded": 0, "excluded_per_level": {}, "kept": len(items)}
    if probe is None:
        return items, dict(report, how="no probe: nothing to exclude")
    if not hashes:
        return items, dict(report, how="the probe records no question hashes (trained before they were recorded): "
                                       "nothing excluded; overlap with its collection is unknown")
    kept = [it for it in items if question_hash(it.question) not in hashes]
    dropped = Counter(it.level for it in items if question_hash(it.question) in hashes)
    how = f"content hash against the {len(hashes)} distinct questions the probe was collected on"
    if not seen.get("complete", True):
        how += " (its collection hashed only part of its questions: overlap may remain)"
    return kept, dict(report, excluded=len(items) - len(kept), kept=len(kept),
                      excluded_per_level={str(k): v for k, v in sorted(dropped.items())}, how=how)
