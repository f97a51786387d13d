"""Triton kernel of probe_step: the whole per-step controller decision for every row in one launch.

Semantics: `naive.probe_step_reference` (the ground truth; tests/kernels/test_probe_step.py compares the two).
Run on CPU through Triton's interpreter with `TRITON_INTERPRET=1` set before triton is imported.

Arguments are pointers to persistent buffers and per-call shapes, so a launch can be captured in a CUDA
graph: the hidden state and last tokens; the probe weights; the packed per-row state (`ControllerState`:
int32 [NS_INT, B], fp32 [NS_FLOAT + K, B] (K: a probe's running maxima), forced int64 [B]); the packed
per-row policy (`RowParams`: int32 [NP_INT, B], fp32 [NP_FLOAT, B], forced sequences int64 [B, F]); the
shared spec (markers with their KMP failure links, eos ids, boundary mask); and a workspace.

Design (one launch; the probe heads and the state machine are fused):

- grid = (H tiles of 16, D chunks x B tiles, 2 heads). Program (t, c, b, head) computes
  z_c = W1[t-tile, c-chunk] . ((h - mean) * inv_std)[b-tile, c-chunk] with `tl.dot` (tf32x3 on GPU: tensor
  cores at fp32-level accuracy). Splitting D (chunks of 512 on GPU) is what gives enough programs, each with
  little to read (32 KB of W1 at D=4096), for batch 1; one program per H tile would walk all of D serially.
- ReLU needs the whole z, so chunks park z_c in a workspace and take a ticket of their (head, t, b) tile
  (atomic counter); the tile's last ticket sums the chunks in a fixed order (deterministic), applies b1,
  ReLU and w2, and writes the tile's share of the logit.
- every program then takes a ticket of the launch; the last one sums the shares in a fixed order, applies
  b2 and the sigmoid, and runs the state machine (`_state_machine`, its one call site) for all rows.
  This is the CUDA threadFenceReduction pattern: stores, a CTA barrier, then an acq_rel atomic, so the last
  ticket sees every other program's writes. Programs read the rows' steps before their ticket, so none can
  see the increment the state machine writes; the last ones reset their counters to 0 for the next launch.
- a skip-head program computes only when a row of its B tile is at its own step 0 (the skip head is read
  there alone); otherwise it just takes its ticket.
- without a probe (or without hidden) the grid is (1, 1, 1): one program runs the state machine, no tickets.

A probe with memory (`ProbeTensors.memory_w`, MEMORY=True): the memory features `memory_w x + memory_b` and the
ready head's x-part `ready_w1[:, :D] x` are both linear in x, so the ready tiles run the same tiled, split-D
product on the stacked [H + K, D] matrix `[ready_w1[:, :D]; memory_w]` (`_ready_tiles`, built once per probe).
They cannot finish the head: its input [x, m] needs the row's new running maxima m, and whether a row reads a
thought token this step (so whether m takes this step's features) is known only after the state machine has
observed the row's last token. So the tiles park the pre-activation (H values of W1_x x and K raw features per
row) in the workspace, and the state machine, once it has observed, resets m where a block opens, takes the
maximum with the features where the row reads a thought token (`_update_memory`), writes m back to
state.floats[NS_FLOAT:], and finishes the ready head on [x, m] in chunks of hidden units
(`_ready_with_memory`). The skip head never reads memory and is unchanged.

Why fused rather than a head launch plus a state-machine launch: inside a captured decode step a second,
dependent kernel node adds its own launch gap to every step (typically 1-3 us between dependent kernels in a
CUDA graph), a large share of the 10 us target, while the fused form costs one atomic per program and a short
serial tail. Not measured against a split form on a GPU yet (no GPU in this round of work).

The workspace belongs to the state (an attribute of the state object), so one state must not be stepped on
two streams at once (a state machine never is).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from adaptive_think.controller import params as P
from adaptive_think.controller import state as S
from adaptive_think.controller.params import RowParams
from adaptive_think.controller.state import ControllerSpec, ControllerState

# phases, reasons and policies
_PROMPT = tl.constexpr(S.PROMPT)
_THINKING = tl.constexpr(S.THINKING)
_CLOSING = tl.constexpr(S.CLOSING)
_ANSWERING = tl.constexpr(S.ANSWERING)
_DONE = tl.constexpr(S.DONE)
_ENDED_NONE = tl.constexpr(S.ENDED_NONE)
_ENDED_NATURAL = tl.constexpr(S.ENDED_NATURAL)
_ENDED_BUDGET = tl.constexpr(S.ENDED_BUDGET)
_ENDED_PROBE = tl.constexpr(S.ENDED_PROBE)
_ENDED_SKIPPED = tl.constexpr(S.ENDED_SKIPPED)
_POLICY_NONE = tl.constexpr(S.POLICY_NONE)
_POLICY_PROBE = tl.constexpr(S.POLICY_PROBE)
# rows of the packed state and params
_S_PHASE = tl.constexpr(S.S_PHASE)
_S_THINK_COUNT = tl.constexpr(S.S_THINK_COUNT)
_S_STREAK = tl.constexpr(S.S_STREAK)
_S_CURSOR = tl.constexpr(S.S_CURSOR)
_S_OPEN_MATCH = tl.constexpr(S.S_OPEN_MATCH)
_S_CLOSE_MATCH = tl.constexpr(S.S_CLOSE_MATCH)
_S_ENDED_BY = tl.constexpr(S.S_ENDED_BY)
_S_DECISION_STEP = tl.constexpr(S.S_DECISION_STEP)
_S_STEP = tl.constexpr(S.S_STEP)
_S_BLOCKS = tl.constexpr(S.S_BLOCKS)
_S_EMA = tl.constexpr(S.S_EMA)
_S_SCORE = tl.constexpr(S.S_SCORE)
_NS_FLOAT = tl.constexpr(S.NS_FLOAT)  # state.floats rows from here on: a probe's memory [K, B]
_NO_MEMORY = tl.constexpr(S.NO_MEMORY)
_P_POLICY = tl.constexpr(P.P_POLICY)
_P_MIN_THINK = tl.constexpr(P.P_MIN_THINK)
_P_MAX_THINK = tl.constexpr(P.P_MAX_THINK)
_P_PATIENCE = tl.constexpr(P.P_PATIENCE)
_P_BOUNDARY_ONLY = tl.constexpr(P.P_BOUNDARY_ONLY)
_P_SKIP_CLOSE = tl.constexpr(P.P_SKIP_CLOSE)
_P_SKIP_END = tl.constexpr(P.P_SKIP_END)
_P_STOP_CLOSE = tl.constexpr(P.P_STOP_CLOSE)
_P_STOP_END = tl.constexpr(P.P_STOP_END)
_P_THRESHOLD = tl.constexpr(P.P_THRESHOLD)
_P_SKIP_THRESHOLD = tl.constexpr(P.P_SKIP_THRESHOLD)
_P_ALPHA = tl.constexpr(P.P_ALPHA)


@triton.jit
def _finish_tile(z, b1_ptr, w2_ptr, hs, hmask, rows, rmask, spart_ptr, zready_ptr, ZR_W,
                 RELU: tl.constexpr, PARK: tl.constexpr):
    """A finished z tile [BB, BH] -> b1, activation and w2: this tile's share of the head's logit [BB].

    PARK (the ready head of a probe with memory): store z itself in zready [B, ZR_W] instead; b1 and the
    activation wait for the rows' new memory, which only the state machine knows.
    """
    if PARK:
        tl.store(zready_ptr + rows[:, None] * ZR_W + hs[None, :], z, mask=rmask[:, None])
    else:
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
    zpart_ptr, gcount_ptr, spart_ptr, zready_ptr,
    B, D, H, ZR_W, pid_h, pid_b, pid_d,
    RELU: tl.constexpr, PARK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    D_CHUNK: tl.constexpr, N_D_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """z = W1[h tile, d chunk] . x[b tile, d chunk]; the tile's last chunk program finishes it (`_finish_tile`)."""
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
        _finish_tile(acc, b1_ptr, w2_ptr, hs, hmask, rows, rmask, spart_ptr, zready_ptr, ZR_W, RELU, PARK)
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
            _finish_tile(z, b1_ptr, w2_ptr, hs, hmask, rows, rmask, spart_ptr, zready_ptr, ZR_W, RELU, PARK)
            tl.atomic_xchg(gcount_ptr, 0)  # ready for the next launch


@triton.jit
def _head_logit(part_ptr, b2_ptr, rows, rmask, B, N_H_TILES):
    logit = tl.zeros_like(rows.to(tl.float32))
    for t in range(0, N_H_TILES):
        # .cg reads through L2: the partials were written by other SMs in this launch
        logit += tl.load(part_ptr + t * B + rows, mask=rmask, other=0.0, cache_modifier=".cg")
    return tl.sigmoid(logit + tl.load(b2_ptr))


@triton.jit
def _update_memory(zready_ptr, mb_ptr, sf_ptr, rows, rmask, opened, reads_thought, B, H, K, ZR_W,
                   BLOCK_K: tl.constexpr):
    """The rows' new running maxima [BR, BK] (same rule as the reference), also written to state.floats[NS_FLOAT:].

    A block opening this step starts afresh; only a thought token read this step (not the prompt's last token,
    the open marker, or the skip / stop text) adds its features, zready[:, H:H + K] + memory_b. Lanes past K
    or B come back 0, so they add nothing where the ready head reads the memory.
    """
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    mask = rmask[:, None] & kmask[None, :]  # [BR, BK]
    at = (ks[None, :] + _NS_FLOAT) * B + rows[:, None]  # state.floats[NS_FLOAT + k, row]
    memory = tl.load(sf_ptr + at, mask=mask, other=0.0)
    # .cg reads through L2: the ready tiles wrote zready from other SMs in this launch
    feats = tl.load(zready_ptr + rows[:, None] * ZR_W + H + ks[None, :], mask=mask, other=0.0, cache_modifier=".cg")
    feats = feats + tl.load(mb_ptr + ks, mask=kmask, other=0.0)[None, :]
    memory = tl.where(opened[:, None], _NO_MEMORY, memory)
    # NaN wins, like torch.maximum (Triton's default keeps the other operand on the GPU)
    grown = tl.maximum(memory, feats, propagate_nan=tl.PropagateNan.ALL)
    memory = tl.where(reads_thought[:, None], grown, memory)
    tl.store(sf_ptr + at, memory, mask=mask)
    return tl.where(mask, memory, 0.0)


@triton.jit
def _ready_with_memory(zready_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, memory, rows, rmask, D, H, K, ZR_W,
                       RELU: tl.constexpr, BLOCK_HM: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """The ready head of a probe with memory, sigmoid(w2 . act(W1 [x, m] + b1) + b2) [BR], BLOCK_HM units at a time.

    W1_x x comes parked in zready[:, :H]; W1_m m is w1[:, D:] (ready_w1 is [H, D + K]) against memory [BR, BK].
    """
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    logit = tl.zeros_like(rows.to(tl.float32))
    for j0 in range(0, H, BLOCK_HM):
        js = j0 + tl.arange(0, BLOCK_HM)  # [BHM]
        jmask = js < H
        z = tl.load(zready_ptr + rows[:, None] * ZR_W + js[None, :], mask=rmask[:, None] & jmask[None, :], other=0.0,
                    cache_modifier=".cg")  # [BR, BHM]
        wm = tl.load(w1_ptr + js[:, None] * (D + K) + D + ks[None, :], mask=jmask[:, None] & kmask[None, :],
                     other=0.0)  # [BHM, BK]
        z = tl.dot(memory, tl.trans(wm), z, input_precision=DOT_PRECISION)
        z = z + tl.load(b1_ptr + js, mask=jmask, other=0.0)[None, :]
        if RELU:
            z = tl.where(z < 0.0, 0.0, z)  # keeps NaN, like torch.relu
        w2 = tl.load(w2_ptr + js, mask=jmask, other=0.0)
        logit += tl.sum(tl.where(jmask[None, :], z * w2[None, :], 0.0), axis=1)  # padded units dropped (inf * 0)
    return tl.sigmoid(logit + tl.load(b2_ptr))


@triton.jit
def _kmp_advance(k, tok, marker_ptr, fail_ptr, L, rmask):
    """[BR] marker tokens matched after tok, from k (KMP; same steps as naive.kmp_advance)."""
    k = tl.minimum(tl.maximum(k, 0), L - 1)
    for _ in range(0, L - 1):  # each fallback shortens k, so L - 1 of them reach any needed length
        fall = (k > 0) & (tl.load(marker_ptr + k, mask=rmask, other=-1) != tok)
        k = tl.where(fall, tl.load(fail_ptr + tl.maximum(k - 1, 0), mask=rmask, other=0), k)
    return tl.where(tl.load(marker_ptr + k, mask=rmask, other=-1) == tok, k + 1, k)


@triton.jit
def _state_machine(
    tok_ptr, stride_tok, part_ptr, rb2_ptr, sb2_ptr,
    rwm_ptr, rb1_ptr, rw2_ptr, mb_ptr, zready_ptr,  # a probe with memory: the ready head's finish
    st_ptr, sf_ptr, forced_ptr, pi_ptr, pf_ptr, force_ptr,
    open_ptr, open_fail_ptr, close_ptr, close_fail_ptr, eos_ptr, bnd_ptr,
    B, D, H, K, ZR_W, F, N_EOS, V_BND, LO, LC, N_H_TILES,
    HAS_PROBE: tl.constexpr, MEMORY: tl.constexpr, RELU: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_HM: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Steps 1, 3 and 4 of the reference (and the scores' last sum) for every row, BLOCK_R rows at a time.

    With MEMORY also step 2's memory and the whole ready head, which need the observed phase.
    """
    for r0 in range(0, B, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)  # [BR]
        rmask = rows < B
        tok = tl.load(tok_ptr + rows * stride_tok, mask=rmask, other=-1).to(tl.int64)
        phase = tl.load(st_ptr + _S_PHASE * B + rows, mask=rmask, other=0)
        count = tl.load(st_ptr + _S_THINK_COUNT * B + rows, mask=rmask, other=0)
        streak = tl.load(st_ptr + _S_STREAK * B + rows, mask=rmask, other=0)
        cursor0 = tl.load(st_ptr + _S_CURSOR * B + rows, mask=rmask, other=0)
        om = tl.load(st_ptr + _S_OPEN_MATCH * B + rows, mask=rmask, other=0)
        cm = tl.load(st_ptr + _S_CLOSE_MATCH * B + rows, mask=rmask, other=0)
        ended = tl.load(st_ptr + _S_ENDED_BY * B + rows, mask=rmask, other=0)
        dstep = tl.load(st_ptr + _S_DECISION_STEP * B + rows, mask=rmask, other=0)
        step = tl.load(st_ptr + _S_STEP * B + rows, mask=rmask, other=0)
        blocks = tl.load(st_ptr + _S_BLOCKS * B + rows, mask=rmask, other=0)
        ema = tl.load(sf_ptr + _S_EMA * B + rows, mask=rmask, other=0.0)
        policy = tl.load(pi_ptr + _P_POLICY * B + rows, mask=rmask, other=0)
        min_think = tl.load(pi_ptr + _P_MIN_THINK * B + rows, mask=rmask, other=0)
        max_think = tl.load(pi_ptr + _P_MAX_THINK * B + rows, mask=rmask, other=0)
        patience = tl.load(pi_ptr + _P_PATIENCE * B + rows, mask=rmask, other=1)
        boundary_only = tl.load(pi_ptr + _P_BOUNDARY_ONLY * B + rows, mask=rmask, other=0)
        skip_close = tl.load(pi_ptr + _P_SKIP_CLOSE * B + rows, mask=rmask, other=0)
        skip_end = tl.load(pi_ptr + _P_SKIP_END * B + rows, mask=rmask, other=0)
        stop_close = tl.load(pi_ptr + _P_STOP_CLOSE * B + rows, mask=rmask, other=0)
        stop_end = tl.load(pi_ptr + _P_STOP_END * B + rows, mask=rmask, other=0)
        threshold = tl.load(pf_ptr + _P_THRESHOLD * B + rows, mask=rmask, other=2.0)
        skip_threshold = tl.load(pf_ptr + _P_SKIP_THRESHOLD * B + rows, mask=rmask, other=2.0)
        alpha = tl.load(pf_ptr + _P_ALPHA * B + rows, mask=rmask, other=1.0)
        first = step == 0
        obs = step != 0

        # 1. observe the row's last token (not at its step 0)
        is_eos = tok != tok  # all False
        for i in range(0, N_EOS):
            is_eos = is_eos | (tok == tl.load(eos_ptr + i))
        is_eos = is_eos & obs

        closing = obs & (phase == _CLOSING)
        in_stop_text = closing & (cursor0 >= skip_end) & (cursor0 < stop_close)  # stop text counts as thinking
        cursor = tl.where(closing, cursor0 + 1, cursor0)
        end = tl.where(ended == _ENDED_SKIPPED, skip_end, stop_end)
        seen = tl.where(closing & (cursor >= end), _ANSWERING, phase)  # the phase after observing

        watching = obs & ((phase == _PROMPT) | (phase == _ANSWERING))
        om = tl.where(watching, _kmp_advance(om, tok, open_ptr, open_fail_ptr, LO, rmask), om)
        opened = watching & (om >= LO)
        seen = tl.where(opened, _THINKING, seen)
        om = tl.where(opened, 0, om)
        blocks = tl.where(opened, blocks + 1, blocks)
        ended = tl.where(opened, _ENDED_NONE, ended)  # each block starts like the first
        dstep = tl.where(opened, -1, dstep)
        streak = tl.where(opened, 0, streak)
        ema = tl.where(opened, 0.0, ema)

        thinking = obs & (phase == _THINKING)
        count = tl.where((thinking & (is_eos == 0)) | in_stop_text, count + 1, count)
        cm = tl.where(thinking, _kmp_advance(cm, tok, close_ptr, close_fail_ptr, LC, rmask), cm)
        closed = thinking & (cm >= LC)
        count = tl.where(closed, count - LC, count)  # the close marker's tokens are not thinking tokens
        seen = tl.where(closed, _ANSWERING, seen)
        cm = tl.where(closed, 0, cm)
        ended = tl.where(closed, _ENDED_NATURAL, ended)
        dstep = tl.where(closed, step - 1, dstep)
        seen = tl.where(is_eos, _DONE, seen)

        # 2. scores: probe rows only, NaN elsewhere (like the reference)
        is_probe = policy == _POLICY_PROBE
        nan = tl.full([BLOCK_R], float("nan"), tl.float32)
        if HAS_PROBE:
            if MEMORY:
                # every row keeps its maxima (policy aside); the reference's rule, on the phase just observed
                reads_thought = (seen == _THINKING) & (opened == 0) & (first == 0)
                memory = _update_memory(zready_ptr, mb_ptr, sf_ptr, rows, rmask, opened, reads_thought, B, H, K, ZR_W,
                                        BLOCK_K)
                ready = _ready_with_memory(zready_ptr, rwm_ptr, rb1_ptr, rw2_ptr, rb2_ptr, memory, rows, rmask, D, H,
                                           K, ZR_W, RELU, BLOCK_HM, BLOCK_K, DOT_PRECISION)
            else:
                ready = _head_logit(part_ptr, rb2_ptr, rows, rmask, B, N_H_TILES)
            ready = tl.where(is_probe, ready, nan)
            skip = tl.where(is_probe, _head_logit(part_ptr + N_H_TILES * B, sb2_ptr, rows, rmask, B, N_H_TILES), nan)
        else:
            ready = nan
            skip = nan
        score = tl.where(first, skip, ready)

        # 3. decide
        open_row = (seen == _PROMPT) | (seen == _THINKING)
        wants_skip = (is_probe & (skip >= skip_threshold)) | (policy == _POLICY_NONE)  # NaN never skips
        do_skip = (first & open_row & wants_skip) | (opened & (policy == _POLICY_NONE))
        in_thought = (seen == _THINKING) & (do_skip == 0)
        valid = ready == ready
        ema = tl.where(in_thought & valid, alpha * ready + (1.0 - alpha) * ema, ema)
        over = in_thought & (count >= min_think) & valid & (ema >= threshold)
        streak = tl.where(over, streak + 1, tl.where(in_thought, 0, streak))

        stop_len = stop_close - skip_end
        over_budget = in_thought & (count >= max_think - stop_len)  # room is kept for the stop text
        bidx = tl.minimum(tl.maximum(tok, 0), V_BND - 1)
        at_boundary = (tl.load(bnd_ptr + bidx, mask=rmask, other=0) != 0) & obs
        probe_stop = is_probe & in_thought & (over_budget == 0) & over & (streak >= patience)
        probe_stop = probe_stop & ((boundary_only == 0) | at_boundary)
        close_now = over_budget | probe_stop

        phase_out = tl.where(do_skip | close_now, _CLOSING, seen)
        # a row skipped from PROMPT opens the block itself; one already inside starts at the close marker
        blocks = tl.where(do_skip & (seen == _PROMPT), blocks + 1, blocks)
        cursor = tl.where(do_skip, tl.where(seen == _PROMPT, 0, skip_close), cursor)
        # a stop writes the stop text when it fits the budget; a begun close marker is completed instead
        fits = count <= max_think - stop_len
        stop_from = tl.where(cm > 0, stop_close + cm, tl.where(fits, skip_end, stop_close))
        cursor = tl.where(close_now, stop_from, cursor)
        count = tl.where(close_now, count - cm, count)
        ended = tl.where(do_skip, _ENDED_SKIPPED, ended)
        ended = tl.where(over_budget, _ENDED_BUDGET, ended)
        ended = tl.where(probe_stop, _ENDED_PROBE, ended)
        dstep = tl.where(do_skip | close_now, step, dstep)
        cm = tl.where(close_now, 0, cm)

        # 4. the token to force
        fidx = tl.minimum(tl.maximum(cursor, 0), F - 1)
        forced = tl.load(force_ptr + rows.to(tl.int64) * F + fidx, mask=rmask & (phase_out == _CLOSING), other=-1)

        tl.store(st_ptr + _S_PHASE * B + rows, phase_out, mask=rmask)
        tl.store(st_ptr + _S_THINK_COUNT * B + rows, count, mask=rmask)
        tl.store(st_ptr + _S_STREAK * B + rows, streak, mask=rmask)
        tl.store(st_ptr + _S_CURSOR * B + rows, cursor, mask=rmask)
        tl.store(st_ptr + _S_OPEN_MATCH * B + rows, om, mask=rmask)
        tl.store(st_ptr + _S_CLOSE_MATCH * B + rows, cm, mask=rmask)
        tl.store(st_ptr + _S_ENDED_BY * B + rows, ended, mask=rmask)
        tl.store(st_ptr + _S_DECISION_STEP * B + rows, dstep, mask=rmask)
        tl.store(st_ptr + _S_STEP * B + rows, step + 1, mask=rmask)
        tl.store(st_ptr + _S_BLOCKS * B + rows, blocks, mask=rmask)
        tl.store(sf_ptr + _S_EMA * B + rows, ema, mask=rmask)
        tl.store(sf_ptr + _S_SCORE * B + rows, score, mask=rmask)
        tl.store(forced_ptr + rows, forced.to(tl.int64), mask=rmask)


@triton.jit
def _probe_step_kernel(
    hidden_ptr, stride_hb, stride_hd, tok_ptr, stride_tok,
    mean_ptr, inv_std_ptr, rw1_ptr, rb1_ptr, rw2_ptr, rb2_ptr, sw1_ptr, sb1_ptr, sw2_ptr, sb2_ptr,
    rwm_ptr, mb_ptr,  # a probe with memory: ready_w1 [H, D + K] itself (rw1 is the tiles' [H + K, D]), memory_b [K]
    st_ptr, sf_ptr, forced_ptr,  # ControllerState
    pi_ptr, pf_ptr, force_ptr,  # RowParams
    open_ptr, open_fail_ptr, close_ptr, close_fail_ptr, eos_ptr, bnd_ptr,  # ControllerSpec
    part_ptr, zpart_ptr, gcount_ptr, count_ptr, zready_ptr,  # Workspace
    B, D, H_READY, H_SKIP, K, N_H_TILES, N_B_TILES, F, N_EOS, V_BND, LO, LC,
    HAS_PROBE: tl.constexpr, RELU: tl.constexpr, MEMORY: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_HM: tl.constexpr, BLOCK_K: tl.constexpr,
    D_CHUNK: tl.constexpr, N_D_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr, STAGE: tl.constexpr,
):
    # STAGE 0: heads and state machine in one launch (the last program to finish runs the machine);
    # 1: heads only (partials to the workspace); 2: the state machine alone, on a stage-1 launch's partials.
    # H_READY: rows of rw1, the ready head's width H plus, with MEMORY, the K memory features (K = 0 without).
    ZR_W = N_H_TILES * BLOCK_H  # zready's row: every ready tile's columns
    if HAS_PROBE and STAGE != 2:
        pid_h = tl.program_id(0)
        pid_b = tl.program_id(1) % N_B_TILES
        pid_d = tl.program_id(1) // N_B_TILES
        head = tl.program_id(2)
        # per (head, h tile): score partials [B] and z chunks [N_D_SPLITS, B, BLOCK_H]; per (head, h tile, b tile): a ticket
        tile = head * N_H_TILES + pid_h
        zpart = zpart_ptr + tile * N_D_SPLITS * B * BLOCK_H
        gcount = gcount_ptr + tile * N_B_TILES + pid_b
        part = part_ptr + tile * B
        # read before the ticket: the state machine, after every ticket, advances the steps
        tile_rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        tile_steps = tl.load(st_ptr + _S_STEP * B + tile_rows, mask=tile_rows < B, other=1)
        n_first = tl.sum((tile_steps == 0).to(tl.int32), axis=0)
        if head == 0:
            # with memory the ready tiles park z for the state machine (PARK); the skip head never reads memory
            _head_tile(hidden_ptr, stride_hb, stride_hd, mean_ptr, inv_std_ptr, rw1_ptr, rb1_ptr, rw2_ptr,
                       zpart, gcount, part, zready_ptr, B, D, H_READY, ZR_W, pid_h, pid_b, pid_d,
                       RELU, MEMORY, BLOCK_B, BLOCK_H, BLOCK_D, D_CHUNK, N_D_SPLITS, DOT_PRECISION)
        elif n_first > 0:  # the skip head is only read at a row's step 0
            _head_tile(hidden_ptr, stride_hb, stride_hd, mean_ptr, inv_std_ptr, sw1_ptr, sb1_ptr, sw2_ptr,
                       zpart, gcount, part, zready_ptr, B, D, H_SKIP, ZR_W, pid_h, pid_b, pid_d,
                       RELU, False, BLOCK_B, BLOCK_H, BLOCK_D, D_CHUNK, N_D_SPLITS, DOT_PRECISION)
        if STAGE == 0:
            # all threads' partial stores precede the ticket (release); the last ticket acquires them all
            tl.debug_barrier()
            n_programs = tl.num_programs(0) * tl.num_programs(1) * tl.num_programs(2)
            last = tl.atomic_add(count_ptr, 1, sem="acq_rel") == n_programs - 1
        else:
            last = False  # stage 1: the machine runs in its own launch
    else:
        last = True  # one program, no tickets
    if last:
        _state_machine(tok_ptr, stride_tok, part_ptr, rb2_ptr, sb2_ptr, rwm_ptr, rb1_ptr, rw2_ptr, mb_ptr, zready_ptr,
                       st_ptr, sf_ptr, forced_ptr, pi_ptr, pf_ptr,
                       force_ptr, open_ptr, open_fail_ptr, close_ptr, close_fail_ptr, eos_ptr, bnd_ptr,
                       B, D, H_READY - K, K, ZR_W, F, N_EOS, V_BND, LO, LC, N_H_TILES,
                       HAS_PROBE, MEMORY, RELU, BLOCK_R, BLOCK_HM, BLOCK_K, DOT_PRECISION)
        if HAS_PROBE and STAGE == 0:
            tl.atomic_xchg(count_ptr, 0)  # ready for the next launch / graph replay


class Workspace(NamedTuple):
    """Scratch of one state's launches; the tickets start at 0 and every launch leaves them at 0."""

    spart: torch.Tensor  # [2, n_h_tiles, B] fp32: each (head, h tile)'s share of the logit
    zpart: torch.Tensor  # [2, n_h_tiles, n_d_splits, B, BLOCK_H] fp32: z per D chunk (a dummy with one split)
    gcount: torch.Tensor  # [2, n_h_tiles, n_b_tiles] int32: tickets of the D chunks of one tile
    count: torch.Tensor  # [1] int32: tickets of all programs
    # [B, n_h_tiles * BLOCK_H] fp32: a probe with memory's ready pre-activation, W1_x x then the K raw features
    # (a dummy without memory)
    zready: torch.Tensor


# the workspace hangs off the state object itself: a dict keyed by a tensor compares keys with `==`, a host
# sync that is illegal inside CUDA-graph capture (seen on an H200: cudaErrorStreamCaptureUnsupported)
_WORKSPACE_ATTR = "_probe_step_workspace"

_PROBE_FIELDS = ("mean", "inv_std", "ready_w1", "ready_b1", "ready_w2", "ready_b2", "skip_w1", "skip_b1", "skip_w2", "skip_b2")


def _workspace(state: ControllerState, n_h_tiles: int, n_d_splits: int, n_b_tiles: int, block_h: int,
               memory: bool) -> Workspace:
    batch, device = state.batch_size, state.ints.device
    zshape = (2, n_h_tiles, n_d_splits, batch, block_h) if n_d_splits > 1 else (1,)
    rshape = (batch, n_h_tiles * block_h) if memory else (1,)
    ws = getattr(state, _WORKSPACE_ATTR, None)
    if ws is None or ws.spart.shape != (2, n_h_tiles, batch) or ws.zpart.shape != zshape \
            or ws.gcount.shape != (2, n_h_tiles, n_b_tiles) or ws.zready.shape != rshape or ws.count.device != device:
        ws = Workspace(spart=torch.empty(2, n_h_tiles, batch, dtype=torch.float32, device=device),
                       zpart=torch.empty(zshape, dtype=torch.float32, device=device),
                       gcount=torch.zeros(2, n_h_tiles, n_b_tiles, dtype=torch.int32, device=device),
                       count=torch.zeros(1, dtype=torch.int32, device=device),
                       zready=torch.empty(rshape, dtype=torch.float32, device=device))
        setattr(state, _WORKSPACE_ATTR, ws)
    return ws


class _ReadyTiles(NamedTuple):
    """[ready_w1[:, :D]; memory_w] [H + K, D], and what it was built from (held, so `is` cannot see a reused id)."""

    ready_w1: torch.Tensor
    memory_w: torch.Tensor
    versions: tuple[int, int]
    matrix: torch.Tensor


# Kept on the ProbeTensors object rather than the state: every state stepped with a probe shares it, the vLLM
# adapter steps a fresh state object each call, and a state stepped with another probe finds that probe's own.
# Building it per call would add a copy of H x D weights to every step (and an allocation inside a captured one).
_READY_TILES_ATTR = "_probe_step_ready_tiles"


def _version(t: torch.Tensor) -> int:
    # inference tensors keep no version counter (and can change in place only inside inference mode)
    return -1 if t.is_inference() else t._version


def _ready_tiles(probe) -> torch.Tensor:
    """The ready tiles' matrix of a probe with memory, rebuilt only when ready_w1 or memory_w is replaced or
    changed in place (torch's version counter); identity and counters are host-side, so no sync."""
    cached = getattr(probe, _READY_TILES_ATTR, None)
    versions = (_version(probe.ready_w1), _version(probe.memory_w))
    if cached is None or cached.ready_w1 is not probe.ready_w1 or cached.memory_w is not probe.memory_w \
            or cached.versions != versions:
        d = probe.mean.shape[0]
        matrix = torch.cat([probe.ready_w1[:, :d], probe.memory_w]).contiguous()
        cached = _ReadyTiles(probe.ready_w1, probe.memory_w, versions, matrix)
        setattr(probe, _READY_TILES_ATTR, cached)
    return cached.matrix


def _check(hidden, last_token, state: ControllerState, params: RowParams, spec: ControllerSpec, use_probe: bool) -> None:
    device = state.ints.device
    batch = state.batch_size
    k = spec.probe.memory_size if spec.probe is not None else 0

    def need(ok, msg):
        if not ok:
            raise ValueError(f"probe_step_triton: {msg}")

    def buffer(name, t, dtype, shape):
        need(torch.is_tensor(t) and t.dtype == dtype and tuple(t.shape) == shape and t.device == device and t.is_contiguous(),
             f"{name} must be a contiguous {dtype} {list(shape)} tensor on {device}, got "
             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))} on {getattr(t, 'device', None)}")

    buffer("state.ints", state.ints, torch.int32, (S.NS_INT, batch))
    # rows NS_FLOAT.. hold a probe's memory: exactly K of them for a probe with memory (the kernel writes them);
    # without memory any there are left alone, as the reference leaves them
    if k:
        need(state.floats.dim() == 2 and state.floats.shape[0] == S.NS_FLOAT + k,
             f"state.floats must be [NS_FLOAT + K, B] = [{S.NS_FLOAT} + {k}, {batch}] for this probe with memory "
             f"(K = {k}), got {tuple(state.floats.shape)}; allocate the state with memory_size={k}")
        n_floats = S.NS_FLOAT + k
    else:
        n_floats = max(S.NS_FLOAT, state.floats.shape[0]) if state.floats.dim() == 2 else S.NS_FLOAT
    buffer("state.floats", state.floats, torch.float32, (n_floats, batch))
    buffer("state.forced", state.forced, torch.int64, (batch,))
    buffer("params.ints", params.ints, torch.int32, (P.NP_INT, batch))
    buffer("params.floats", params.floats, torch.float32, (P.NP_FLOAT, batch))
    need(params.force.dim() == 2 and params.force.shape[1] >= 1, "params.force must be [B, F] with F >= 1")
    buffer("params.force", params.force, torch.int64, (batch, params.force.shape[1]))
    need(last_token.dim() == 1 and last_token.shape[0] == batch and last_token.dtype in (torch.int32, torch.int64)
         and last_token.device == device, f"last_token must be int32/int64 [{batch}] on {device}, got {last_token.dtype} "
         f"{tuple(last_token.shape)} on {last_token.device}")
    for ids, fail in (("open_ids", "open_fail"), ("close_ids", "close_fail")):
        n = getattr(spec, ids).numel()
        need(n >= 1, f"spec.{ids} must not be empty")
        buffer(f"spec.{ids}", getattr(spec, ids), torch.int64, (n,))
        buffer(f"spec.{fail}", getattr(spec, fail), torch.int32, (n,))
    need(spec.eos_ids.numel() >= 1, "spec.eos_ids must hold at least one id (-1 when the model has none)")
    buffer("spec.eos_ids", spec.eos_ids, torch.int64, (spec.eos_ids.numel(),))
    need(spec.is_boundary.numel() >= 1, "spec.is_boundary must be a [V] mask")
    buffer("spec.is_boundary", spec.is_boundary, torch.bool, (spec.is_boundary.numel(),))
    if not use_probe:
        return
    p = spec.probe
    d = p.mean.shape[0]
    need(hidden.dim() == 2 and hidden.shape == (batch, d), f"hidden must be [{batch}, {d}], got {tuple(hidden.shape)}")
    need(hidden.dtype in (torch.bfloat16, torch.float16, torch.float32), f"hidden must be bf16/fp16/fp32, got {hidden.dtype}")
    need(hidden.device == device, f"hidden is on {hidden.device}, state on {device}")
    need((p.memory_w is None) == (p.memory_b is None),
         "a probe with memory needs both memory_w [K, D] and memory_b [K]")
    for name in _PROBE_FIELDS + (("memory_w", "memory_b") if k else ()):
        t = getattr(p, name)
        need(t.dtype == torch.float32 and t.device == device and t.is_contiguous(),
             f"probe.{name} must be a contiguous fp32 tensor on {device} (use ProbeTensors.to(device))")
    for head in ("ready", "skip"):
        w1, b1, w2, b2 = (getattr(p, f"{head}_{part}") for part in ("w1", "b1", "w2", "b2"))
        h = w1.shape[0]
        d_in = d + k if head == "ready" else d  # a ready head with memory reads [x, memory]
        need(w1.shape == (h, d_in) and b1.shape == (h,) and w2.shape == (h,) and b2.numel() == 1 and p.inv_std.shape == (d,),
             f"probe {head} head shapes: w1 [H, {d_in}], b1 [H], w2 [H], b2 [1]; got {tuple(w1.shape)}, {tuple(b1.shape)}, "
             f"{tuple(w2.shape)}, {tuple(b2.shape)}")
    if k:
        need(p.memory_w.shape == (k, d) and p.memory_b.shape == (k,), f"probe memory shapes: memory_w [K, {d}], "
             f"memory_b [K]; got {tuple(p.memory_w.shape)}, {tuple(p.memory_b.shape)}")


def probe_step_triton(hidden: torch.Tensor | None, last_token: torch.Tensor, state: ControllerState,
                      params: RowParams, spec: ControllerSpec, split: bool = False) -> None:
    """One controller step in place on `state`, in one Triton launch (same contract as probe_step_reference).

    hidden: [B, D] bf16/fp16/fp32, any strides (read when the spec has a probe); last_token: [B] int32/int64.
    A probe with memory (K features) needs state.floats [NS_FLOAT + K, B] (`ControllerState.allocate(...,
    memory_size=K)`) and updates its rows NS_FLOAT.. like the reference.
    split: two launches instead (the heads, then the state machine alone), the design the fused launch is
    measured against (benchmarks/gpu_kernels.py); same results.
    """
    use_probe = spec.probe is not None and hidden is not None
    _check(hidden, last_token, state, params, spec, use_probe)
    batch = state.batch_size
    interp = state.ints.device.type != "cuda"
    block_r = min(256, triton.next_power_of_2(batch))
    k = spec.probe.memory_size if use_probe else 0
    memory = k > 0
    block_k = block_hm = 16  # unused without memory
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
        rows_ready = h_ready + k  # with memory the ready tiles also compute the K features
        n_h_tiles = triton.cdiv(max(rows_ready, h_skip), block_h)
        n_b_tiles = triton.cdiv(batch, block_b)
        grid = (n_h_tiles, n_d_splits * n_b_tiles, 2)
        ws = _workspace(state, n_h_tiles, n_d_splits, n_b_tiles, block_h, memory)
        work = (ws.spart, ws.zpart, ws.gcount, ws.count, ws.zready)
        weights = [getattr(p, f) for f in _PROBE_FIELDS]
        if memory:
            weights[_PROBE_FIELDS.index("ready_w1")] = _ready_tiles(p)
            weights += [p.ready_w1, p.memory_b]
            # the machine finishes the ready head with tl.dot (every dimension >= 16) on [BLOCK_R, BLOCK_HM] tiles;
            # sizes from ptxas for sm_90 (compiled without a GPU, not timed yet): up to 128 rows at a time and 16
            # units (32 for up to 16 rows) spill about as much as the memoryless kernel already does (220-290 bytes
            # a thread); 256 rows or 64 units spill 2-3x that
            block_r = min(128, max(16, block_r))
            block_k = max(16, triton.next_power_of_2(k))
            block_hm = 32 if block_r <= 16 and h_ready > 16 else 16
        else:
            weights += [state.floats] * 2  # never read without memory
        hargs = (hidden, hidden.stride(0), hidden.stride(1))
        relu = bool(p.relu)
    else:
        d = h_ready = h_skip = rows_ready = n_h_tiles = n_b_tiles = n_d_splits = 1
        block_b = block_h = block_d = d_chunk = 16
        grid = (1, 1, 1)
        dummy = state.floats
        work = (dummy, dummy, state.ints, state.ints, dummy)  # never touched without a probe
        weights = [dummy] * (len(_PROBE_FIELDS) + 2)
        hargs = (dummy, 0, 0)
        relu = False
    args = (
        *hargs, last_token, last_token.stride(0),
        *weights,
        *state.tensors(),
        *params.tensors(),
        spec.open_ids, spec.open_fail, spec.close_ids, spec.close_fail, spec.eos_ids, spec.is_boundary,
        *work,
        batch, d, rows_ready, h_skip, k, n_h_tiles, n_b_tiles, params.force.shape[1], spec.eos_ids.numel(),
        spec.is_boundary.numel(), spec.open_ids.numel(), spec.close_ids.numel(),
    )
    meta = dict(
        HAS_PROBE=use_probe, RELU=relu, MEMORY=memory,
        BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_D=block_d, BLOCK_R=block_r, BLOCK_HM=block_hm, BLOCK_K=block_k,
        D_CHUNK=d_chunk, N_D_SPLITS=n_d_splits,
        # tf32x3 runs on tensor cores at fp32-level accuracy; the interpreter computes in plain fp32
        DOT_PRECISION="ieee" if interp else "tf32x3",
        num_warps=4,
    )
    stages = ((1, grid), (2, (1, 1, 1))) if (split and use_probe) else ((0, grid),)
    for stage, stage_grid in stages:
        _probe_step_kernel[stage_grid](*args, STAGE=stage, **meta)
