"""Every checkpoint of a collection scored by a probe, as the controller would score it online.

The ready score of a thought checkpoint is the probe's score after the token at `pos - 1` (a memory probe reads
the running maxima over the thought's states so far, `Probe.score_thought`; memory.py says which states a
`--token-stride` collection holds); the skip score is read at each question's prompt record. These are the
scores `calibrate.py` simulates the policy with.

A score file (kind "close-margin" / "entropy") needs no hidden states: its scores are the ones the collection
recorded from each checkpoint's logits (`record_scores`).
"""

from __future__ import annotations

import torch

from adaptive_think.training.health import KIND_PROMPT
from adaptive_think.training.memory import COUNTS_NEED_EVERY_TOKEN, ThoughtSet
from adaptive_think.training.rows import Rows, budget_of, resident, working_bytes
from adaptive_think.training.shards import THOUGHT_PREFIX


# the record field holding each training-free score (training/collect.py writes them)
RECORD_FIELDS = {"close-margin": "close_margin", "entropy": "entropy_score"}


def record_scores(kind: str, records: list[dict], skip: bool) -> tuple[list[float], list[float]]:
    """(ready, skip) of every record under training-free score `kind`: the thought records' recorded score, and
    the prompt records' one as the skip score when `skip` (else NaN: never skips)."""
    field = RECORD_FIELDS[kind]
    missing = sum(field not in r for r in records)
    if missing:
        raise ValueError(f"{missing} of {len(records)} records carry no {field!r}: the collection predates logit "
                         "scores. Collect again (`adaptive-think collect --no-states ...` is enough for a score file).")
    nan = float("nan")
    ready = [float(r[field]) if r["kind"] != KIND_PROMPT else nan for r in records]
    skips = [float(r[field]) if (skip and r["kind"] == KIND_PROMPT) else nan for r in records]
    return ready, skips


SCORE_ROWS = 8192  # rows scored at once (a fixed cut: a row's score does not depend on the budget)


@torch.no_grad()
def collection_scores(probe, hidden, records: list[dict], chunk_rows: int = SCORE_ROWS) -> tuple[list[float], list[float]]:
    """(ready, skip) score of every record (NaN where the head does not apply or the thought has no states).

    hidden: StoredStates (stored.py; read `chunk_rows` rows at a time, within its budget) or {name: tensor}.
    """
    if probe.reads_logits:
        return record_scores(probe.kind, records, probe.skip_kind is not None)
    key = f"layer{probe.layer}"
    if key not in hidden:
        raise ValueError(f"The collection holds layers {sorted(hidden)} but the probe reads layer {probe.layer}: "
                         f"collect with --layers {probe.layer}.")
    h, budget = hidden[key], budget_of(hidden)
    d = h.shape[1]
    if not probe.memory_size:
        ready, skip = [], []
        with resident(hidden, key, working_bytes(chunk_rows, d, probe.width)):
            for x, _ in Rows(h, torch.arange(len(h)), None, None, None, chunk_rows, budget, probe.width).chunks():
                r, s = probe.score(x)
                ready += r.tolist()
                skip += s.tolist()
        return ready, skip
    thoughts = ThoughtSet.from_collection(hidden, records, probe.layer)
    if not thoughts.states:
        raise ValueError("This probe has memory, so it scores whole thoughts, but the collection holds no "
                         "thought-token states: collect it with --token-states.")
    if probe.memory_counts and not thoughts.every_token:
        raise ValueError(COUNTS_NEED_EVERY_TOKEN)
    ready = [float("nan")] * len(records)
    longest = max(len(s) for s in thoughts.states.values())
    with resident(hidden, f"{THOUGHT_PREFIX}{probe.layer}", working_bytes(longest, d, probe.width)):
        for q, states in thoughts.states.items():
            with budget.hold(working_bytes(len(states), d, probe.width), "a thought's states"):
                scores = probe.score_thought(states.float())
            for i in thoughts.rows[q]:
                ready[i] = scores[thoughts.at[i]].item()
    skip = [float("nan")] * len(records)
    prompts = torch.tensor([i for i, r in enumerate(records) if r["kind"] == KIND_PROMPT], dtype=torch.long)
    at = 0
    for x, _ in Rows(h, prompts, None, None, None, chunk_rows, budget, probe.width).chunks():
        for i, s in zip(prompts[at : at + len(x)].tolist(), probe.skip_score(x).tolist()):
            skip[i] = s
        at += len(x)
    return ready, skip
