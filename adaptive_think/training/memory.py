"""A ready head with memory: it reads the current state and a running maximum of K features of every earlier
state of the thought, `sigmoid(MLP([x_t, max_{s<=t}(G x_s + g)]))`, and optionally C counting units, running sums
`sum_{s<=t} sigmoid(C x_s + c)` (`--memory-counts`).

A maximum remembers that something happened (a slip several lines back) but cannot count: on a thought made
of several checking passes it cannot tell the end of the third pass (always settled) from the first. A counting
unit that learns to fire once per pass can. The head reads a count divided by COUNT_SCALE; the exported weights
fold that scale, and the NO_MEMORY a count starts from, into the ready head's first layer, so the controller
keeps NO_MEMORY + count and reads it as it reads a maximum.

A memoryless head sees only the token just written; on the bundled reasoner, at the first stated answer that
state does not say whether a step several lines back slipped, while the state of the slipping line does, and a
maximum keeps it. The head is fitted end to end on the same forced-exit labels as the memoryless one, over
every thought token's state (`collect --token-states`). The controller keeps the K maxima per row
(`ControllerState.memory`) and updates them on every thought token (adaptive_think/controller/step.py).

A collection made with `--token-stride S` keeps the states that have read S, 2S, 3S, ... thought tokens; its
checkpoint rows hold every checkpoint's state. A thought's sequence is then those states and its checkpoints'
ones, in thought order, and the maximum at a checkpoint runs over them: the current state, every earlier
checkpoint's and every S-th token's, a subset of the every-token maximum the controller keeps, so the maxima the
head sees in training are at most (never above) the ones it reads at inference. With S = 1 the sequence is every
thought token and the two agree exactly.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from adaptive_think.controller.state import NO_MEMORY
from adaptive_think.controller.step import thought_memory
from adaptive_think.training.health import KIND_THOUGHT
from adaptive_think.training.shards import THOUGHT_PREFIX


COUNTS_NEED_EVERY_TOKEN = ("Counting memory units (--memory-counts) count over every thought token, but this collection "
                           "keeps every S-th token's state (--token-stride S > 1): collect with --token-stride 1.")
COUNT_SCALE = 8.0  # a count the head reads is divided by this: passes and checks number a few to a dozen


class MemoryHead(nn.Module):
    """Ready logit from the current state, a running maximum of K features and a running count of C more."""

    def __init__(self, d: int, k: int, width: int, counts: int = 0):
        super().__init__()
        self.d, self.k = d, k
        self.features = nn.Linear(d, k + counts)
        self.memory_sum = torch.tensor([0.0] * k + [1.0] * counts) if counts else None
        self.fc1 = nn.Linear(d + k + counts, width)
        self.fc2 = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [Q, T, D] normalised states of Q thoughts (padded on the right, mask [Q, T]) -> logits [Q, T]."""
        memory = thought_memory(self.features(x), self.memory_sum, mask)
        if self.memory_sum is not None:  # a count is read as count / COUNT_SCALE
            memory = torch.where(self.memory_sum > 0.5, (memory - NO_MEMORY) / COUNT_SCALE, memory)
        return self.fc2(torch.relu(self.fc1(torch.cat([x, memory], -1)))).squeeze(-1)

    def export(self, width: int) -> dict[str, torch.Tensor]:
        """The probe weights: memory_{w,b}[, memory_sum] and ready_{w1,b1,w2,b2} (ready_w1 [width, D + K + C],
        padded rows), the count's scale and start folded into ready_w1 and ready_b1."""
        with torch.no_grad():
            w1, b1 = self.fc1.weight.clone(), self.fc1.bias.clone()
            out = {"memory_w": self.features.weight.clone(), "memory_b": self.features.bias.clone()}
            if self.memory_sum is not None:
                cols = self.d + self.memory_sum.nonzero().squeeze(-1)  # the count units' columns
                w1[:, cols] /= COUNT_SCALE  # W (m - NO_MEMORY) / S = (W / S) m - (W / S) NO_MEMORY
                b1 -= w1[:, cols].sum(-1) * NO_MEMORY
                out["memory_sum"] = self.memory_sum.clone()
            pad = width - w1.shape[0]
            return {
                **out,
                "ready_w1": torch.cat([w1, torch.zeros(pad, w1.shape[1])]),
                "ready_b1": torch.cat([b1, torch.zeros(pad)]),
                "ready_w2": torch.cat([self.fc2.weight[0], torch.zeros(pad)]),
                "ready_b2": self.fc2.bias.reshape(1).clone(),
            }


def thought_key(r: dict) -> tuple[str, str]:
    """One question per draw and decoding (the same question id may be collected greedy and sampled)."""
    return r.get("decoding", "greedy"), r["qid"]


def _read(rows):
    """Rows as a tensor: a stored view (training/stored.py) is read from its shards, a tensor passes through."""
    return rows if isinstance(rows, torch.Tensor) else rows.read()


class ThoughtSet:
    """Per question: its thought-token states (one layer) and the rows of its labelled checkpoints.

    states: question key -> [n, D], in thought order; positions: question key -> the thought tokens each of those
    states has read (None, or a question missing: 1, 2, ..., n, every token). A question whose last state has not
    read the whole thought (a thought cut by max_new_tokens lacks its last token's state) is left out.
    `at[i]`: the row of checkpoint record i's state in its question's sequence.
    """

    def __init__(self, states: dict, records: list[dict], positions: dict | None = None):
        length = {thought_key(r): r["thought_len"] for r in records if r["kind"] == 0}
        positions = {q: (positions or {}).get(q) or list(range(1, len(s) + 1)) for q, s in states.items()}
        self.states = {q: s for q, s in states.items() if 0 < len(s) and positions[q][-1] == length.get(q, -1)}
        # every thought token's state (no --token-stride): what a counting unit needs to count as the controller does
        self.every_token = all(positions[q] == list(range(1, len(s) + 1)) for q, s in self.states.items())
        self.rows = defaultdict(list)
        self.at = {}
        row_of = {q: {p: t for t, p in enumerate(positions[q])} for q in self.states}
        for i, r in enumerate(records):
            if r["kind"] == KIND_THOUGHT and thought_key(r) in self.states:
                self.rows[thought_key(r)].append(i)
                self.at[i] = row_of[thought_key(r)][r["pos"]]

    @classmethod
    def from_collection(cls, hidden: dict[str, torch.Tensor], records: list[dict], layer: int) -> "ThoughtSet":
        """The states a collection made with --token-states holds for `layer`."""
        key = f"{THOUGHT_PREFIX}{layer}"
        prompts = {thought_key(r): r for r in records if r["kind"] == 0}
        lacking = [q for q, r in prompts.items() if "thought_states" not in r]
        if lacking or not any(k.startswith(THOUGHT_PREFIX) for k in hidden):
            raise ValueError(f"A head with memory trains on every thought token's state, but {len(lacking) or 'all'} of "
                             f"{len(prompts)} collected questions have none: collect with --token-states.")
        if key not in hidden:
            kept = sorted(int(k[len(THOUGHT_PREFIX):]) for k in hidden if k.startswith(THOUGHT_PREFIX))
            raise ValueError(f"A head with memory on layer {layer} trains on that layer's thought-token states, but the "
                             f"collection keeps those of layers {kept} only: collect with --token-layers {layer}.")
        states = {q: hidden[key][r["thought_start"] : r["thought_start"] + r["thought_states"]]
                  for q, r in prompts.items()}
        strided = {q: r["thought_stride"] for q, r in prompts.items() if r.get("thought_stride", 1) > 1}
        if not strided:
            return cls(states, records)
        if f"layer{layer}" not in hidden:
            raise ValueError(f"A strided collection (--token-stride) takes its checkpoint states from the checkpoint "
                             f"rows, but the collection holds no layer{layer} rows.")
        checkpoints = defaultdict(list)
        for i, r in enumerate(records):
            if r["kind"] == KIND_THOUGHT and thought_key(r) in strided:
                checkpoints[thought_key(r)].append(i)
        positions = {}
        for q, s in strided.items():  # the kept states (read s, 2s, ... tokens) and every checkpoint's, in order
            kept = _read(states[q])  # [n, D]
            by_pos = {s * (t + 1): x for t, x in enumerate(kept)}
            marks = _read(hidden[f"layer{layer}"][checkpoints[q]]) if checkpoints[q] else kept[:0]  # [c, D]
            for i, x in zip(checkpoints[q], marks):
                by_pos.setdefault(records[i]["pos"], x.to(kept.dtype))
            positions[q] = sorted(by_pos)
            states[q] = torch.stack([by_pos[p] for p in positions[q]]) if by_pos else kept
        return cls(states, records, positions)

    def batch(self, questions, records, mean, std, neg_weight: float = 1.0):
        """(x [Q, T, D], mask [Q, T], labels [Q, T], weights [Q, T]) of `questions`; weight 0 off checkpoints."""
        n = max(len(self.states[q]) for q in questions)
        x = torch.zeros(len(questions), n, mean.shape[0])
        mask = torch.zeros(len(questions), n, dtype=torch.bool)
        y, w = torch.zeros(len(questions), n), torch.zeros(len(questions), n)
        for j, q in enumerate(questions):
            s = self.states[q]
            x[j, : len(s)], mask[j, : len(s)] = (s.float() - mean) / std, True
            for i in self.rows[q]:
                t = self.at[i]  # the row of the state that has read the checkpoint's pos thought tokens
                y[j, t] = float(bool(records[i]["label"]))
                w[j, t] = 1.0 if records[i]["label"] else neg_weight
        return x, mask, y, w


def memory_batches(data: ThoughtSet, questions: list, chunk_rows: int) -> list[list]:
    """`questions` in order, cut into batches of at most `chunk_rows` padded thought tokens (one thought at least):
    the same cut whatever the memory budget, so the summed gradient is too."""
    out, batch, longest = [], [], 0
    for q in questions:
        n = len(data.states[q])
        if batch and (len(batch) + 1) * max(longest, n) > chunk_rows:
            out.append(batch)
            batch, longest = [], 0
        batch.append(q)
        longest = max(longest, n)
    return out + ([batch] if batch else [])


def batch_bytes(n_questions: int, longest: int, d: int, k: int, width: int) -> int:
    """Estimated bytes one batch of thoughts needs while the head trains on it: the fp16 reads, the padded fp32
    features, the memory features and the concatenated input with their gradients, the hidden units."""
    return n_questions * longest * (d * (2 + 4 + 4 * 2) + k * 4 * 3 + width * 4 * 3)


def memory_reserve(data: ThoughtSet, cfg) -> int:
    """The budget the batches of `fit_memory_head` need beside the thought states themselves."""
    d = next((s.shape[1] for s in data.states.values()), 0)
    batches = memory_batches(data, sorted(data.states), cfg.chunk_rows)
    return max((batch_bytes(len(b), max(len(data.states[q]) for q in b), d, cfg.memory + cfg.memory_counts, cfg.width)
                for b in batches),
               default=0)


def fit_memory_head(data: ThoughtSet, records, part: dict, mean, std, k: int, cfg,
                    budget=None) -> tuple[MemoryHead, float]:
    """AdamW on the weighted BCE of every labelled checkpoint (cfg: TrainConfig); keeps the epoch with the best
    validation loss. part: question key -> "train" | "val" | "calib". Full batch (one step an epoch), or with
    cfg.memory_batch N one step per N training thoughts, in an order drawn per epoch from cfg.seed (more steps
    from the same thoughts: a ready head for a strict rung must be sure where it fires). The loss and its gradient
    are summed over batches of thoughts (`memory_batches`), whose states are read one batch at a time within
    `budget` (budget.MemoryBudget; None: no limit). Returns (head, val loss)."""
    from adaptive_think.training.budget import MemoryBudget

    budget = budget or MemoryBudget(None)
    if cfg.memory_counts and not data.every_token:
        raise ValueError(COUNTS_NEED_EVERY_TOKEN)
    groups = {p: sorted(q for q in data.states if part[q] == p) for p in ("train", "val")}
    if not groups["train"] or not groups["val"]:
        raise ValueError("Too few questions with thought-token states to fit a head with memory; collect more.")
    batches = {p: memory_batches(data, groups[p], cfg.chunk_rows) for p in groups}
    # the loss is a weighted mean over every checkpoint of the group: its total weight, from the records alone
    # (one weight per thought position, the last record's there, as `ThoughtSet.batch` places them)
    weight = {q: sum({records[i]["pos"]: 1.0 if records[i]["label"] else cfg.neg_weight for i in data.rows[q]}.values())
              for p in groups for q in groups[p]}
    total = {p: sum(weight[q] for q in groups[p]) for p in groups}
    torch.manual_seed(cfg.seed)
    head = MemoryHead(mean.shape[0], k, cfg.width, cfg.memory_counts)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.memory_lr or cfg.lr, weight_decay=cfg.weight_decay)

    d, kept = mean.shape[0], {}
    # the padded batches in memory across epochs when they fit the budget beside one batch's working set
    size = sum(len(qs) * max(len(data.states[q]) for q in qs) * (d + 3) * 4 for p in batches for qs in batches[p])
    spare = max(batch_bytes(len(qs), max(len(data.states[q]) for q in qs), d, k + cfg.memory_counts, cfg.width)
                for p in batches for qs in batches[p])
    keep = budget.fits(size + spare)

    def loss_over(p: str, backward: bool) -> torch.Tensor:
        out = torch.zeros(())
        for j, qs in enumerate(batches[p]):
            longest = max(len(data.states[q]) for q in qs)
            with budget.hold(batch_bytes(len(qs), longest, d, k + cfg.memory_counts, cfg.width), "a batch of thoughts"):
                b = kept.get((p, j))
                if b is None:
                    b = data.batch(qs, records, mean, std, cfg.neg_weight)
                    if keep:
                        kept[(p, j)] = b
                x, mask, y, w = b
                loss = (F.binary_cross_entropy_with_logits(head(x, mask), y, reduction="none") * w).sum() / total[p]
                if backward:
                    loss.backward()
                out += loss.detach()
        return out

    def step_on(qs: list) -> None:  # one AdamW step on the thoughts qs (a minibatch), their loss a weighted mean
        opt.zero_grad()
        for chunk in memory_batches(data, qs, cfg.chunk_rows):
            longest = max(len(data.states[q]) for q in chunk)
            with budget.hold(batch_bytes(len(chunk), longest, d, k + cfg.memory_counts, cfg.width), "a batch of thoughts"):
                x, mask, y, w = data.batch(chunk, records, mean, std, cfg.neg_weight)
                loss = (F.binary_cross_entropy_with_logits(head(x, mask), y, reduction="none") * w).sum()
                (loss / sum(weight[q] for q in qs)).backward()
        opt.step()

    best, best_state = float("inf"), None
    train = groups["train"]
    with budget.hold(size if keep else 0, "batches of thoughts in memory"):
        for epoch in range(cfg.memory_epochs or cfg.epochs):
            if cfg.memory_batch:
                order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
                for lo in range(0, len(train), cfg.memory_batch):
                    step_on([train[i] for i in order[lo : lo + cfg.memory_batch].tolist()])
            else:
                opt.zero_grad()
                loss_over("train", backward=True)
                opt.step()
            with torch.no_grad():
                v = loss_over("val", backward=False).item()
            if v < best:
                best, best_state = v, {name: t.clone() for name, t in head.state_dict().items()}
        kept.clear()
    head.load_state_dict(best_state)
    return head, best


@torch.no_grad()
def checkpoint_scores(head: MemoryHead, data: ThoughtSet, records, mean, std, chunk: int = 256) -> list[float]:
    """The head's ready probability at every checkpoint record (NaN where its question has no states)."""
    scores = [float("nan")] * len(records)
    questions = sorted(data.states)
    for lo in range(0, len(questions), chunk):
        qs = questions[lo : lo + chunk]
        x, mask, _, _ = data.batch(qs, records, mean, std)
        s = torch.sigmoid(head(x, mask))
        for j, q in enumerate(qs):
            for i in data.rows[q]:
                scores[i] = s[j, data.at[i]].item()
    return scores
