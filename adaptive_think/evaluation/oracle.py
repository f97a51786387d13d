"""The oracle: the least thinking any stop policy could do without losing a question full thinking gets right.

For one question, force an exit (close marker + exit text, then a greedy answer) at every step boundary
of its full thought, the same checkpoints `collect` labels, and answer once with thinking skipped. The
oracle's point is the earliest checkpoint after which every forced exit is right (the natural close
included); skipping (point 0) counts only if the no-think answer is right too. A question full thinking
gets wrong keeps its whole thought (no point is "right and stays right"), so the oracle's accuracy is
full thinking's. Its mean point is the physical limit of any stop policy. Under sampling the thoughts are
the sampled full thoughts; the forced-exit answers are still decoded greedily.

The forced exits of one thought share its prefix: each row's prompt + thought is prefilled once and every
checkpoint's answer decodes as a branch on that cache (training/branches.py, as `collect` labels), so the cost
grows linearly with the thought, not quadratically; models the shared route cannot serve re-prefill each exit.

    points = oracle_points(evaluator, full_rows)          # one int per question
    oracle_point(True, False, [(5, False), (9, True), (14, True)], 20)  -> 9
"""

from __future__ import annotations

import torch

from adaptive_think.training.branches import prefix_answers
from adaptive_think.training.collect import continuations
from adaptive_think.training.thoughts import no_think_prompt, thought_span


def oracle_point(full_correct: bool, nothink_correct: bool, checkpoints: list[tuple[int, bool]], thought_len: int) -> int:
    """Thinking tokens of the oracle for one question.

    checkpoints: (thinking tokens written, forced exit right?) at the step boundaries of the full thought.
    """
    if not full_correct:
        return thought_len
    point = thought_len
    for pos, ok in sorted(((p, o) for p, o in checkpoints if p < thought_len), reverse=True):
        if not ok:
            return point
        point = pos
    return 0 if nothink_correct else point


def _text(ev, ids: list[int]) -> str:
    """An answer's text up to its first eos."""
    return ev.tok.decode(ids[: next((i for i, t in enumerate(ids) if t in ev.eos), len(ids))], skip_special_tokens=False)


@torch.no_grad()
def _answers(ev, sequences: list[list[int]], max_answer_tokens: int) -> list[str]:
    """Greedy short answers after each token sequence (left-padded batches), decoded up to eos."""
    return [_text(ev, o) for o in continuations(ev.model, ev.tok, sequences, max_answer_tokens, ev.batch_size * 4)]


def checkpoint_answers(ev, rows: list[dict], max_answer_tokens: int = 16):
    """(owners, answers, spans): the greedy answer tokens (up to and including eos) after a forced exit at every step
    boundary of each closed thought, owners[i] = (question, thinking tokens before the exit), spans[q] = (start,
    close) of the thought in `gen`, or None. On the shared prefix where branches.py can serve the model."""
    m = ev.markers
    exit_ids = list(m.close_ids) + list(ev.exit_ids)
    prefixes, cuts, owners = [], [], []  # each row's prefix once, (prefix, index of its last token) per exit
    spans = []  # (start, end) of each closed thought, else None
    for qi, row in enumerate(rows):
        start, close = thought_span(row["prompt"], row["gen"], m)
        spans.append((start, close) if start is not None and close >= 0 else None)
        if spans[-1] is None:
            continue
        end = close
        for j in range(start, end - 1):  # a cut after the last thought token is the natural close itself
            tok = row["gen"][j]
            if tok < ev.boundary.numel() and bool(ev.boundary[tok]):
                if not prefixes or prefixes[-1][0] != qi:
                    prefixes.append((qi, row["prompt"] + row["gen"][: end - 1]))
                cuts.append((len(prefixes) - 1, len(row["prompt"]) + j))
                owners.append((qi, j + 1 - start))
    seqs = [p for _, p in prefixes]
    answers = prefix_answers(ev.model, seqs, cuts, exit_ids, max_answer_tokens, ev.eos, ev.tok.pad_token_id,
                             rows_per_prefill=ev.batch_size) if cuts else []
    if answers is None:  # re-prefill every exit (a model the shared cache cannot serve)
        answers = continuations(ev.model, ev.tok, [seqs[p][: i + 1] + exit_ids for p, i in cuts], max_answer_tokens,
                                ev.batch_size * 4)
    return owners, answers, spans


def oracle_points(ev, rows: list[dict], max_answer_tokens: int = 16) -> list[int]:
    """The oracle's thinking tokens for each of `ev.items`, from the full-thinking rows of `ev.run`.

    Each row holds `prompt` and `gen` (token ids) and `correct`.
    """
    m = ev.markers
    prefix_text = m.close_text + ev.tok.decode(ev.exit_ids, skip_special_tokens=False)
    owners, answers, spans = checkpoint_answers(ev, rows, max_answer_tokens)
    labels = [ev.checker(prefix_text + _text(ev, a), ev.items[q].answer) for a, (q, _) in zip(answers, owners)]
    no_think = [ev.tok.encode(no_think_prompt(ev.tok, it.question, m, ev.exit_text), add_special_tokens=False)
                for it in ev.items]
    nothink_ok = [ev.checker(m.close_text + a, it.answer)
                  for a, it in zip(_answers(ev, no_think, max_answer_tokens), ev.items)]
    cps: list[list[tuple[int, bool]]] = [[] for _ in rows]
    for (q, pos), ok in zip(owners, labels):
        cps[q].append((pos, bool(ok)))
    points = []
    for qi, row in enumerate(rows):
        if spans[qi] is None:  # no closed thought: nothing to cut, the oracle thinks what full thinking did
            points.append(row["think"])
            continue
        start, end = spans[qi]
        points.append(oracle_point(row["correct"], bool(nothink_ok[qi]), cps[qi], end - start))
    return points
