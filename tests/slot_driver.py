"""A toy continuous-batching engine that drives adaptive_think's vLLM slot core, and its reference.

`run_engine(host, requests, ...)` schedules requests like vLLM does: a fixed number of slots reused as
requests finish, prompts prefilled in chunks of random size (partial chunks are sampled and discarded),
the rows of each step in a random order, and running requests preempted at random (they leave their slot
and come back later with their outputs, re-prefilled). The "model" is scripted: its next token for a
request is `script[len(outputs)]`, unless the controller forced one, and its hidden state is a
deterministic function of (request, position). `run_reference` runs the same requests one at a time
through a plain `ThinkController`, so both must produce the same tokens.

A host adapts one interface (the slot core directly, or a vLLM processor adapter) with three calls:
`admit(slot, request, outputs)`, `leave(slot)` and `step(logits, slots, tokens, positions, hidden)`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from adaptive_think import ThinkConfig
from adaptive_think.controller import ThinkController


@dataclass
class Request:
    rid: int
    prompt: list[int]
    config: ThinkConfig | None
    script: list[int]
    outputs: list[int] = field(default_factory=list)


def hidden_at(rid: int, pos: int, dim: int) -> torch.Tensor:
    """[dim] the scripted model's hidden state of request rid at position pos."""
    g = torch.Generator().manual_seed(rid * 100_003 + pos)
    return torch.randn(dim, generator=g)


def make_requests(n: int, configs: list, open_id: int, close_id: int, eos_id: int, words: list[int],
                  seed: int) -> list[Request]:
    """n requests with prompts of 5-40 words and scripts `open, thought, close, answer, eos`."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.choice(words) for _ in range(rng.randint(5, 40))]
        thought = [rng.choice(words) for _ in range(rng.randint(3, 40))]
        answer = [rng.choice(words) for _ in range(rng.randint(2, 8))]
        out.append(Request(i, prompt, configs[i % len(configs)], [open_id] + thought + [close_id] + answer + [eos_id]))
    return out


def admit_waiting(host, waiting: list[Request], free: list[int], running: dict, rng: random.Random) -> None:
    """Admit waiting requests into free slots, each into a random one (so slots are recycled in any order)."""
    while waiting and free:
        slot = free.pop(rng.randrange(len(free)))
        req = waiting.pop(0)
        host.admit(slot, req, list(req.outputs))
        running[slot] = {"req": req, "fed": 0, "fill": req.prompt + req.outputs}


def run_engine(host, requests: list[Request], *, slots: int, vocab: int, dim: int, eos_id: int, max_new: int,
               max_chunk: int, preempt: float, seed: int, preemptable=lambda req: True) -> dict[int, list[int]]:
    """Every request's output tokens; preempt: chance per step that a running request (one `preemptable`
    accepts) is preempted."""
    rng = random.Random(seed)
    waiting = list(requests)
    running: dict[int, dict] = {}  # slot -> {"req", "fed" (tokens prefilled so far), "fill" (tokens to prefill)}
    free = list(range(slots))
    done: dict[int, list[int]] = {}
    while waiting or running:
        admit_waiting(host, waiting, free, running, rng)
        order = list(running)
        rng.shuffle(order)
        rows = []
        for slot in order:
            run = running[slot]
            seq = run["fill"]
            if run["fed"] < len(seq):  # prefill: a chunk of random size
                run["fed"] = min(len(seq), run["fed"] + rng.randint(1, max_chunk))
                pos = run["fed"] - 1
                token = seq[pos]
                final = run["fed"] == len(seq)
            else:  # decode: feed the last output
                pos = len(run["req"].prompt) + len(run["req"].outputs) - 1
                token = run["req"].outputs[-1]
                final = True
            rows.append((slot, token, pos, final))
        logits = torch.zeros(len(rows), vocab)
        for r, (slot, _, _, _) in enumerate(rows):
            req = running[slot]["req"]
            logits[r, req.script[min(len(req.outputs), len(req.script) - 1)]] = 1.0
        hidden = torch.stack([hidden_at(running[s]["req"].rid, p, dim) for s, _, p, _ in rows])
        logits = host.step(logits, torch.tensor([s for s, _, _, _ in rows]), torch.tensor([t for _, t, _, _ in rows]),
                           torch.tensor([p for _, _, p, _ in rows]), hidden)
        sampled = logits.argmax(-1).tolist()
        for r, (slot, _, _, final) in enumerate(rows):
            if not final:
                continue  # a partial chunk's sample is discarded
            req = running[slot]["req"]
            req.outputs.append(sampled[r])
            if sampled[r] == eos_id or len(req.outputs) >= max_new:
                done[req.rid] = list(req.outputs)
                host.leave(slot)
                del running[slot]
                free.append(slot)
            elif preemptable(req) and rng.random() < preempt:
                host.leave(slot)  # preempted: back to the queue with its outputs
                del running[slot]
                free.append(slot)
                waiting.insert(rng.randint(0, len(waiting)), req)
    return done


def run_reference(make_controller, requests: list[Request], *, dim: int, eos_id: int,
                  max_new: int, reports: dict | None = None, hidden=hidden_at) -> dict[int, list[int]]:
    """Each request alone through ThinkController (config None: the script unsteered); `reports`, when
    given, receives each steered request's ThinkReport after its last token; hidden(rid, pos, dim): the
    scripted model's hidden state."""
    out = {}
    for req in requests:
        tokens, last = [], req.prompt[-1]
        ctl: ThinkController | None = None
        if req.config is not None:
            ctl = make_controller(req.config)
            ctl.begin(torch.tensor([req.prompt]))
        for g in range(max_new):
            pos = len(req.prompt) - 1 + g
            forced = ctl.step(torch.tensor([last]), hidden(req.rid, pos, dim)[None]).item() if ctl else -1
            last = forced if forced >= 0 else req.script[min(g, len(req.script) - 1)]
            tokens.append(last)
            if last == eos_id:
                break
        out[req.rid] = tokens
        if reports is not None and ctl is not None:
            reports[req.rid] = ctl.reports()[0]
    return out
