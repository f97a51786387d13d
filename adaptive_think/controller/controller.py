"""`ThinkController`: the per-row thinking state machine of one generate() call.

An engine calls `begin(prompt_ids)` once, then `step(last_token, hidden)` once per decode step; the
step returns the token to force per row (-1 for none). All per-step work is one call of the
`probe_step` entry point (Triton kernel on CUDA, torch reference on CPU), so there is exactly one
place where a policy turns a step's signals into a decision, and no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from adaptive_think.config import ThinkConfig
from adaptive_think.controller.state import (
    ANSWERING,
    ENDED_NAMES,
    ENDED_NONE,
    ENDED_SKIPPED,
    NO_LIMIT,
    POLICY_CODES,
    PROMPT,
    THINKING,
    ControllerSpec,
    ControllerState,
    ProbeTensors,
)
from adaptive_think.kernels.probe_step import probe_step
from adaptive_think.kernels.probe_step.naive import probe_step_reference
from adaptive_think.markers import ThinkMarkers

# A prompt whose close marker sits within this many tokens of its end has its thinking already done
# (e.g. Qwen3's enable_thinking=False template ends with "<think>\n\n</think>\n\n").
CLOSED_TAIL_TOKENS = 8


@dataclass
class ThinkReport:
    """What the controller did to one row of the batch."""

    think_tokens: int  # thinking tokens written (markers excluded)
    ended_by: str  # "natural" | "budget" | "probe" | "skipped" | "unfinished"
    decision_step: int  # generated-token index at which thinking ended (-1: never ended / prompt did)
    scores: list[float] | None = field(default=None, repr=False)  # per-step score when ThinkConfig.trace

    def to_dict(self) -> dict:
        return {"think_tokens": self.think_tokens, "ended_by": self.ended_by, "decision_step": self.decision_step}


def boundary_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """[V] bool: tokens whose text ends a sentence or paragraph (where a stop does not cut a word)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for token, idx in tokenizer.get_vocab().items():
        if idx >= vocab_size:
            continue
        text = tokenizer.convert_tokens_to_string([token])
        if text.rstrip(" ").endswith((".", "!", "?", "\n", "。")):
            mask[idx] = True
    return mask


def _marker_ends(ids: torch.Tensor, marker: tuple[int, ...]) -> torch.Tensor:
    """[B] 1 + the last position where `marker` ends in each row of ids [B, S] (0 when absent)."""
    n = len(marker)
    bsz, seq = ids.shape
    if seq < n:
        return torch.zeros(bsz, dtype=torch.long, device=ids.device)
    windows = ids.unfold(1, n, 1)  # [B, S - n + 1, n]
    hit = (windows == torch.tensor(marker, device=ids.device)).all(-1)  # [B, S - n + 1]
    pos = torch.arange(n, seq + 1, device=ids.device)  # end (exclusive) of each window
    return (hit.long() * pos).amax(-1)


class ThinkController:
    """Builds the fixed spec for a call and runs the per-step decision for every row."""

    def __init__(
        self,
        markers: ThinkMarkers,
        config: ThinkConfig,
        *,
        exit_ids: tuple[int, ...] = (),
        empty_ids: tuple[int, ...] = (),
        eos_ids: tuple[int, ...] = (),
        is_boundary: torch.Tensor | None = None,
        probe: ProbeTensors | None = None,
        threshold: float = 0.5,
        skip_threshold: float = 2.0,
        vocab_size: int,
        device,
        impl: str = "auto",
    ):
        if config.policy == "probe" and probe is None:
            raise ValueError('ThinkConfig(policy="probe") needs a probe; pass probe=... to AdaptiveThinker.')
        self.markers = markers
        self.config = config
        self.device = torch.device(device)
        self.impl = impl
        if is_boundary is None:
            is_boundary = torch.zeros(vocab_size, dtype=torch.bool)
        long = dict(dtype=torch.long, device=self.device)
        self.spec = ControllerSpec(
            policy=POLICY_CODES[config.policy],
            open_ids=torch.tensor(markers.open_ids, **long),
            close_ids=torch.tensor(markers.close_ids, **long),
            # a skip writes the template's empty block (open, e.g. "\n\n", close); a stop starts at close
            force_seq=torch.tensor(markers.open_ids + tuple(empty_ids) + markers.close_ids + tuple(exit_ids), **long),
            eos_ids=torch.tensor(tuple(eos_ids) or (-1,), **long),
            is_boundary=is_boundary.to(self.device),
            min_think=config.min_think_tokens,
            max_think=NO_LIMIT if config.max_think_tokens is None else config.max_think_tokens,
            threshold=float(threshold),
            skip_threshold=float(skip_threshold) if config.allow_skip else 2.0,
            alpha=float(config.smoothing),
            patience=config.patience,
            boundary_only=config.stop_at_boundary,
            probe=probe.to(self.device) if probe is not None else None,
            close_at=len(markers.open_ids) + len(empty_ids),
        )
        self.state: ControllerState | None = None
        self._trace: list[torch.Tensor] = []
        self._closed_by_prompt: torch.Tensor | None = None

    @property
    def needs_hidden(self) -> bool:
        return self.spec.policy == POLICY_CODES["probe"]

    def begin(self, prompt_ids: torch.Tensor) -> ControllerState:
        """Allocate state for prompt_ids [B, S] and set each row's starting phase from its prompt."""
        bsz = prompt_ids.shape[0]
        self.state = ControllerState.allocate(bsz, self.device)
        ids = prompt_ids.to(self.device)
        last_open = _marker_ends(ids, self.markers.open_ids)
        last_close = _marker_ends(ids, self.markers.close_ids)
        inside = last_open > last_close  # prompt ends inside an open block (R1 / QwQ templates)
        closed = (last_close > last_open) & (last_close >= ids.shape[1] - CLOSED_TAIL_TOKENS)
        phase = torch.full((bsz,), PROMPT, dtype=torch.int32, device=self.device)
        phase = torch.where(inside, torch.full_like(phase, THINKING), phase)
        phase = torch.where(closed, torch.full_like(phase, ANSWERING), phase)
        self.state.phase.copy_(phase)
        self.state.ended_by.copy_(torch.where(closed, torch.full_like(phase, ENDED_SKIPPED), self.state.ended_by))
        self._closed_by_prompt = closed
        self._trace = []
        return self.state

    def step(self, last_token: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """One decode step for all rows: [B] token to force (-1 for none). No host sync."""
        if self.state is None:
            raise RuntimeError("ThinkController.step called before begin(prompt_ids).")
        probe_step(hidden if self.needs_hidden else None, last_token, self.state, self.spec, impl=self.impl)
        if self.config.trace:
            self._trace.append(self.state.score.clone())
        return self.state.forced

    def finish(self, last_token: torch.Tensor) -> None:
        """Observe the final generated token (no step after it decides anything), before `reports()`."""
        if self.state is None:
            return
        # an observe-only step: with no policy and no cap the reference makes no decision
        observe_only = replace(self.spec, policy=POLICY_CODES["full"], max_think=NO_LIMIT, probe=None)
        forced = self.state.forced.clone()
        probe_step_reference(None, last_token.to(self.device), self.state, observe_only)
        self.state.forced.copy_(forced)

    def reports(self) -> list[ThinkReport]:
        """One report per row (reads the device state once, after generation)."""
        if self.state is None:
            return []
        s = self.state
        phase, count, ended, dstep = (t.tolist() for t in (s.phase, s.think_count, s.ended_by, s.decision_step))
        closed_by_prompt = self._closed_by_prompt.tolist()
        trace = torch.stack(self._trace, 1).tolist() if self._trace else None
        out = []
        for i in range(len(phase)):
            if ended[i] != ENDED_NONE:
                why = ENDED_NAMES[ended[i]]
            elif phase[i] == PROMPT:
                why = "natural"  # the model never opened a thought
            else:
                why = "unfinished"
            step = -1 if closed_by_prompt[i] else dstep[i]
            out.append(ThinkReport(count[i], why, step, trace[i] if trace is not None else None))
        return out
