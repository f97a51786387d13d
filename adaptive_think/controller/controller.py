"""`ThinkController`: the per-row thinking state machine of a batch whose rows may each have their own policy.

    ctl = ThinkController(markers, [ThinkConfig(), ThinkConfig(policy="budget", max_think_tokens=64)],
                          encode=encode, eos_ids=(eos,), probe=probe, vocab_size=V, device="cuda")
    ctl.begin(prompt_ids)                      # [B, S]: every row from its prompt and config
    forced = ctl.step(last_token, hidden)      # [B] per decode step: token to force, -1 for none
    forced = ctl.step(last_token, logits=lg)   # with a score file (training-free): the step's logits [B, V]
    ctl.finish(last_token); ctl.reports()      # one ThinkReport per row (the only host sync)

Rows that come and go (vLLM-style slots): `allocate(B)` makes B idle rows, `init_rows(rows, prompts,
configs)` (re)starts chosen rows without touching the others, `move_rows(src, dst)` moves rows; all on
the device. All per-step work is one call of `controller_step` (Triton kernel on CUDA, torch reference on CPU).

Buffers (device): `spec` (shared by the batch: markers, eos ids, boundary mask, probe weights), `params`
(`RowParams`: per-row policy, limits, thresholds, forced sequences) and `state` (`ControllerState`).

Reports: `think_tokens` counts every block's thinking tokens (markers and eos excluded, stop text included);
`ended_by` / `decision_step` describe the row's latest think block (`natural` also for a row that never opened
one); `blocks` counts the blocks (> 1: the model opened another block after it started answering, e.g. an
interleaved tool call; each later block is watched and counted, shares the budget, is closed at once when the
budget is spent, and is skipped at once under policy "none").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from adaptive_think.config import ThinkConfig
from adaptive_think.controller.params import (
    MIN_FORCE_CAPACITY,
    P_GUARD_THRESHOLD,
    P_POLICY,
    P_TRACE,
    RowParams,
    needed_capacity,
    resolve_config,
)
from adaptive_think.controller.state import (
    ANSWERING,
    DONE,
    ENDED_NAMES,
    ENDED_NONE,
    ENDED_SKIPPED,
    INT_FIELDS,
    POLICY_PROBE,
    THINKING,
    ControllerSpec,
    ControllerState,
    ProbeTensors,
)
from adaptive_think.controller.dispatch import controller_step
from adaptive_think.controller.logit_score import logit_score
from adaptive_think.controller.step import observe_final_reference
from adaptive_think.markers import ThinkMarkers

# A prompt whose close marker sits within this many tokens of its end has its thinking already done
# (e.g. Qwen3's enable_thinking=False template ends with "<think>\n\n</think>\n\n").
CLOSED_TAIL_TOKENS = 8


@dataclass
class ThinkReport:
    """What the controller did to one row of the batch."""

    think_tokens: int  # thinking tokens written, all blocks (markers and eos excluded, stop text included)
    ended_by: str  # latest block: "natural" | "budget" | "probe" | "skipped" | "unfinished"
    decision_step: int  # generated-token index at which the latest block ended (-1: never ended / prompt did)
    blocks: int = 1  # think blocks opened (by the prompt, the model or a forced skip); > 1: interleaved thinking
    scores: list[float] | None = field(default=None, repr=False)  # per-step score when ThinkConfig.trace
    # the out-of-distribution guard: "off" (the row has none), "pass" (its prompt-end state was in distribution)
    # or "fallback" (it was not: the row ran its ThinkConfig.guard_fallback instead of the probe's decisions)
    guard: str = "off"
    guard_score: float | None = None  # the guard's score of the row's prompt-end state (None: not scored)
    group: int | None = None  # the route's calibration group of the row (None: not a probe row, or no route)

    def to_dict(self) -> dict:
        return {"think_tokens": self.think_tokens, "ended_by": self.ended_by, "decision_step": self.decision_step,
                "blocks": self.blocks, "guard": self.guard, "guard_score": self.guard_score, "group": self.group}


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


def _as_rows(rows, device) -> torch.Tensor:
    return torch.as_tensor(rows, dtype=torch.long).to(device).reshape(-1)


def _as_prompts(prompt_ids, device) -> torch.Tensor:
    """A left-padded [K, S] tensor, or a list of K token lists (left-padded here with -1, which no marker holds)."""
    if torch.is_tensor(prompt_ids):
        if prompt_ids.dim() != 2:
            raise ValueError(f"prompt_ids must be [rows, seq], got shape {tuple(prompt_ids.shape)}.")
        return prompt_ids.to(device)
    rows = [list(p) for p in prompt_ids]
    width = max((len(p) for p in rows), default=0)
    return torch.tensor([[-1] * (width - len(p)) + p for p in rows], dtype=torch.long).reshape(len(rows), width).to(device)


def _probe_tensors(probe) -> ProbeTensors | None:
    """The kernel layout of a `Probe` (its `.tensors()`) or of bare `ProbeTensors`; None for a score file."""
    if probe is None or isinstance(probe, ProbeTensors):
        return probe
    if getattr(probe, "reads_logits", False):
        return None
    return probe.tensors()


class ThinkController:
    """Per-row thinking control of one batch. think: a ThinkConfig (every row) or one per row.

    encode: text -> token ids (no special tokens), for exit and stop texts; empty_ids: tokens between the
    markers of the template's empty block (written by a skip); probe: a `Probe` (weights, calibrated
    thresholds and policy defaults) when any row may use policy "probe" (bare `ProbeTensors` work when the
    probe rows set their thresholds), or a score file (`Probe` of kind "close-margin" / "entropy": the probe rows'
    score comes from the step's logits, passed to `step`); is_boundary: [V] bool mask
    (needed by rows that stop only at a boundary); force_capacity: width of the per-row forced-token
    buffer (default: what the rows need, at least 64); decoding: "greedy" or "sampled", the calibration of
    the probe's thresholds that rows whose config leaves `decoding` None take.
    """

    def __init__(self, markers: ThinkMarkers, think: ThinkConfig | Sequence[ThinkConfig], *,
                 encode: Callable[[str], Sequence[int]] | None = None, empty_ids: tuple[int, ...] = (),
                 eos_ids: tuple[int, ...] = (), is_boundary: torch.Tensor | None = None, probe=None,
                 vocab_size: int, device, impl: str = "auto", force_capacity: int | None = None,
                 decoding: str = "greedy"):
        self.configs = [think] if isinstance(think, ThinkConfig) else list(think)
        if not self.configs:
            raise ValueError("think must be a ThinkConfig or a non-empty list of them (one per row).")
        self.markers = markers
        self.device = torch.device(device)
        self.impl = impl
        self.encode = encode
        self.empty_ids = tuple(empty_ids)
        self.probe = probe
        self.decoding = decoding
        self.has_boundary = is_boundary is not None
        settings = [self._resolve(c) for c in self.configs]
        need = needed_capacity(settings, markers.open_ids, self.empty_ids, markers.close_ids)
        self.force_capacity = force_capacity if force_capacity is not None else max(need, MIN_FORCE_CAPACITY)
        score = probe.logit_score(markers.close_ids[0]) if getattr(probe, "reads_logits", False) else None
        self.spec = ControllerSpec.build(
            markers.open_ids, markers.close_ids, eos_ids, is_boundary=is_boundary,
            probe=_probe_tensors(probe), vocab_size=vocab_size, device=self.device, score=score)
        self.traces = any(s.trace for s in settings)  # keep per-step score snapshots
        self.params: RowParams | None = None
        self.state: ControllerState | None = None
        self._trace: list[torch.Tensor] = []

    # -- rows ---------------------------------------------------------------------------------------

    def _resolve(self, config: ThinkConfig):
        s = resolve_config(config, self.probe, self.encode, self.decoding)
        if s.boundary_only and not self.has_boundary:
            raise ValueError("a row stops only at sentence boundaries (stop_at_boundary) but the ThinkController "
                             "has no is_boundary mask; pass is_boundary=boundary_mask(tokenizer, vocab_size).")
        return s

    def _pack(self, configs: Sequence[ThinkConfig]) -> RowParams:
        settings = [self._resolve(c) for c in configs]
        self.traces = self.traces or any(s.trace for s in settings)
        return RowParams.pack(settings, self.markers.open_ids, self.empty_ids, self.markers.close_ids,
                              self.force_capacity, self.device, groups=self.groups)

    @property
    def groups(self) -> int:
        """G, the probe route's calibration groups (1: no route, or no probe)."""
        return self.spec.probe.groups if self.spec.probe is not None else 1

    @property
    def memory_size(self) -> int:
        """Running maxima each row keeps for the probe's memory (0: none, or no probe)."""
        return self.spec.probe.memory_size if self.spec.probe is not None else 0

    @property
    def needs_hidden(self) -> bool:
        """Whether `step` needs the probe layer's hidden state (the controller has a probe)."""
        return self.spec.probe is not None

    @property
    def needs_logits(self) -> bool:
        """Whether `step` needs the step's logits (the controller has a training-free score file)."""
        return self.spec.score is not None

    def allocate(self, batch_size: int) -> ControllerState:
        """State and params for batch_size idle rows (DONE, policy full); `init_rows` starts rows."""
        self.params = self._pack([ThinkConfig()] * batch_size)
        self.state = ControllerState.allocate(batch_size, self.device, self.memory_size)
        self.state.phase.fill_(DONE)
        self._trace = []
        return self.state

    def begin(self, prompt_ids: torch.Tensor) -> ControllerState:
        """Allocate rows for prompt_ids [B, S] and start each from its prompt and config.

        With one config per prompt and B a multiple of their count (HF's num_return_sequences repeats each
        prompt), config i applies to rows i * B/n ... (i + 1) * B/n - 1.
        """
        bsz = prompt_ids.shape[0]
        n = len(self.configs)
        if n != 1 and bsz % n != 0:
            raise ValueError(f"got {n} ThinkConfigs for a batch of {bsz} rows; give one per row (or one for all).")
        configs = [c for c in self.configs for _ in range(bsz // n)] if n != 1 else self.configs * bsz
        self.allocate(bsz)
        self.init_rows(torch.arange(bsz), prompt_ids, configs)
        return self.state

    def init_rows(self, rows, prompt_ids, configs: ThinkConfig | Sequence[ThinkConfig]) -> None:
        """(Re)start rows [K] from their prompts ([K, S] left-padded, or K token lists) and configs, on the device.

        Other rows are not touched. A row starts THINKING when its prompt ends inside an open think block,
        ANSWERING (reported `skipped`) when the prompt closed the block in its last few tokens, else PROMPT.
        """
        if self.state is None:
            raise RuntimeError("ThinkController.init_rows called before allocate(batch_size) or begin(prompt_ids).")
        rows = _as_rows(rows, self.device)
        ids = _as_prompts(prompt_ids, self.device)
        k = rows.numel()
        configs = [configs] * k if isinstance(configs, ThinkConfig) else list(configs)
        if ids.shape[0] != k or len(configs) != k:
            raise ValueError(f"init_rows: {k} rows need {k} prompts and {k} configs, got {ids.shape[0]} and {len(configs)}.")
        params = self._pack(configs)
        fresh = ControllerState.allocate(k, self.device, self.memory_size)
        last_open = _marker_ends(ids, self.markers.open_ids)
        last_close = _marker_ends(ids, self.markers.close_ids)
        inside = last_open > last_close  # prompt ends inside an open block (R1 / QwQ templates)
        closed = (last_close > last_open) & (last_close >= ids.shape[1] - CLOSED_TAIL_TOKENS)
        fresh.phase.copy_(torch.where(inside, THINKING, torch.where(closed, ANSWERING, fresh.phase)))
        fresh.ended_by.copy_(torch.where(closed, ENDED_SKIPPED, fresh.ended_by))
        fresh.blocks.copy_((inside | closed).int())
        self.state.ints.index_copy_(1, rows, fresh.ints)
        self.state.floats.index_copy_(1, rows, fresh.floats)
        self.state.forced.index_copy_(0, rows, fresh.forced)
        self.params.ints.index_copy_(1, rows, params.ints)
        self.params.floats.index_copy_(1, rows, params.floats)
        self.params.force.index_copy_(0, rows, params.force)

    def move_rows(self, src, dst) -> None:
        """Row dst[i] takes row src[i]'s state, params and score trace (a permutation, a move or a swap).

        src, dst: [K] int64 (tensors or lists); dst must be distinct. Rows not in dst are left as they are.
        """
        src, dst = _as_rows(src, self.device), _as_rows(dst, self.device)
        if src.numel() != dst.numel():
            raise ValueError(f"move_rows: src has {src.numel()} rows, dst {dst.numel()}; give one source per target.")
        # index_select copies first, so overlapping moves (swaps, cycles) read the old rows
        for buf, dim in ((self.state.ints, 1), (self.state.floats, 1), (self.state.forced, 0),
                         (self.params.ints, 1), (self.params.floats, 1), (self.params.force, 0)):
            buf.index_copy_(dim, dst, buf.index_select(dim, src))
        for snap in self._trace:
            snap.index_copy_(0, dst, snap.index_select(0, src))

    # -- steps ----------------------------------------------------------------------------------------

    def step(self, last_token: torch.Tensor, hidden: torch.Tensor | None = None,
             logits: torch.Tensor | None = None) -> torch.Tensor:
        """One decode step for all rows: [B] token to force (-1 for none). No host sync.

        last_token: [B] int (contiguous); hidden: [B, D] probe-layer hidden state (when `needs_hidden`);
        logits: [B, V] this step's next-token logits (when `needs_logits`: the score file's score is read from
        them inside the step; the scores the engine samples from, before any warper).
        """
        if self.state is None:
            raise RuntimeError("ThinkController.step called before begin(prompt_ids).")
        if hidden is not None and hidden.device != self.device:
            hidden = hidden.to(self.device, non_blocking=True)
        score = None
        if self.needs_logits:
            if logits is None:
                raise ValueError("ThinkController.step: this controller's score file reads the step's logits; pass "
                                 "logits=[B, V].")
            score = logit_score(logits.to(self.device, non_blocking=True), self.spec.score, self.impl)  # [B]
        controller_step(hidden if self.needs_hidden else None, last_token, self.state, self.params, self.spec,
                        impl=self.impl, score=score)
        if self.traces:
            self._trace.append(self.state.score.clone())
        return self.state.forced

    def finish(self, last_token: torch.Tensor) -> None:
        """Observe the final generated token [B] (no step after it decides anything), before `reports()`."""
        if self.state is not None:
            observe_final_reference(last_token, self.state, self.spec, self.params)

    def reports(self) -> list[ThinkReport]:
        """One report per row (reads the device state once, after generation)."""
        if self.state is None:
            return []
        ints = self.state.ints.tolist()
        count, ended, dstep, blocks, steps, guard, group = (ints[INT_FIELDS.index(n)] for n in (
            "think_count", "ended_by", "decision_step", "blocks", "step", "guard", "group"))
        routed = [p == POLICY_PROBE and self.groups > 1 for p in self.params.ints[P_POLICY].tolist()]
        traced = self.params.ints[P_TRACE].tolist()
        guarded = torch.isfinite(self.params.floats[P_GUARD_THRESHOLD]).tolist()
        guard_score = self.state.guard_score.tolist()
        trace = torch.stack(self._trace, 1).tolist() if self._trace else None  # [B, T]
        out = []
        for i in range(len(count)):
            if ended[i] != ENDED_NONE:
                why = ENDED_NAMES[ended[i]]
            elif blocks[i] == 0:
                why = "natural"  # the model never opened a thought (it answered directly, or is still before one)
            else:
                why = "unfinished"
            scores = None
            if traced[i]:
                scores = trace[i][len(trace[i]) - steps[i]:] if trace is not None and steps[i] > 0 else []
            verdict = "fallback" if guard[i] else "pass" if guarded[i] else "off"
            g = guard_score[i] if guard_score[i] == guard_score[i] else None  # NaN: not scored
            routed_at = group[i] if routed[i] and steps[i] > 0 else None  # None: not routed (yet)
            out.append(ThinkReport(count[i], why, dstep[i], blocks[i], scores, verdict, g, routed_at))
        return out
