"""The shared core of both vLLM processor adapters: one controller row per vLLM request slot.

A `SlotController` owns a `ThinkController` of `num_slots` rows (the engine's max_num_seqs) and a few
per-slot tensors of its own (prompt length, whether the slot is steered). Requests join with `add`
(their prompt, config and, after a preemption, the output tokens they already have, which are replayed),
leave with `remove`, move with `move`; every decode step is one `step` over the logits rows:

- row r belongs to slot `slots[r]`; `pos[r]` is the position of the token fed there, so the row's own step
  is `pos - (prompt_len - 1)` (0 at the prompt's last token);
- a row advances only when that step equals the state's own step: a chunk that ends before the prompt
  does (chunked prefill) or a re-prefill that ends before the request's last output token (after a
  preemption) is not decided;
- forced rows keep only the forced token finite (the hf engine's rule), so greedy and sampling both take it.

Under speculative decoding (Model Runner V2, `step_drafts`) a request owns one logits row per draft
token, `local_pos` 0..k: row j continues from the state after row j-1 with that row's token and hidden
state, and its result is kept as candidate j of the slot (k+1 candidates per slot). How many drafts were
accepted is never signalled: at the next step the slot's committed length (`total_len`) says which state
has consumed exactly the committed tokens, and that candidate becomes the slot's state. Selecting by the
candidate's own step makes a repeated `apply` of the same step a no-op, and a request seen in one chunk
of a chunked verification is untouched by the others.

No Python loop over rows and no host sync in `step` / `step_drafts` (a loop over the k+1 draft positions
only): rows are gathered, stepped by `controller_step` (in `_step_rows`, its one call) and scattered back with
tensor ops. The adapters (v1.py, mrv2.py) only translate vLLM's batch bookkeeping.
"""

from __future__ import annotations

from typing import Sequence

import torch

from adaptive_think.config import ThinkConfig
from adaptive_think.controller import ThinkController, controller_step
from adaptive_think.controller.logit_score import logit_score
from adaptive_think.controller.state import S_STEP, ControllerState

# A prompt length no position reaches: an unsteered slot's rows are never active.
NEVER = 2**62


class SlotController:
    """Per-slot controller state of one vLLM engine. context: an `EngineContext` (context.py); drafts: the
    most draft tokens a request is verified with per step (num_speculative_tokens; 0 without speculation)."""

    def __init__(self, context, num_slots: int, device, impl: str = "auto", drafts: int = 0):
        self.context = context
        self.device = torch.device(device)
        self.impl = impl
        self.ctl = ThinkController(
            context.markers, ThinkConfig(), encode=context.encode, empty_ids=context.empty_ids,
            eos_ids=context.eos_ids, is_boundary=context.boundary, probe=context.probe,
            vocab_size=context.vocab_size, device=self.device, impl=impl, force_capacity=context.force_capacity)
        self.ctl.allocate(num_slots)
        self.prompt_len = torch.full((num_slots,), NEVER, dtype=torch.int64, device=self.device)
        self.steered = torch.zeros(num_slots, dtype=torch.bool, device=self.device)
        self._arange = torch.arange(num_slots, device=self.device)
        # candidate j of slot s (column s * width + j): the state after the slot's row j of its latest step;
        # step -1 marks a candidate no row wrote (none yet, or the request had fewer rows)
        self.width = int(drafts) + 1
        self.cand = ControllerState.allocate(num_slots * self.width, self.device, self.ctl.memory_size)
        self.cand.step.fill_(-1)
        self._offsets = torch.arange(self.width, device=self.device)
        # host bookkeeping, updated on batch changes only: skip all work while nothing is steered, and hand
        # hidden states over only while a probe row is in the batch
        self.steered_slots: set[int] = set()
        self._probe_slots: set[int] = set()

    @property
    def num_slots(self) -> int:
        return self.prompt_len.shape[0]

    # -- batch bookkeeping (host-driven, once per change) ------------------------------------------------

    def add(self, slots: Sequence[int], prompts: Sequence[Sequence[int]] | torch.Tensor, prompt_lens: Sequence[int],
            configs: Sequence[ThinkConfig | None], outputs: torch.Tensor | None = None,
            output_lens: Sequence[int] = ()) -> None:
        """(Re)start slots from their prompts (K token lists, or [K, S] left-padded) and configs (None or policy
        "full": not steered, nothing to set up). outputs [K, M] / output_lens: tokens each request already
        generated (after a preemption), replayed into its state so its next step continues where it left off."""
        keep = [i for i, c in enumerate(configs) if needs_steering(c)]
        self.remove([s for s, c in zip(slots, configs) if not needs_steering(c)])  # a recycled slot forgets its row
        if not keep:
            return
        slots = [slots[i] for i in keep]
        rows = torch.as_tensor(slots, dtype=torch.long, device=self.device)
        prompts = prompts[keep] if torch.is_tensor(prompts) else [prompts[i] for i in keep]
        self.ctl.init_rows(rows, prompts, [configs[i] for i in keep])
        self.prompt_len.index_copy_(0, rows, torch.tensor([prompt_lens[i] for i in keep], dtype=torch.int64,
                                                          device=self.device))
        self.steered.index_fill_(0, rows, True)
        self._forget_candidates(rows)
        self.steered_slots.update(slots)
        for slot, i in zip(slots, keep):
            (self._probe_slots.add if configs[i].policy == "probe" else self._probe_slots.discard)(slot)
        lens = [output_lens[i] for i in keep] if output_lens else []
        if outputs is not None and max(lens, default=0) > 0:
            index = torch.as_tensor(keep, dtype=torch.long, device=outputs.device)
            self._replay(rows, outputs.index_select(0, index), torch.as_tensor(lens, dtype=torch.long, device=self.device))

    def _replay(self, rows: torch.Tensor, outputs: torch.Tensor, lens: torch.Tensor) -> None:
        """Re-run steps 0 .. len-1 of each row with its own earlier outputs as the observed tokens (no hidden
        state: a probe row keeps its counts and phase; its smoothed score restarts)."""
        outputs = outputs.to(self.device)
        for j in range(int(outputs.shape[1])):  # one step per replayed token: a one-off per preempted request
            token = outputs[:, j - 1] if j > 0 else torch.zeros_like(lens)
            self._advance(rows, token, None, active=(j < lens) & self.steered[rows])

    def is_probe(self, slot: int) -> bool:
        """Whether the request in `slot` uses policy "probe" (host bookkeeping)."""
        return int(slot) in self._probe_slots

    def snapshot(self, slot: int) -> tuple[torch.Tensor, ...]:
        """A copy of one slot's controller row (state, params, prompt length), to `restore` it elsewhere later."""
        st, pa = self.ctl.state, self.ctl.params
        return (st.ints[:, slot].clone(), st.floats[:, slot].clone(), st.forced[slot].clone(), pa.ints[:, slot].clone(),
                pa.floats[:, slot].clone(), pa.force[slot].clone(), self.prompt_len[slot].clone())

    def restore(self, slot: int, snap: tuple[torch.Tensor, ...], probe: bool) -> None:
        """Put a `snapshot` back into `slot` (a request that left the batch and came back)."""
        st, pa = self.ctl.state, self.ctl.params
        for buf, value in zip((st.ints[:, slot], st.floats[:, slot], st.forced[slot], pa.ints[:, slot],
                               pa.floats[:, slot], pa.force[slot], self.prompt_len[slot]), snap):
            buf.copy_(value)
        self.steered[slot] = True
        self.steered_slots.add(int(slot))
        (self._probe_slots.add if probe else self._probe_slots.discard)(int(slot))

    def remove(self, slots: Sequence[int]) -> None:
        """Free slots: their rows are no longer steered."""
        if not slots:
            return
        rows = torch.as_tensor(list(slots), dtype=torch.long, device=self.device)
        self.steered.index_fill_(0, rows, False)
        self.prompt_len.index_fill_(0, rows, NEVER)
        self._forget_candidates(rows)
        self._probe_slots.difference_update(int(s) for s in slots)
        self.steered_slots.difference_update(int(s) for s in slots)

    def _forget_candidates(self, rows: torch.Tensor) -> None:
        """Slots [K] start over: none of their candidates may be selected."""
        cols = (rows[:, None] * self.width + self._offsets).reshape(-1)  # [K * width]
        self.cand.step.index_fill_(0, cols, -1)

    def move(self, src: Sequence[int], dst: Sequence[int]) -> None:
        """Slot dst[i] takes slot src[i]'s request (moves, swaps and cycles: every source is read first).
        V1 runner only (no speculation there): candidates do not move."""
        if not src:
            return
        self.ctl.move_rows(src, dst)
        s = torch.as_tensor(list(src), dtype=torch.long, device=self.device)
        d = torch.as_tensor(list(dst), dtype=torch.long, device=self.device)
        for buf in (self.prompt_len, self.steered):
            buf.index_copy_(0, d, buf.index_select(0, s))
        for table in (self.steered_slots, self._probe_slots):
            had = {int(a) for a in src if int(a) in table}
            table.difference_update(int(b) for b in dst)
            table.update(int(b) for a, b in zip(src, dst) if int(a) in had)

    # -- one decode step (device only) --------------------------------------------------------------------

    def _advance(self, slots: torch.Tensor, token: torch.Tensor, hidden: torch.Tensor | None,
                 active: torch.Tensor, score: torch.Tensor | None = None) -> torch.Tensor:
        """Step the rows of `slots` [N] whose `active` [N] is set, in place; returns [N] forced token (-1: none).
        score: [N] training-free ready scores of the rows' logits (a score file), else None."""
        st = self.ctl.state
        return self._step_rows(st, slots, st, slots, slots, token, hidden, active, score=score)

    def _step_rows(self, src: ControllerState, src_cols: torch.Tensor, dst: ControllerState, dst_cols: torch.Tensor,
                   slots: torch.Tensor, token: torch.Tensor, hidden: torch.Tensor | None, active: torch.Tensor,
                   written: torch.Tensor | None = None, score: torch.Tensor | None = None) -> torch.Tensor:
        """Step the states src[src_cols] [N] with the params of `slots` [N] and write them to dst[dst_cols]
        (distinct columns); rows whose `active` [N] is unset are copied unchanged, rows whose `written` [N]
        is unset are marked step -1 (no candidate). Returns [N] forced token (-1: none).

        The rows are gathered into contiguous buffers (the Triton kernel's layout), stepped, and scattered."""
        pa = self.ctl.params
        sub = ControllerState(src.ints.index_select(1, src_cols), src.floats.index_select(1, src_cols),
                              src.forced.index_select(0, src_cols))
        params = type(pa)(pa.ints.index_select(1, slots), pa.floats.index_select(1, slots),
                          pa.force.index_select(0, slots))
        before_ints, before_floats = sub.ints.clone(), sub.floats.clone()
        # the one call of the step function (placeholder tokens -1 are clamped; such rows are never active)
        controller_step(hidden, token.to(torch.int64).clamp(min=0).contiguous(), sub, params, self.ctl.spec,
                        impl=self.impl, score=score)
        ints = torch.where(active[None, :], sub.ints, before_ints)
        if written is not None:
            ints[S_STEP] = torch.where(written, ints[S_STEP], -1)
        dst.ints.index_copy_(1, dst_cols, ints)
        dst.floats.index_copy_(1, dst_cols, torch.where(active[None, :], sub.floats, before_floats))
        forced = sub.forced.masked_fill(~active, -1)
        dst.forced.index_copy_(0, dst_cols, forced)
        return forced

    def step(self, logits: torch.Tensor, slots: torch.Tensor | None, token: torch.Tensor, pos: torch.Tensor,
             hidden: torch.Tensor | None) -> torch.Tensor:
        """Decide every row of logits [N, V] and force tokens in place; returns logits.

        slots [N] int64: row -> slot (None: row r is slot r, V1's persistent batch); token [N]: the token fed
        at the row's position pos [N]; hidden [N, D]: probe-layer residual stream there (None when no probe
        is served).
        """
        if slots is None:
            slots = self._arange[:logits.shape[0]]
        prompt_len, steered = self.prompt_len.index_select(0, slots), self.steered.index_select(0, slots)
        step = self.ctl.state.step.index_select(0, slots)
        active = steered & (pos.to(torch.int64) - (prompt_len - 1) == step)  # [N]: the row's own step is due
        use_hidden = hidden if (self._probe_slots and self.ctl.needs_hidden) else None
        # a score file reads the logits vLLM hands the processor: the one place they enter the controller
        score = logit_score(logits, self.ctl.spec.score, self.impl) if self.ctl.needs_logits else None  # [N]
        forced = self._advance(slots, token, use_hidden, active, score)
        force_tokens(logits, forced)
        return logits


    # -- one verification step under speculative decoding (Model Runner V2; device only) -----------------

    def select(self, slots: torch.Tensor, committed: torch.Tensor) -> None:
        """For each slot of `slots` [R] (distinct) with `committed` [R] tokens (prompt and outputs, vLLM's
        total_len): the candidate that consumed every committed token but the last (the one fed next)
        becomes the slot's state; a slot without such a candidate keeps its state (the same step seen
        again, a prefill chunk, a slot just added)."""
        st, cand = self.ctl.state, self.cand
        need = committed.to(torch.int64) - self.prompt_len.index_select(0, slots)  # [R]: the step that state is at
        cols = slots[:, None] * self.width + self._offsets  # [R, W]
        match = cand.step[cols].to(torch.int64) == need[:, None]  # [R, W]
        found = match.any(1)  # [R]
        pick = slots * self.width + match.to(torch.int32).argmax(1)  # [R]: the first match
        for mine, theirs, dim in ((st.ints, cand.ints, 1), (st.floats, cand.floats, 1)):
            mine.index_copy_(dim, slots, torch.where(found[None, :], theirs.index_select(dim, pick),
                                                     mine.index_select(dim, slots)))

    def step_drafts(self, logits: torch.Tensor, slots: torch.Tensor, token: torch.Tensor, pos: torch.Tensor,
                    hidden: torch.Tensor | None, local_pos: torch.Tensor, requests: torch.Tensor,
                    committed: torch.Tensor) -> torch.Tensor:
        """Decide every row of logits [N, V] (one per draft position of each request) and force tokens in
        place; returns logits.

        slots [N]: row -> slot; token / pos [N]: the token fed at the row's position (the last committed
        token at local_pos 0, draft j at local_pos j; -1 for a placeholder draft, never stepped); hidden
        [N, D] probe-layer state there (or None); local_pos [N]: the row's offset within its request (rows of
        a request are contiguous, 0..n-1); requests [R]: the slot of each request in row order (vLLM's
        idx_mapping: its length is known on the host); committed [max slots]: every slot's total_len.
        """
        n, r = logits.shape[0], requests.shape[0]
        _, first, count = request_layout(local_pos, r)  # [R], [R]
        self.select(requests, committed.index_select(0, requests))
        if hidden is not None and not (self._probe_slots and self.ctl.needs_hidden):
            hidden = None
        st, cand = self.ctl.state, self.cand
        prompt_len, steered = self.prompt_len.index_select(0, requests), self.steered.index_select(0, requests)
        forced_rows = torch.full((n + 1,), -1, dtype=torch.int64, device=logits.device)  # [N + 1]: N is a sink
        src, src_cols = st, requests
        # training-free ready scores of every row's logits, read before any row is forced
        row_scores = logit_score(logits, self.ctl.spec.score, self.impl) if self.ctl.needs_logits else None  # [N]
        for j in range(self.width):  # draft positions in order: row j continues from row j - 1's state
            has_row = j < count  # [R]
            row = (first + j).clamp(max=n - 1)  # [R]: the request's row j (meaningless where not has_row)
            tok, p = token.index_select(0, row), pos.index_select(0, row).to(torch.int64)
            step_now = src.step.index_select(0, src_cols).to(torch.int64)
            active = has_row & steered & (tok >= 0) & (p - (prompt_len - 1) == step_now)
            h = hidden.index_select(0, row) if hidden is not None else None
            dst_cols = requests * self.width + j
            sc = row_scores.index_select(0, row) if row_scores is not None else None
            forced = self._step_rows(src, src_cols, cand, dst_cols, requests, tok, h, active, written=has_row, score=sc)
            forced_rows.index_copy_(0, torch.where(has_row, row, n), forced)
            src, src_cols = cand, dst_cols
        force_tokens(logits, forced_rows[:n])
        return logits


def request_layout(local_pos: torch.Tensor, num_requests: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows grouped by request, each request's rows contiguous with local_pos 0..n-1 (vLLM's expanded
    layout): ([N] request index of each row, [R] its first row, [R] its number of rows); no host sync."""
    starts = (local_pos == 0).to(torch.int64)  # [N]
    owner = torch.cumsum(starts, 0) - 1  # [N]
    count = torch.zeros(num_requests, dtype=torch.int64, device=local_pos.device)
    count.index_add_(0, owner.clamp(0, max(num_requests - 1, 0)), torch.ones_like(owner))
    first = torch.cumsum(count, 0) - count  # [R]
    return owner, first, count


def needs_steering(config: ThinkConfig | None) -> bool:
    """Whether a request's row is stepped: policy "full" never forces a token and vLLM returns no reports,
    so such a row (like one without settings) needs no step at all."""
    return config is not None and config.policy != "full"


def compose_moves(moves: Sequence[tuple[int, int, bool]]) -> tuple[list[int], list[int], list[int]]:
    """Ordered moves `(a, b, swap)` (swap: a <-> b; else b takes a's request and a is left empty, vLLM's
    V1 batch semantics) as one permutation: (src, dst, slots left empty)."""
    empty = -1
    content: dict[int, int] = {}  # slot -> the slot whose request it holds now
    for a, b, swap in moves:
        ca, cb = content.get(a, a), content.get(b, b)
        if swap:
            content[a], content[b] = cb, ca
        else:
            content[b], content[a] = ca, empty
    moved = [(c, d) for d, c in content.items() if c not in (d, empty)]
    return [c for c, _ in moved], [d for _, d in moved], [d for d, c in content.items() if c == empty]


def force_tokens(logits: torch.Tensor, forced: torch.Tensor) -> None:
    """In place: rows with forced[r] >= 0 keep only that token finite (logit 0), other rows are untouched."""
    idx = forced.clamp(min=0)[:, None]  # [N, 1]
    keep = logits.gather(1, idx)  # [N, 1]: the old value, written back on rows that are not forced
    rows = (forced >= 0)[:, None]  # [N, 1]
    logits.masked_fill_(rows, float("-inf"))
    logits.scatter_(1, idx, torch.where(rows, torch.zeros_like(keep), keep))
