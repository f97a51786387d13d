"""Per-row controller state, kept in device tensors so the decode loop never syncs with the host.

The state machine of DESIGN.md section 4: PROMPT -> THINKING -> CLOSING -> ANSWERING -> DONE.
`ControllerSpec` holds what is fixed for one generate() call (markers, exit sequence, limits, probe
weights); `ControllerState` holds what changes each step. Both the torch reference and the Triton
kernel of `adaptive_think.kernels.probe_step` read and update exactly these buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# Phases (int32 codes in `ControllerState.phase`).
PROMPT, THINKING, CLOSING, ANSWERING, DONE = 0, 1, 2, 3, 4
PHASE_NAMES = ("prompt", "thinking", "closing", "answering", "done")

# Why thinking ended (int32 codes in `ControllerState.ended_by`); 0 = not yet.
ENDED_NONE, ENDED_NATURAL, ENDED_BUDGET, ENDED_PROBE, ENDED_SKIPPED = 0, 1, 2, 3, 4
ENDED_NAMES = ("unfinished", "natural", "budget", "probe", "skipped")

# Policies (int codes passed to the step function).
POLICY_FULL, POLICY_NONE, POLICY_BUDGET, POLICY_PROBE = 0, 1, 2, 3
POLICY_CODES = {"full": POLICY_FULL, "none": POLICY_NONE, "budget": POLICY_BUDGET, "probe": POLICY_PROBE}

# "No budget" as an int32 that a counter never reaches.
NO_LIMIT = 2**31 - 1


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

    def to(self, device) -> "ProbeTensors":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return ProbeTensors(**{k: (v.to(device=device, dtype=torch.float32).contiguous() if torch.is_tensor(v) else v) for k, v in kw.items()})

    @property
    def hidden_size(self) -> int:
        return self.mean.shape[0]


@dataclass
class ControllerSpec:
    """What stays fixed during one generate() call. Tensors live on the model's device."""

    policy: int  # POLICY_* code
    open_ids: torch.Tensor  # [Lo] int64: the open marker's token ids
    close_ids: torch.Tensor  # [Lc] int64: the close marker's token ids
    force_seq: torch.Tensor  # [Lo + Lc + Le] int64: open marker, close marker, exit text
    eos_ids: torch.Tensor  # [Ne] int64 (Ne >= 1; -1 pads when the model has no eos)
    is_boundary: torch.Tensor  # [V] bool: token ends a sentence or paragraph
    min_think: int
    max_think: int  # NO_LIMIT when uncapped
    threshold: float  # ready-score threshold for stopping
    skip_threshold: float  # skip-score threshold for skipping (> 1 disables)
    alpha: float  # EMA weight of the newest score (1 = no smoothing)
    patience: int  # hysteresis: consecutive steps over threshold before stopping
    boundary_only: bool  # stop only right after a boundary token
    probe: ProbeTensors | None = None
    # index in force_seq where the close marker starts; None = right after the open marker. A skip from
    # PROMPT forces force_seq[0:], so text between the markers (Qwen3's "\n\n") goes before close_at.
    close_at: int | None = None


def close_start(spec: ControllerSpec) -> int:
    """Where a row that is already inside the thought starts forcing: the close marker's index in force_seq."""
    return spec.open_ids.numel() if spec.close_at is None else int(spec.close_at)


@dataclass
class ControllerState:
    """Per-row mutable state; every field is a device tensor updated in place each step."""

    phase: torch.Tensor  # [B] int32
    think_count: torch.Tensor  # [B] int32: thinking tokens written (markers excluded)
    streak: torch.Tensor  # [B] int32: consecutive steps with smoothed score >= threshold
    cursor: torch.Tensor  # [B] int32: next index into force_seq while CLOSING
    open_match: torch.Tensor  # [B] int32: open-marker tokens matched so far
    close_match: torch.Tensor  # [B] int32: close-marker tokens matched so far
    ended_by: torch.Tensor  # [B] int32: ENDED_* code
    decision_step: torch.Tensor  # [B] int32: step at which thinking ended (-1: not yet)
    ema: torch.Tensor  # [B] fp32: smoothed ready score
    score: torch.Tensor  # [B] fp32: this step's raw score (ready head; skip head at step 0)
    forced: torch.Tensor  # [B] int64: token to force this step, -1 for none
    step: torch.Tensor  # [1] int32: decode step (0 = the prompt's last position)

    @classmethod
    def allocate(cls, batch_size: int, device) -> "ControllerState":
        def i32(v):
            return torch.full((batch_size,), v, dtype=torch.int32, device=device)

        return cls(
            phase=i32(PROMPT),
            think_count=i32(0),
            streak=i32(0),
            cursor=i32(0),
            open_match=i32(0),
            close_match=i32(0),
            ended_by=i32(ENDED_NONE),
            decision_step=i32(-1),
            ema=torch.zeros(batch_size, dtype=torch.float32, device=device),
            score=torch.zeros(batch_size, dtype=torch.float32, device=device),
            forced=torch.full((batch_size,), -1, dtype=torch.int64, device=device),
            step=torch.zeros(1, dtype=torch.int32, device=device),
        )

    def clone(self) -> "ControllerState":
        return ControllerState(**{f.name: getattr(self, f.name).clone() for f in fields(self)})

    def copy_(self, other: "ControllerState") -> None:
        for f in fields(self):
            getattr(self, f.name).copy_(getattr(other, f.name))
