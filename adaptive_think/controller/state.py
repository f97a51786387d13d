"""Controller buffers shared by the batch (`ControllerSpec`) and per row (`ControllerState`), on the device.

The state machine of docs/design.md: PROMPT -> THINKING -> CLOSING -> ANSWERING -> DONE (ANSWERING may go
back to THINKING when the model opens another think block). What is the same for every row lives in
`ControllerSpec` (markers with their failure links, eos ids, boundary mask, probe weights); what a policy
needs per row lives in `RowParams` (adaptive_think/controller/params.py); what changes each step lives in
`ControllerState`. Both the torch reference and the Triton kernel of the controller step (`adaptive_think.controller.dispatch`)
read and update exactly these buffers.

`ControllerState` is a struct of arrays: one int32 [NS_INT, B] tensor, one fp32 [NS_FLOAT, B] tensor and the
int64 [B] forced tokens; `state.phase`, `state.step` ... are views of their rows, so copying, cloning or
moving rows is one op per buffer and the kernel takes three pointers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# Phases (int32 codes in `ControllerState.phase`).
PROMPT, THINKING, CLOSING, ANSWERING, DONE = 0, 1, 2, 3, 4
PHASE_NAMES = ("prompt", "thinking", "closing", "answering", "done")

# Why the row's latest think block ended (int32 codes in `ControllerState.ended_by`); 0 = not yet.
ENDED_NONE, ENDED_NATURAL, ENDED_BUDGET, ENDED_PROBE, ENDED_SKIPPED = 0, 1, 2, 3, 4
ENDED_NAMES = ("unfinished", "natural", "budget", "probe", "skipped")

# Policies (int32 codes in the row parameters).
POLICY_FULL, POLICY_NONE, POLICY_BUDGET, POLICY_PROBE = 0, 1, 2, 3
POLICY_CODES = {"full": POLICY_FULL, "none": POLICY_NONE, "budget": POLICY_BUDGET, "probe": POLICY_PROBE}

# "No budget" as an int32 that a counter never reaches.
NO_LIMIT = 2**31 - 1

# Rows of `ControllerState.ints` [NS_INT, B] int32.
S_PHASE = 0  # PROMPT .. DONE
S_THINK_COUNT = 1  # thinking tokens written, all blocks together (markers and eos excluded; stop text included)
S_STREAK = 2  # consecutive steps (boundaries, for a boundary-only row) with smoothed score >= threshold
S_CURSOR = 3  # next index into the row's forced-token buffer while CLOSING
S_OPEN_MATCH = 4  # open-marker tokens matched so far (KMP state)
S_CLOSE_MATCH = 5  # close-marker tokens matched so far (KMP state)
S_ENDED_BY = 6  # ENDED_* code of the latest block
S_DECISION_STEP = 7  # the row's step at which its latest block ended (-1: not yet / the prompt closed it)
S_STEP = 8  # the row's own decode step (0 = its prompt's last position)
S_BLOCKS = 9  # think blocks opened so far (by the prompt, the model, or a forced skip)
S_GUARD = 10  # 1: the out-of-distribution guard flagged the row at its step 0, so it runs its fallback thresholds
S_GROUP = 11  # the calibration group the route put the row in at its step 0; 0 without a route
NS_INT = 12
# Rows of `ControllerState.floats` [NS_FLOAT, B] fp32.
S_EMA = 0  # smoothed ready score
S_SCORE = 1  # this step's raw score (skip head at the row's step 0, ready head after; NaN without a probe)
S_GUARD_SCORE = 2  # the guard's score of the row's prompt-end state (set at step 0; NaN: not scored)
NS_FLOAT = 3

INT_FIELDS = ("phase", "think_count", "streak", "cursor", "open_match", "close_match", "ended_by", "decision_step",
              "step", "blocks", "guard", "group")
FLOAT_FIELDS = ("ema", "score", "guard_score")
# Rows NS_FLOAT.. of `ControllerState.floats` hold a probe's memory (K running maxima, see ProbeTensors); a fresh
# row or a new think block starts them here, below any feature a trained probe produces
NO_MEMORY = -30.0
_INT_INIT = {"phase": PROMPT, "decision_step": -1}  # the rest start at 0


@dataclass
class ProbeTensors:
    """A probe's weights in the layout the step kernels read (see `adaptive_think.probe`).

    Each head is a one-hidden-layer MLP on normalised features: score = sigmoid(w2 . act(W1 x + b1) + b2),
    x = (h - mean) * inv_std. A linear head is H = 1, identity activation, w2 = [1], b2 = [0].
    """

    mean: torch.Tensor  # [D] fp32
    inv_std: torch.Tensor  # [D] fp32
    ready_w1: torch.Tensor  # [H, D] fp32
    ready_b1: torch.Tensor  # [H]
    ready_w2: torch.Tensor  # [H]
    ready_b2: torch.Tensor  # [1]
    skip_w1: torch.Tensor  # [H, D]
    skip_b1: torch.Tensor  # [H]
    skip_w2: torch.Tensor  # [H]
    skip_b2: torch.Tensor  # [1]
    relu: bool  # activation of the hidden layer: ReLU (MLP) or identity (linear)
    # a probe with memory: m = max over the block's thought tokens so far of (memory_w x + memory_b), and the ready
    # head reads [x, m] (ready_w1 is [H, D + K]); None for a memoryless probe
    memory_w: torch.Tensor | None = None  # [K, D]
    memory_b: torch.Tensor | None = None  # [K]
    # counting units: where memory_sum is 1, m = NO_MEMORY + the sum over those tokens of sigmoid(memory_w x +
    # memory_b) instead of a maximum (how many passes, checks, ... the thought has made); None: every unit a maximum
    memory_sum: torch.Tensor | None = None  # [K] of 0.0 / 1.0
    # an out-of-distribution guard (probe/guard.py) on the same features x: y = x - guard_mean, p = guard_dirs y,
    # score = sum_j guard_coef[j] p_j^2 + guard_coef[R] |y|^2 (a low-rank Mahalanobis distance); None: no guard
    guard_mean: torch.Tensor | None = None  # [D]
    guard_dirs: torch.Tensor | None = None  # [R, D] orthonormal rows
    guard_coef: torch.Tensor | None = None  # [R + 1]
    # a route on the same features x: a probe row's calibration group = argmax(route_w x + route_b), read at its
    # step 0 (each group has its own thresholds, RowParams' group table); None: no route, one group
    route_w: torch.Tensor | None = None  # [G, D]
    route_b: torch.Tensor | None = None  # [G]

    def to(self, device) -> "ProbeTensors":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return ProbeTensors(**{k: (v.to(device=device, dtype=torch.float32).contiguous() if torch.is_tensor(v) else v) for k, v in kw.items()})

    @property
    def hidden_size(self) -> int:
        return self.mean.shape[0]

    @property
    def memory_size(self) -> int:
        """K, the running maxima (and counts) a row keeps (0: no memory)."""
        return 0 if self.memory_w is None else int(self.memory_w.shape[0])

    @property
    def memory_counts(self) -> int:
        """How many of the K memory units count instead of keeping a maximum."""
        return 0 if self.memory_sum is None else int((self.memory_sum > 0.5).sum())

    @property
    def guard_rank(self) -> int | None:
        """R, the guard's principal directions (None: no guard; 0: a guard of the residual term alone)."""
        return None if self.guard_dirs is None else int(self.guard_dirs.shape[0])

    @property
    def groups(self) -> int:
        """G, the route's calibration groups (1: no route)."""
        return 1 if self.route_w is None else int(self.route_w.shape[0])


# Training-free ready scores read from the step's logits (a score file's head kind, see probe/probe.py).
SCORE_KINDS = ("close-margin", "entropy")


@dataclass(frozen=True)
class LogitScore:
    """A ready score computed from the step's logits [B, V] instead of a probe head (controller/logit_score.py).

    kind: "close-margin" (p(close) / p(top), through the close marker's first token) or "entropy"
    (exp(-entropy)); both lie in [0, 1], 1 = the model is sure (of closing / of its next token).
    close_id: the close marker's first token; skip: the same score at a row's step 0 is its skip score
    (False: a NaN skip score, which never skips).
    """

    kind: str
    close_id: int
    skip: bool = False

    def __post_init__(self):
        if self.kind not in SCORE_KINDS:
            raise ValueError(f"LogitScore.kind must be one of {SCORE_KINDS}, got {self.kind!r}.")


def failure_links(marker) -> list[int]:
    """KMP failure links of a token sequence: fail[k] = length of the longest proper prefix of marker[:k+1]
    that is also its suffix. A matcher that has matched k tokens and sees a mismatch falls back to fail[k-1]."""
    marker = list(marker)
    fail = [0] * len(marker)
    k = 0
    for i in range(1, len(marker)):
        while k > 0 and marker[i] != marker[k]:
            k = fail[k - 1]
        if marker[i] == marker[k]:
            k += 1
        fail[i] = k
    return fail


@dataclass
class ControllerSpec:
    """What every row of a batch shares. Tensors live on the controller's device.

    A marker matcher holds k = tokens of the marker matched so far; on token t it falls back along the
    failure links while marker[k] != t, then advances if marker[k] == t (KMP), so markers whose prefix
    repeats inside them (`x x y` after `x x x y`) are never missed.
    """

    open_ids: torch.Tensor  # [Lo] int64: the open marker's token ids
    open_fail: torch.Tensor  # [Lo] int32: its KMP failure links
    close_ids: torch.Tensor  # [Lc] int64: the close marker's token ids
    close_fail: torch.Tensor  # [Lc] int32
    eos_ids: torch.Tensor  # [Ne] int64 (Ne >= 1; -1 pads when the model has no eos)
    is_boundary: torch.Tensor  # [V] bool: token ends a sentence or paragraph
    probe: ProbeTensors | None = None
    score: LogitScore | None = None  # a training-free score read from the logits (then probe is None)

    @classmethod
    def build(cls, open_ids, close_ids, eos_ids=(), is_boundary: torch.Tensor | None = None,
              probe: ProbeTensors | None = None, vocab_size: int | None = None, device="cpu",
              score: LogitScore | None = None) -> "ControllerSpec":
        """The spec of markers (token id sequences), eos ids, a [V] boundary mask (zeros when None) and a probe
        (trained heads) or a logit score (training-free), not both."""
        if probe is not None and score is not None:
            raise ValueError("ControllerSpec: give a probe (trained heads) or a logit score, not both.")
        if not open_ids or not close_ids:
            raise ValueError("ControllerSpec needs non-empty open and close markers (token id sequences).")
        if is_boundary is None:
            if vocab_size is None:
                raise ValueError("ControllerSpec.build needs is_boundary or vocab_size.")
            is_boundary = torch.zeros(vocab_size, dtype=torch.bool)
        long = dict(dtype=torch.long, device=device)
        i32 = dict(dtype=torch.int32, device=device)
        return cls(
            open_ids=torch.tensor(tuple(open_ids), **long), open_fail=torch.tensor(failure_links(open_ids), **i32),
            close_ids=torch.tensor(tuple(close_ids), **long), close_fail=torch.tensor(failure_links(close_ids), **i32),
            eos_ids=torch.tensor(tuple(eos_ids) or (-1,), **long),
            is_boundary=is_boundary.to(device=device, dtype=torch.bool).contiguous(),
            probe=probe.to(device) if probe is not None else None, score=score,
        )


class PackedBuffers:
    """Three device buffers (ints, floats, and one more) that are cloned, copied and moved together.

    Subclasses set `__init__(ints, floats, third)`; engines reuse the buffers' static addresses via `tensors()`.
    """

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three buffers (for engines that mark or copy static addresses)."""
        raise NotImplementedError

    @property
    def batch_size(self) -> int:
        return self.tensors()[0].shape[1]

    def clone(self):
        return type(self)(*(t.clone() for t in self.tensors()))

    def copy_(self, other) -> None:
        for mine, theirs in zip(self.tensors(), other.tensors()):
            mine.copy_(theirs)

    def to(self, device):
        return type(self)(*(t.to(device) for t in self.tensors()))


class ControllerState(PackedBuffers):
    """Per-row mutable state: ints [NS_INT, B] int32, floats [NS_FLOAT + K, B] fp32, forced [B] int64.

    Named fields (`phase`, `think_count`, ..., `step`, `blocks`, `ema`, `score`) are [B] views of those rows;
    `memory` is the [K, B] view of a probe's running maxima (K = 0 without one); `forced` is the token to force
    this step per row, -1 for none.
    """

    def __init__(self, ints: torch.Tensor, floats: torch.Tensor, forced: torch.Tensor):
        self.ints, self.floats, self.forced = ints, floats, forced

    @classmethod
    def allocate(cls, batch_size: int, device, memory_size: int = 0) -> "ControllerState":
        """Fresh state: every row in PROMPT at step 0 (`ThinkController.init_rows` sets rows from prompts), with
        `memory_size` running maxima per row for a probe with memory."""
        ints = torch.zeros(NS_INT, batch_size, dtype=torch.int32, device=device)
        for name, value in _INT_INIT.items():
            ints[INT_FIELDS.index(name)].fill_(value)
        floats = torch.zeros(NS_FLOAT + memory_size, batch_size, dtype=torch.float32, device=device)
        floats[S_GUARD_SCORE].fill_(float("nan"))
        floats[NS_FLOAT:].fill_(NO_MEMORY)
        return cls(ints, floats, torch.full((batch_size,), -1, dtype=torch.int64, device=device))

    @property
    def memory(self) -> torch.Tensor:
        """[K, B] view: each row's running maxima of its probe's memory features (K = 0 without memory)."""
        return self.floats[NS_FLOAT:]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.ints, self.floats, self.forced


def _int_view(i):
    return property(lambda self: self.ints[i], doc=f"[B] int32 view of ints[{i}] ({INT_FIELDS[i]})")


def _float_view(i):
    return property(lambda self: self.floats[i], doc=f"[B] fp32 view of floats[{i}] ({FLOAT_FIELDS[i]})")


for _i, _name in enumerate(INT_FIELDS):
    setattr(ControllerState, _name, _int_view(_i))
for _i, _name in enumerate(FLOAT_FIELDS):
    setattr(ControllerState, _name, _float_view(_i))
