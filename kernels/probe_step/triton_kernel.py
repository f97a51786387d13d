"""Triton kernel of probe_step: the whole per-step controller decision for every row in one launch.

Semantics: `naive.probe_step_reference` (the ground truth; tests/kernels/test_probe_step.py compares the two).
Run on CPU through Triton's interpreter with `TRITON_INTERPRET=1` set before triton is imported.

Design (one launch, CUDA-graph safe: every argument is a pointer to a persistent buffer or a per-call constant):

- grid = (H tiles of 16, D chunks x B tiles, 2 heads). Program (t, c, b, head) computes
  z_c = W1[t-tile, c-chunk] . ((h - mean) * inv_std)[b-tile, c-chunk] with `tl.dot` (tf32x3 on GPU: tensor
  cores at fp32-level accuracy). Splitting D (chunks of 512 on GPU) is what gives enough programs, each with
  little to read (32 KB of W1 at D=4096), for batch 1; one program per H tile would walk all of D serially.
- ReLU needs the whole z, so chunks park z_c in a workspace and take a ticket of their (head, t, b) tile
  (atomic counter); the tile's last ticket sums the chunks in a fixed order (deterministic), applies b1,
  ReLU and w2, and writes the tile's share of the logit.
- every program then takes a ticket of the launch; the last one sums the shares in a fixed order, applies
  b2 and the sigmoid, runs the state machine for all rows, writes the forced token and increments `step`.
  This is the CUDA threadFenceReduction pattern: stores, a CTA barrier, then an acq_rel atomic, so the last
  ticket sees every other program's writes. Every program loads `step` before its ticket, so no program can
  see the increment; the last ones reset their counters to 0 for the next launch (or graph replay).
- skip-head programs do nothing but take their ticket unless the loaded step is 0 (runtime branch).
- without a probe (policy != probe, or no probe / hidden) the grid is (1, 1, 1): one program runs the
  state machine, no tickets.

The workspace belongs to the state (keyed on its `step` tensor), so one state must not be stepped on two
streams at once (a state machine never is).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from adaptive_think.controller.state import (
    close_start,
    ANSWERING,
    CLOSING,
    DONE,
    ENDED_BUDGET,
    ENDED_NATURAL,
    ENDED_PROBE,
    ENDED_SKIPPED,
    POLICY_NONE,
    POLICY_PROBE,
    PROMPT,
    THINKING,
    ControllerSpec,
    ControllerState,
)

_PROMPT = tl.constexpr(PROMPT)
_THINKING = tl.constexpr(THINKING)
_CLOSING = tl.constexpr(CLOSING)
_ANSWERING = tl.constexpr(ANSWERING)
_DONE = tl.constexpr(DONE)
_ENDED_NATURAL = tl.constexpr(ENDED_NATURAL)
_ENDED_BUDGET = tl.constexpr(ENDED_BUDGET)
_ENDED_PROBE = tl.constexpr(ENDED_PROBE)
_ENDED_SKIPPED = tl.constexpr(ENDED_SKIPPED)
_POLICY_NONE = tl.constexpr(POLICY_NONE)
_POLICY_PROBE = tl.constexpr(POLICY_PROBE)


@triton.jit
def _tile_score(z, b1_ptr, w2_ptr, hs, hmask, rows, rmask, spart_ptr, RELU: tl.constexpr):
    """b1, activation and w2 on a finished z tile [BB, BH] -> this tile's share of the head's logit [BB]."""
    z = z + tl.load(b1_ptr + hs, mask=hmask, other=0.0)[None, :]
    if RELU:
        z = tl.where(z < 0.0, 0.0, z)  # keeps NaN, like torch.relu
    w2 = tl.load(w2_ptr + hs, mask=hmask, other=0.0)
    # padded hidden units are dropped explicitly: an inf input makes inf * 0 = NaN there
    part = tl.sum(tl.where(hmask[None, :], z * w2[None, :], 0.0), axis=1)  # [BB]
    tl.store(spart_ptr + rows, part, mask=rmask)


@triton.jit
def _head_tile(
    hidden_ptr, stride_hb, stride_hd, mean_ptr, inv_std_ptr, w1_ptr, b1_ptr, w2_ptr,
    zpart_ptr, gcount_ptr, spart_ptr,
    B, D, H, pid_h, pid_b, pid_d,
    RELU: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    D_CHUNK: tl.constexpr, N_D_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """z = W1[h tile, d chunk] . x[b tile, d chunk]; the last chunk's program of the tile finishes the score."""
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    rmask = rows < B
    js = tl.arange(0, BLOCK_H)
    hs = pid_h * BLOCK_H + js  # [BH]
    hmask = hs < H
    acc = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
    for d0 in range(0, D_CHUNK, BLOCK_D):
        ds = pid_d * D_CHUNK + d0 + tl.arange(0, BLOCK_D)  # [BD]
        dmask = ds < D
        h = tl.load(hidden_ptr + rows[:, None] * stride_hb + ds[None, :] * stride_hd,
                    mask=rmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)  # [BB, BD]
        mu = tl.load(mean_ptr + ds, mask=dmask, other=0.0)
        isd = tl.load(inv_std_ptr + ds, mask=dmask, other=0.0)
        x = (h - mu[None, :]) * isd[None, :]  # same op order as the reference
        w = tl.load(w1_ptr + hs[:, None] * D + ds[None, :], mask=hmask[:, None] & dmask[None, :], other=0.0)  # [BH, BD]
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)  # [BB, BH]
    if N_D_SPLITS == 1:
        _tile_score(acc, b1_ptr, w2_ptr, hs, hmask, rows, rmask, spart_ptr, RELU)
    else:
        # ReLU needs the whole z: park this chunk's share, and the tile's last program to finish sums them
        offs = rows[:, None] * BLOCK_H + js[None, :]  # [BB, BH] in a [B, BH] slab
        tl.store(zpart_ptr + pid_d * B * BLOCK_H + offs, acc, mask=rmask[:, None])
        tl.debug_barrier()
        ticket = tl.atomic_add(gcount_ptr, 1, sem="acq_rel")
        if ticket == N_D_SPLITS - 1:
            z = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
            for c in range(0, N_D_SPLITS):  # fixed order: deterministic
                z += tl.load(zpart_ptr + c * B * BLOCK_H + offs, mask=rmask[:, None], other=0.0, cache_modifier=".cg")
            _tile_score(z, b1_ptr, w2_ptr, hs, hmask, rows, rmask, spart_ptr, RELU)
            tl.atomic_xchg(gcount_ptr, 0)  # ready for the next launch


@triton.jit
def _head_logit(part_ptr, b2_ptr, rows, rmask, B, N_H_TILES):
    logit = tl.zeros_like(rows.to(tl.float32))
    for t in range(0, N_H_TILES):
        # .cg reads through L2: the partials were written by other SMs in this launch
        logit += tl.load(part_ptr + t * B + rows, mask=rmask, other=0.0, cache_modifier=".cg")
    return tl.sigmoid(logit + tl.load(b2_ptr))


@triton.jit
def _match(match, tok, marker_ptr, L, rmask):
    expected = tl.load(marker_ptr + tl.minimum(match, L - 1), mask=rmask, other=-1)
    first = tl.load(marker_ptr)
    return tl.where(tok == expected, match + 1, (tok == first).to(tl.int32))


@triton.jit
def _finalise(
    tok_ptr, stride_tok, part_ptr, rb2_ptr, sb2_ptr,
    phase_ptr, think_ptr, streak_ptr, cursor_ptr, om_ptr, cm_ptr, ended_ptr, dstep_ptr,
    ema_ptr, score_ptr, forced_ptr, step_ptr,
    open_ptr, close_ptr, force_ptr, eos_ptr, bnd_ptr,
    step, B, N_H_TILES, N_EOS, V_BND, LO, LC, N_FORCE, CS,
    min_think, max_think, threshold, skip_threshold, alpha, one_minus_alpha, patience,
    POLICY: tl.constexpr, HAS_PROBE: tl.constexpr, BOUNDARY_ONLY: tl.constexpr, BLOCK_R: tl.constexpr,
):
    first = step == 0
    obs = step != 0
    for r0 in range(0, B, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)  # [BR]
        rmask = rows < B
        tok = tl.load(tok_ptr + rows * stride_tok, mask=rmask, other=-1).to(tl.int64)
        phase = tl.load(phase_ptr + rows, mask=rmask, other=0)
        cursor0 = tl.load(cursor_ptr + rows, mask=rmask, other=0)
        om0 = tl.load(om_ptr + rows, mask=rmask, other=0)
        cm0 = tl.load(cm_ptr + rows, mask=rmask, other=0)
        count0 = tl.load(think_ptr + rows, mask=rmask, other=0)
        ended = tl.load(ended_ptr + rows, mask=rmask, other=0)
        dstep = tl.load(dstep_ptr + rows, mask=rmask, other=0)
        ema0 = tl.load(ema_ptr + rows, mask=rmask, other=0.0)
        streak0 = tl.load(streak_ptr + rows, mask=rmask, other=0)

        # 1. observe last step's token (not at step 0)
        is_eos = tok != tok  # all False
        for i in range(0, N_EOS):
            is_eos = is_eos | (tok == tl.load(eos_ptr + i))
        is_eos = is_eos & obs

        closing = obs & (phase == _CLOSING)
        cursor = tl.where(closing, cursor0 + 1, cursor0)
        phase_new = tl.where(closing & (cursor >= N_FORCE), _ANSWERING, phase)

        prompt = obs & (phase == _PROMPT)
        om = tl.where(prompt, _match(om0, tok, open_ptr, LO, rmask), om0)
        opened = prompt & (om >= LO)
        phase_new = tl.where(opened, _THINKING, phase_new)
        om = tl.where(opened, 0, om)

        thinking = obs & (phase == _THINKING)
        count = tl.where(thinking, count0 + 1, count0)
        cm = tl.where(thinking, _match(cm0, tok, close_ptr, LC, rmask), cm0)
        closed = thinking & (cm >= LC)
        count = tl.where(closed, count - LC, count)  # the close marker's tokens are not thinking tokens
        phase_new = tl.where(closed, _ANSWERING, phase_new)
        cm = tl.where(closed, 0, cm)
        ended = tl.where(closed, _ENDED_NATURAL, ended)
        dstep = tl.where(closed, step - 1, dstep)
        phase_new = tl.where(is_eos, _DONE, phase_new)

        # 2. scores (NaN without a probe, like the reference)
        if HAS_PROBE:
            ready = _head_logit(part_ptr, rb2_ptr, rows, rmask, B, N_H_TILES)
            skip = _head_logit(part_ptr + N_H_TILES * B, sb2_ptr, rows, rmask, B, N_H_TILES)
        else:
            ready = tl.full([BLOCK_R], float("nan"), tl.float32)
            skip = ready
        score = tl.where(first, skip, ready)

        # 3. decide
        open_row = (phase_new == _PROMPT) | (phase_new == _THINKING)
        if POLICY == _POLICY_PROBE:
            do_skip = first & open_row & (skip >= skip_threshold)  # NaN compares False: never skips
        elif POLICY == _POLICY_NONE:
            do_skip = first & open_row
        else:
            do_skip = phase_new != phase_new  # all False
        in_thought = (phase_new == _THINKING) & (do_skip == 0)
        valid = ready == ready
        ema = tl.where(in_thought & valid, alpha * ready + one_minus_alpha * ema0, ema0)
        over = in_thought & (count >= min_think) & valid & (ema >= threshold)
        streak = tl.where(over, streak0 + 1, tl.where(in_thought, 0, streak0))

        over_budget = in_thought & (count >= max_think)
        if POLICY == _POLICY_PROBE:
            probe_stop = in_thought & (over_budget == 0) & over & (streak >= patience)
            if BOUNDARY_ONLY:
                bidx = tl.minimum(tl.maximum(tok, 0), V_BND - 1)
                at_boundary = (tl.load(bnd_ptr + bidx, mask=rmask, other=0) != 0) & obs
                probe_stop = probe_stop & at_boundary
        else:
            probe_stop = phase_new != phase_new  # all False
        close_now = over_budget | probe_stop

        phase_new = tl.where(do_skip | close_now, _CLOSING, phase_new)
        # a row skipped from PROMPT must still open the block; one already inside starts at the close marker
        cursor = tl.where(do_skip & (phase == _PROMPT), 0, cursor)
        cursor = tl.where(do_skip & (phase != _PROMPT), CS, cursor)
        # a close marker the model has begun is completed, not restarted
        cursor = tl.where(close_now, CS + cm, cursor)
        count = tl.where(close_now, count - cm, count)
        ended = tl.where(do_skip, _ENDED_SKIPPED, ended)
        ended = tl.where(over_budget, _ENDED_BUDGET, ended)
        ended = tl.where(probe_stop, _ENDED_PROBE, ended)
        dstep = tl.where(do_skip | close_now, step, dstep)
        cm = tl.where(close_now, 0, cm)

        # 4. the token to force
        fidx = tl.minimum(tl.maximum(cursor, 0), N_FORCE - 1)
        forced = tl.where(phase_new == _CLOSING, tl.load(force_ptr + fidx, mask=rmask, other=-1), -1)

        tl.store(phase_ptr + rows, phase_new, mask=rmask)
        tl.store(cursor_ptr + rows, cursor, mask=rmask)
        tl.store(om_ptr + rows, om, mask=rmask)
        tl.store(cm_ptr + rows, cm, mask=rmask)
        tl.store(think_ptr + rows, count, mask=rmask)
        tl.store(ended_ptr + rows, ended, mask=rmask)
        tl.store(dstep_ptr + rows, dstep, mask=rmask)
        tl.store(ema_ptr + rows, ema, mask=rmask)
        tl.store(streak_ptr + rows, streak, mask=rmask)
        tl.store(score_ptr + rows, score, mask=rmask)
        tl.store(forced_ptr + rows, forced.to(tl.int64), mask=rmask)
    tl.store(step_ptr, step + 1)


@triton.jit
def _probe_step_kernel(
    hidden_ptr, stride_hb, stride_hd, tok_ptr, stride_tok,
    mean_ptr, inv_std_ptr, rw1_ptr, rb1_ptr, rw2_ptr, rb2_ptr, sw1_ptr, sb1_ptr, sw2_ptr, sb2_ptr,
    phase_ptr, think_ptr, streak_ptr, cursor_ptr, om_ptr, cm_ptr, ended_ptr, dstep_ptr,
    ema_ptr, score_ptr, forced_ptr, step_ptr,
    open_ptr, close_ptr, force_ptr, eos_ptr, bnd_ptr,
    part_ptr, zpart_ptr, gcount_ptr, count_ptr,
    B, D, H_READY, H_SKIP, N_H_TILES, N_B_TILES, N_EOS, V_BND, LO, LC, N_FORCE, CS,
    min_think, max_think, threshold, skip_threshold, alpha, one_minus_alpha, patience,
    POLICY: tl.constexpr, HAS_PROBE: tl.constexpr, RELU: tl.constexpr, BOUNDARY_ONLY: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
    D_CHUNK: tl.constexpr, N_D_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    step = tl.load(step_ptr)  # every program reads step before its ticket; only the last one writes it
    if HAS_PROBE:
        pid_h = tl.program_id(0)
        pid_b = tl.program_id(1) % N_B_TILES
        pid_d = tl.program_id(1) // N_B_TILES
        head = tl.program_id(2)
        # per (head, h tile): score partials [B] and z chunks [N_D_SPLITS, B, BLOCK_H]; per (head, h tile, b tile): a ticket
        tile = head * N_H_TILES + pid_h
        if head == 0:
            _head_tile(hidden_ptr, stride_hb, stride_hd, mean_ptr, inv_std_ptr, rw1_ptr, rb1_ptr, rw2_ptr,
                       zpart_ptr + tile * N_D_SPLITS * B * BLOCK_H, gcount_ptr + tile * N_B_TILES + pid_b,
                       part_ptr + tile * B, B, D, H_READY, pid_h, pid_b, pid_d,
                       RELU, BLOCK_B, BLOCK_H, BLOCK_D, D_CHUNK, N_D_SPLITS, DOT_PRECISION)
        elif step == 0:  # the skip head is only read at the end of the prompt
            _head_tile(hidden_ptr, stride_hb, stride_hd, mean_ptr, inv_std_ptr, sw1_ptr, sb1_ptr, sw2_ptr,
                       zpart_ptr + tile * N_D_SPLITS * B * BLOCK_H, gcount_ptr + tile * N_B_TILES + pid_b,
                       part_ptr + tile * B, B, D, H_SKIP, pid_h, pid_b, pid_d,
                       RELU, BLOCK_B, BLOCK_H, BLOCK_D, D_CHUNK, N_D_SPLITS, DOT_PRECISION)
        # all threads' partial stores precede the ticket (release); the last ticket acquires them all
        tl.debug_barrier()
        n_programs = tl.num_programs(0) * tl.num_programs(1) * tl.num_programs(2)
        ticket = tl.atomic_add(count_ptr, 1, sem="acq_rel")
        if ticket == n_programs - 1:
            _finalise(tok_ptr, stride_tok, part_ptr, rb2_ptr, sb2_ptr,
                      phase_ptr, think_ptr, streak_ptr, cursor_ptr, om_ptr, cm_ptr, ended_ptr, dstep_ptr,
                      ema_ptr, score_ptr, forced_ptr, step_ptr, open_ptr, close_ptr, force_ptr, eos_ptr, bnd_ptr,
                      step, B, N_H_TILES, N_EOS, V_BND, LO, LC, N_FORCE, CS,
                      min_think, max_think, threshold, skip_threshold, alpha, one_minus_alpha, patience,
                      POLICY, HAS_PROBE, BOUNDARY_ONLY, BLOCK_R)
            tl.atomic_xchg(count_ptr, 0)  # ready for the next launch / graph replay
    else:
        _finalise(tok_ptr, stride_tok, part_ptr, rb2_ptr, sb2_ptr,
                  phase_ptr, think_ptr, streak_ptr, cursor_ptr, om_ptr, cm_ptr, ended_ptr, dstep_ptr,
                  ema_ptr, score_ptr, forced_ptr, step_ptr, open_ptr, close_ptr, force_ptr, eos_ptr, bnd_ptr,
                  step, B, N_H_TILES, N_EOS, V_BND, LO, LC, N_FORCE, CS,
                  min_think, max_think, threshold, skip_threshold, alpha, one_minus_alpha, patience,
                  POLICY, HAS_PROBE, BOUNDARY_ONLY, BLOCK_R)


class Workspace(NamedTuple):
    """Scratch of one state's launches; the tickets start at 0 and every launch leaves them at 0."""

    spart: torch.Tensor  # [2, n_h_tiles, B] fp32: each (head, h tile)'s share of the logit
    zpart: torch.Tensor  # [2, n_h_tiles, n_d_splits, B, BLOCK_H] fp32: z per D chunk (a dummy with one split)
    gcount: torch.Tensor  # [2, n_h_tiles, n_b_tiles] int32: tickets of the D chunks of one tile
    count: torch.Tensor  # [1] int32: tickets of all programs


# keyed on the state's `step` tensor, so the workspace lives exactly as long as the state
# the workspace hangs off the state object itself: a dict keyed by a tensor compares keys with `==`, a host
# sync that is illegal inside CUDA-graph capture (seen on an H200: cudaErrorStreamCaptureUnsupported)
_WORKSPACE_ATTR = "_probe_step_workspace"

_STATE_INT32 = ("phase", "think_count", "streak", "cursor", "open_match", "close_match", "ended_by", "decision_step")
_PROBE_FIELDS = ("mean", "inv_std", "ready_w1", "ready_b1", "ready_w2", "ready_b2", "skip_w1", "skip_b1", "skip_w2", "skip_b2")


def _workspace(state: ControllerState, n_h_tiles: int, n_d_splits: int, n_b_tiles: int, block_h: int) -> Workspace:
    batch, device = state.phase.shape[0], state.step.device
    zshape = (2, n_h_tiles, n_d_splits, batch, block_h) if n_d_splits > 1 else (1,)
    ws = getattr(state, _WORKSPACE_ATTR, None)
    if ws is None or ws.spart.shape != (2, n_h_tiles, batch) or ws.zpart.shape != zshape \
            or ws.gcount.shape != (2, n_h_tiles, n_b_tiles) or ws.count.device != device:
        ws = Workspace(spart=torch.empty(2, n_h_tiles, batch, dtype=torch.float32, device=device),
                       zpart=torch.empty(zshape, dtype=torch.float32, device=device),
                       gcount=torch.zeros(2, n_h_tiles, n_b_tiles, dtype=torch.int32, device=device),
                       count=torch.zeros(1, dtype=torch.int32, device=device))
        setattr(state, _WORKSPACE_ATTR, ws)
    return ws


def _check(hidden, last_token, state: ControllerState, spec: ControllerSpec, use_probe: bool) -> None:
    device = state.phase.device
    batch = state.phase.shape[0]

    def need(ok, msg):
        if not ok:
            raise ValueError(f"probe_step_triton: {msg}")

    for name in _STATE_INT32:
        t = getattr(state, name)
        need(t.dtype == torch.int32 and t.shape == (batch,) and t.device == device and t.is_contiguous(),
             f"state.{name} must be a contiguous int32 [{batch}] tensor on {device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    for name, dtype in (("ema", torch.float32), ("score", torch.float32), ("forced", torch.int64)):
        t = getattr(state, name)
        need(t.dtype == dtype and t.shape == (batch,) and t.device == device and t.is_contiguous(),
             f"state.{name} must be a contiguous {dtype} [{batch}] tensor on {device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    need(state.step.dtype == torch.int32 and state.step.numel() == 1 and state.step.device == device,
         f"state.step must be an int32 [1] tensor on {device}")
    need(last_token.dim() == 1 and last_token.shape[0] == batch and last_token.dtype in (torch.int32, torch.int64)
         and last_token.device == device, f"last_token must be int32/int64 [{batch}] on {device}, got {last_token.dtype} "
         f"{tuple(last_token.shape)} on {last_token.device}")
    for name in ("open_ids", "close_ids", "force_seq", "eos_ids"):
        t = getattr(spec, name)
        need(t.dtype == torch.int64 and t.dim() == 1 and t.numel() >= 1 and t.device == device and t.is_contiguous(),
             f"spec.{name} must be a non-empty contiguous int64 1-D tensor on {device}")
    need(spec.force_seq.numel() >= close_start(spec) + spec.close_ids.numel(),
         "spec.force_seq must hold the open marker, the close marker and the exit text")
    need(spec.is_boundary.dtype == torch.bool and spec.is_boundary.dim() == 1 and spec.is_boundary.numel() >= 1
         and spec.is_boundary.device == device and spec.is_boundary.is_contiguous(), f"spec.is_boundary must be a bool [V] tensor on {device}")
    if not use_probe:
        return
    p = spec.probe
    d = p.mean.shape[0]
    need(hidden.dim() == 2 and hidden.shape == (batch, d), f"hidden must be [{batch}, {d}], got {tuple(hidden.shape)}")
    need(hidden.dtype in (torch.bfloat16, torch.float16, torch.float32), f"hidden must be bf16/fp16/fp32, got {hidden.dtype}")
    need(hidden.device == device, f"hidden is on {hidden.device}, state on {device}")
    for name in _PROBE_FIELDS:
        t = getattr(p, name)
        need(t.dtype == torch.float32 and t.device == device and t.is_contiguous(),
             f"probe.{name} must be a contiguous fp32 tensor on {device} (use ProbeTensors.to(device))")
    for head in ("ready", "skip"):
        w1, b1, w2, b2 = (getattr(p, f"{head}_{k}") for k in ("w1", "b1", "w2", "b2"))
        h = w1.shape[0]
        need(w1.shape == (h, d) and b1.shape == (h,) and w2.shape == (h,) and b2.numel() == 1 and p.inv_std.shape == (d,),
             f"probe {head} head shapes: w1 [H, {d}], b1 [H], w2 [H], b2 [1]; got {tuple(w1.shape)}, {tuple(b1.shape)}, "
             f"{tuple(w2.shape)}, {tuple(b2.shape)}")


def probe_step_triton(hidden: torch.Tensor | None, last_token: torch.Tensor, state: ControllerState,
                      spec: ControllerSpec) -> None:
    """One controller step in place on `state`, in one Triton launch (same contract as probe_step_reference).

    hidden: [B, D] bf16/fp16/fp32, any strides (read only under the probe policy); last_token: [B] int32/int64.
    """
    use_probe = spec.policy == POLICY_PROBE and spec.probe is not None and hidden is not None
    _check(hidden, last_token, state, spec, use_probe)
    batch = state.phase.shape[0]
    interp = state.phase.device.type != "cuda"
    block_r = min(256, triton.next_power_of_2(batch))
    if use_probe:
        p = spec.probe
        d = p.mean.shape[0]
        h_ready, h_skip = p.ready_w1.shape[0], p.skip_w1.shape[0]
        block_b = 16 if batch <= 16 else 32 if batch <= 32 else 64  # tl.dot needs >= 16
        block_h = 16
        if interp:  # small chunks, so the CPU tests cover the split-D path on small shapes
            block_d, d_chunk = 32, 64
        else:  # D chunks of 512: for D = 4096, 8 x (H / 16) programs per head, each reading 32 KB of W1
            block_d = 128 if block_b <= 32 else 64
            d_chunk = 512
        block_d = min(block_d, max(16, triton.next_power_of_2(d)))
        d_chunk = max(block_d, min(d_chunk, triton.cdiv(d, block_d) * block_d))
        n_d_splits = triton.cdiv(d, d_chunk)
        n_h_tiles = triton.cdiv(max(h_ready, h_skip), block_h)
        n_b_tiles = triton.cdiv(batch, block_b)
        grid = (n_h_tiles, n_d_splits * n_b_tiles, 2)
        ws = _workspace(state, n_h_tiles, n_d_splits, n_b_tiles, block_h)
        work = (ws.spart, ws.zpart, ws.gcount, ws.count)
        weights = [getattr(p, f) for f in _PROBE_FIELDS]
        hargs = (hidden, hidden.stride(0), hidden.stride(1))
        relu = bool(p.relu)
    else:
        d = h_ready = h_skip = n_h_tiles = n_b_tiles = n_d_splits = 1
        block_b = block_h = block_d = d_chunk = 16
        grid = (1, 1, 1)
        work = (state.ema, state.ema, state.step, state.step)  # never touched without a probe
        weights = [state.ema] * len(_PROBE_FIELDS)
        hargs = (state.ema, 0, 0)
        relu = False
    s = state
    _probe_step_kernel[grid](
        *hargs, last_token, last_token.stride(0),
        *weights,
        s.phase, s.think_count, s.streak, s.cursor, s.open_match, s.close_match, s.ended_by, s.decision_step,
        s.ema, s.score, s.forced, s.step,
        spec.open_ids, spec.close_ids, spec.force_seq, spec.eos_ids, spec.is_boundary,
        *work,
        batch, d, h_ready, h_skip, n_h_tiles, n_b_tiles, spec.eos_ids.numel(), spec.is_boundary.numel(),
        spec.open_ids.numel(), spec.close_ids.numel(), spec.force_seq.numel(), close_start(spec),
        int(spec.min_think), int(spec.max_think), float(spec.threshold), float(spec.skip_threshold),
        float(spec.alpha), 1.0 - float(spec.alpha), int(spec.patience),
        POLICY=int(spec.policy), HAS_PROBE=use_probe, RELU=relu, BOUNDARY_ONLY=bool(spec.boundary_only),
        BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_D=block_d, BLOCK_R=block_r, D_CHUNK=d_chunk, N_D_SPLITS=n_d_splits,
        # tf32x3 runs on tensor cores at fp32-level accuracy; the interpreter computes in plain fp32
        DOT_PRECISION="ieee" if interp else "tf32x3",
        num_warps=4,
    )
