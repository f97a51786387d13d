"""A toy speculative-decoding engine in Model Runner V2's layout that drives adaptive_think's vLLM processor.

`run_speculative(host, requests, ...)` schedules requests like vLLM 0.32's Model Runner V2 under speculative
decoding: a fixed number of slots recycled as requests finish (and as some are preempted and come back with
their outputs), prompts prefilled in chunks of random size, then every step a request verifies up to
`drafts` draft tokens: its logits rows are the last committed token and each draft (`expanded_local_pos`
0..d), the rows of a step in a random request order, applied in consecutive chunks of requests
(`_verify_in_chunks`), then greedy rejection: draft j+1 is accepted while it equals the argmax of row j,
the first mismatch emits that argmax (all accepted: the bonus token of the last row), and `total_len`
grows by the tokens emitted. A request's first step after its prefill sometimes carries placeholder drafts
(-1), which are always rejected.

The "model" is scripted as in tests/slot_driver.py: its next token after g outputs is `script[g]`, and its
hidden state is a function of (rid, pos) (`hidden_at` by default), so a request's tokens do not depend
on the batch, on speculation, or on the drafts. Drafts come from `drafter(request, history, k, rng)`: a
scripted one (a random number of right tokens, then a wrong one) or an n-gram lookup in the request's
history.

A host adapts the processor: `admit(slot, request, outputs)`, `apply(logits, ctx_fields)` for one chunk,
`publish(query_start_loc, input_ids, positions, hidden)` once per step (the wrapper's tap), `commit(slot,
tokens)` after verification and `report(slot, committed)` when a request finishes.
"""

from __future__ import annotations

import random

import torch

from tests.slot_driver import Request, admit_waiting, hidden_at

PLACEHOLDER = -1


def scripted_drafter(pattern: str = "mixed"):
    """Drafts with a prefix the scripted target agrees with: pattern "mixed" (random length), "all" (every draft
    right, unless a forced token intervenes) or "none" (the first draft is wrong)."""

    def draft(req: Request, history: list[int], k: int, rng: random.Random) -> list[int]:
        n = k if pattern != "mixed" else rng.randint(0, k)
        right = n if pattern == "all" else 0 if pattern == "none" else rng.randint(0, n)
        g = len(req.outputs)
        out = [req.script[min(g + i, len(req.script) - 1)] for i in range(right)]
        while len(out) < n:  # a token the target does not predict there
            want = req.script[min(g + len(out), len(req.script) - 1)]
            out.append((want + 1 + rng.randrange(5)) % 64)
        return out

    return draft


def ngram_drafter(n: int = 2):
    """vLLM's n-gram idea: find the latest earlier occurrence of the last n tokens, propose what followed."""

    def draft(req: Request, history: list[int], k: int, rng: random.Random) -> list[int]:
        tail = history[-n:]
        for start in range(len(history) - n - 1, -1, -1):
            if history[start:start + n] == tail:
                return history[start + n:start + n + k]
        return []

    return draft


def run_speculative(host, requests: list[Request], *, slots: int, drafts: int, vocab: int, dim: int, eos_id: int,
                    max_new: int, max_chunk: int, preempt: float, seed: int, drafter, placeholder: float = 0.2,
                    preemptable=lambda req: True, hidden=hidden_at
                    ) -> tuple[dict[int, list[int]], dict[int, object], set[int]]:
    """Every request's output tokens, its report (host.report at its end) and the draft positions at which a
    token was forced; hidden(rid, pos, dim): the scripted model's hidden state."""
    rng = random.Random(seed)
    waiting = list(requests)
    running: dict[int, dict] = {}  # slot -> {"req", "fed" (tokens prefilled), "fill" (tokens to prefill)}
    free = list(range(slots))
    done: dict[int, list[int]] = {}
    reports: dict[int, object] = {}
    forced_at: set[int] = set()
    while waiting or running:
        admit_waiting(host, waiting, free, running, rng)
        order = list(running)
        rng.shuffle(order)
        plan = []  # per request: (slot, query tokens, query positions, number of logits rows, drafts, final)
        for slot in order:
            run, req = running[slot], running[slot]["req"]
            seq = run["fill"]
            if run["fed"] < len(seq):  # a prefill chunk: one logits row (its last token), placeholders at its end
                begin = run["fed"]
                run["fed"] = min(len(seq), begin + rng.randint(1, max_chunk))
                tokens, positions = seq[begin:run["fed"]], list(range(begin, run["fed"]))
                final = run["fed"] == len(seq)
                pads = rng.randint(1, drafts) if final and drafts and rng.random() < placeholder else 0
                tokens, positions = tokens + [PLACEHOLDER] * pads, positions + [run["fed"] + i for i in range(pads)]
                plan.append((slot, tokens, positions, 1 + pads, [PLACEHOLDER] * pads, final))
            else:  # decode: the last committed token, then the drafts
                history = req.prompt + req.outputs
                props = drafter(req, history, drafts, rng)[:drafts] if drafts else []
                last = len(history) - 1
                plan.append((slot, [history[-1]] + props, list(range(last, last + 1 + len(props))), 1 + len(props),
                             props, True))
        # the forward: flat query tokens; the wrapper's tap keeps each request's last (drafts + 1)
        qsl = [0]
        for _, tokens, _, _, _, _ in plan:
            qsl.append(qsl[-1] + len(tokens))
        flat_tokens = torch.tensor([t for p in plan for t in p[1]])
        flat_pos = torch.tensor([q for p in plan for q in p[2]])
        flat_hidden = torch.stack([hidden(running[p[0]]["req"].rid, q, dim) for p in plan for q in p[2]])
        host.publish(torch.tensor(qsl), flat_tokens, flat_pos, flat_hidden)
        # logits rows: the last rows of each query, in batch order
        rows_slot, rows_local, rows_token, rows_pos, targets = [], [], [], [], []
        for slot, tokens, positions, n, _, _ in plan:
            req = running[slot]["req"]
            for j in range(n):
                rows_slot.append(slot)
                rows_local.append(j)
                rows_token.append(tokens[len(tokens) - n + j])
                rows_pos.append(positions[len(tokens) - n + j])
                targets.append(req.script[min(len(req.outputs) + j, len(req.script) - 1)])
        logits = torch.zeros(len(rows_slot), vocab)
        logits[torch.arange(len(targets)), torch.tensor(targets)] = 1.0
        cu = [0]
        for p in plan:
            cu.append(cu[-1] + p[3])
        start = 0
        while start < len(plan):  # consecutive chunks of requests, never splitting one
            end = min(len(plan), start + rng.randint(1, max(1, len(plan))))
            lo, hi = cu[start], cu[end]
            chunk = logits[lo:hi].clone()
            chunk = host.apply(chunk, dict(
                expanded_idx_mapping=torch.tensor(rows_slot[lo:hi]),
                idx_mapping=torch.tensor([p[0] for p in plan[start:end]]),
                expanded_local_pos=torch.tensor(rows_local[lo:hi]), input_ids=torch.tensor(rows_token[lo:hi]),
                pos=torch.tensor(rows_pos[lo:hi])))
            logits[lo:hi] = chunk
            start = end
        forced_rows = torch.isinf(logits).sum(1) == vocab - 1  # [N]: a row the processor forced
        forced_at.update(rows_local[i] for i in torch.nonzero(forced_rows).flatten().tolist())
        sampled = logits.argmax(-1).tolist()
        for b, (slot, _, _, n, props, final) in enumerate(plan):
            if not final:
                continue  # a partial chunk's sample is discarded
            run, req = running[slot], running[slot]["req"]
            emitted = []
            for j in range(n):  # greedy rejection
                target = sampled[cu[b] + j]
                if j < len(props) and props[j] == target:
                    emitted.append(target)
                    continue
                emitted.append(target)
                break
            host.commit(slot, emitted)
            finished = False
            for t in emitted:
                req.outputs.append(t)
                if t == eos_id or len(req.outputs) >= max_new:
                    finished = True
                    break
            if finished:
                done[req.rid] = list(req.outputs)
                reports[req.rid] = host.report(slot, len(req.prompt) + len(req.outputs))
                del running[slot]
                free.append(slot)
            elif preemptable(req) and rng.random() < preempt:
                del running[slot]  # preempted: back to the queue with its outputs, re-prefilled later
                free.append(slot)
                waiting.insert(rng.randint(0, len(waiting)), req)
    return done, reports, forced_at
