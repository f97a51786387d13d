"""Triton kernel of the controller step: probe heads and the per-row state machine in one launch.

Semantics: `adaptive_think.controller.step.controller_step_reference` (the ground truth; the names below are
its names, so the two read side by side; tests/kernels/test_controller_step.py compares them). This package
imports nothing of adaptive_think: the host side (adaptive_think/controller/kernel_buffers.py) packs the
buffers, checks them and passes their layouts as the constexpr tuples declared here.

Arguments: the hidden state [B, D] (unit stride along D) and last tokens [B]; three packed buffers, each
with its layout as a constexpr:
- probe: one fp32 buffer holding every probe weight (`ProbeLayout`: element offsets and D, H, HS, K);
- spec: one byte buffer holding markers, failure links, eos ids and the boundary mask (`SpecLayout`);
- workspace: one fp32 buffer (tickets, per-tile partial logits, parked pre-activations; `workspace_size`);
and the state (`ControllerState`: ints, floats, forced) and params (`RowParams`: ints, floats, force) with
their row indices in `Layout` (NG: the route groups in params.floats' group table, G - 1, from its shape).
Pointers to persistent buffers only, so a launch can be captured in a CUDA graph.

Design:
- grid = (H tiles of BLOCK_H, D chunks x B tiles, 2 heads). Program (t, c, b, head) computes
  z_c = W1[t tile, c chunk] . ((h - mean) * inv_std)[b tile, c chunk] with `tl.dot` (tf32x3 on a GPU).
  Splitting D into chunks gives enough programs, each reading little of W1, at batch 1.
- Two-level reduction: the chunks of a tile park z_c in the workspace and take the tile's ticket; the last
  one sums them in a fixed order (deterministic), applies b1, the activation and w2 (`_activate_reduce`) and
  writes the tile's share of the logit. Only these tile finishers take the launch's ticket; the last one sums
  the shares (one vector load), applies b2 and the sigmoid, and runs the state machine for every row.
- One-level reduction (`Tiling.ONE_LEVEL`, small batches): every chunk parks z_c and takes the launch's ticket
  directly; the last program sums the parked chunks itself. One serial atomic fewer on the critical path.
- Tickets follow the CUDA threadFenceReduction pattern (stores, a CTA barrier, an acq_rel atomic), so the last
  ticket sees every program's writes; the last ones reset their counters to 0 for the next launch or replay.
- The skip head is read at a row's step 0 only: its tiles compute only when a row of their B tile is at step
  0, and the state machine sums its partials only for those rows. Programs read the steps before any ticket,
  so none can see the increment the state machine writes.
- A probe with a guard (`ProbeLayout.GUARD`): a third head (grid axis 2 = 3) of R + 1 units on y = x - guard_mean:
  units 0..R-1 project y on the guard's directions, unit R accumulates |y|^2 over the chunks; a finished tile
  writes sum_j coef_j p_j^2 + coef_R |y|^2 (`_guard_reduce`). Like the skip head it runs at a row's step 0 only;
  the machine compares the sum with the row's guard threshold and, over it, runs the fallback thresholds.
- A probe with a route: the host routes the rows before the launch (the reference's `route_rows`, one
  implementation); the machine reads each row's group and gathers its thresholds from the params' group table.
- A probe with memory (K > 0): the memory features `memory_w x + memory_b` and the ready head's x-part are both
  linear in x, so the ready tiles compute the H + K units together (units H.. read memory_w's rows). They park
  the pre-activation rather than finish it: the head reads [x, m], m the row's new running maxima, known only
  once the state machine has observed the row's last token. The machine updates m (`_update_memory`) and
  finishes the ready head on [x, m] (`_head_logit`).
- Without a probe (or without hidden) the grid is (1, 1, 1): one program runs the state machine, no tickets.
  A training-free logit score (`ProbeLayout.SCORE` > 0) takes the same single program: the score [B], computed
  from the logits in front of the kernel (adaptive_think/controller/logit_score.py), comes in where the hidden
  state would, and the machine reads it as the ready score (and at a row's step 0 as the skip score, SCORE 2).
- STAGE 1 / 2 split the launch in two (heads, then the state machine alone): the design the fused launch is
  measured against inside a captured step (benchmarks/gpu_kernels.py).

The workspace belongs to one state, so a state must not be stepped on two streams at once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class Layout(NamedTuple):
    """Rows of the packed state and params buffers, and the codes the state machine reads and writes."""

    # ControllerState.ints rows
    PHASE: int
    THINK_COUNT: int
    STREAK: int
    CURSOR: int
    OPEN_MATCH: int
    CLOSE_MATCH: int
    ENDED_BY: int
    DECISION_STEP: int
    STEP: int
    BLOCKS: int
    GUARD: int
    GROUP: int
    # ControllerState.floats rows (MEMORY: the first of a probe's K running maxima)
    EMA: int
    SCORE: int
    GUARD_SCORE: int
    MEMORY: int
    # RowParams.ints rows
    POLICY: int
    MIN_THINK: int
    MAX_THINK: int
    PATIENCE: int
    BOUNDARY_ONLY: int
    SKIP_CLOSE: int
    SKIP_END: int
    STOP_CLOSE: int
    STOP_END: int
    # RowParams.floats rows
    THRESHOLD: int
    SKIP_THRESHOLD: int
    ALPHA: int
    GUARD_THRESHOLD: int
    FALLBACK_THRESHOLD: int
    FALLBACK_SKIP_THRESHOLD: int
    GROUPS: int  # the group table's first row: route group g >= 1's (ready, skip) at GROUPS + 2 (g - 1) and the next
    # phases, reasons, policies, the maxima of an empty memory
    PROMPT: int
    THINKING: int
    CLOSING: int
    ANSWERING: int
    DONE: int
    ENDED_NONE: int
    ENDED_NATURAL: int
    ENDED_BUDGET: int
    ENDED_PROBE: int
    ENDED_SKIPPED: int
    POLICY_NONE: int
    POLICY_PROBE: int
    NO_MEMORY: float


class SpecLayout(NamedTuple):
    """The spec's byte buffer: lengths, then byte offsets (int64 ids, int32 failure links, a bool [V] mask)."""

    LO: int
    LC: int
    N_EOS: int
    V: int
    OPEN: int
    OPEN_FAIL: int
    CLOSE: int
    CLOSE_FAIL: int
    EOS: int
    BOUNDARY: int


class ProbeLayout(NamedTuple):
    """The probe's fp32 buffer: sizes (D = 0: no probe), activation, element offsets of each weight.

    ready_w1 is [H, D + K] (its last K columns read the memory), skip_w1 [HS, D], memory_w [K, D].
    SCORE (with D = 0): 1 = a precomputed logit score [B] is the ready score, 2 = the skip score as well.
    GUARD: the probe has an out-of-distribution guard of rank R (guard_mean [D] at GMEAN, guard_dirs [R, D] at
    GDIRS, guard_coef [R + 1] at GCOEF).
    COUNT: some memory units count (memory_sum [K] at MS, 1.0 where a unit sums sigmoid(feature) instead of
    keeping its maximum).
    """

    D: int
    H: int
    HS: int
    K: int
    RELU: bool
    MEAN: int
    INV_STD: int
    RW1: int
    RB1: int
    RW2: int
    RB2: int
    SW1: int
    SB1: int
    SW2: int
    SB2: int
    MW: int
    MB: int
    SCORE: int = 0
    GUARD: bool = False
    R: int = 0
    GMEAN: int = 0
    GDIRS: int = 0
    GCOEF: int = 0
    COUNT: bool = False
    MS: int = 0


NO_PROBE = ProbeLayout(*([0] * 4), False, *([0] * 12))


class Tiling(NamedTuple):
    """Block sizes and the reduction scheme of one launch configuration (`tiling` picks them)."""

    BLOCK_B: int  # rows of a head tile (tl.dot needs >= 16)
    BLOCK_H: int  # hidden units of a head tile
    BLOCK_D: int  # features per dot
    D_CHUNK: int  # features of one program
    N_SPLITS: int  # D chunks
    N_H_TILES: int  # unit tiles per head (the ready head's H + K units, or the skip head's HS)
    BLOCK_T: int  # N_H_TILES rounded up to a power of two (one vector load of the tile shares)
    BLOCK_R: int  # rows the state machine takes at a time
    BLOCK_HM: int  # hidden units the state machine finishes at a time
    BLOCK_K: int  # memory features, padded for tl.dot
    ONE_LEVEL: bool  # chunks go straight to the launch's ticket (only with N_SPLITS > 1)
    Z_PARTS: int  # parked pre-activation parts the machine sums: N_SPLITS with ONE_LEVEL, else 1
    DOT: str  # tl.dot input precision
    N_HEADS: int = 2  # ready, skip (and the guard)


def tiling(batch: int, probe: ProbeLayout, on_gpu: bool, levels: int | None = None) -> Tiling:
    """The launch configuration for `batch` rows. levels: 1 or 2 reduction levels (None: one level when the
    last program's share of parked chunks is small, i.e. small batches)."""
    if probe.D == 0:
        return Tiling(16, 16, 16, 16, 1, 1, 1, min(256, triton.next_power_of_2(batch)), 16, 16, False, 1, "ieee")
    n_heads = 3 if probe.GUARD else 2
    block_b = 16 if batch <= 16 else 32 if batch <= 32 else 64
    block_h = 16
    if on_gpu:  # chunks of 512 features: at D = 4096, 8 x (units / 16) programs per head, each reading 32 KB of W1
        block_d, d_chunk = (128 if block_b <= 32 else 64), 512
    else:  # small chunks, so the interpreter covers the split-D paths on small shapes
        block_d, d_chunk = 32, 64
    block_d = min(block_d, max(16, triton.next_power_of_2(probe.D)))
    d_chunk = max(block_d, min(d_chunk, triton.cdiv(probe.D, block_d) * block_d))
    n_splits = triton.cdiv(probe.D, d_chunk)
    n_h_tiles = triton.cdiv(max(probe.H + probe.K, probe.HS, probe.R + 1 if probe.GUARD else 0), block_h)
    if levels is None:  # the last program reads every chunk's z of both heads: keep that under 32 KB
        levels = 1 if batch * n_splits * n_h_tiles * block_h * n_heads <= 8192 else 2
    if levels not in (1, 2):
        raise ValueError(f"levels must be 1 or 2 (reduction levels), got {levels!r}")
    one_level = levels == 1 and n_splits > 1
    block_r = min(256, triton.next_power_of_2(batch))
    if probe.K and not one_level:  # W1_m m by tl.dot (every dimension >= 16)
        block_r = min(128, max(16, block_r))
    # one level keeps the few rows it has: its parked parts are all loaded at once (W1_m m then by broadcast)
    block_k = max(16, triton.next_power_of_2(probe.K)) if block_r >= 16 else triton.next_power_of_2(max(probe.K, 1))
    # the machine's [BLOCK_R, BLOCK_HM] tiles: at most 4096 values (2048 from 64 rows up; 1024 when it sums the
    # chunks' parts itself, whose loads are all in flight at once), so few loop trips without spilling
    # (ptxas for sm_90: none in the machine at these sizes)
    budget = 1024 if one_level else 4096 if block_r <= 32 else 2048
    block_hm = max(16, min(triton.next_power_of_2(max(probe.H, probe.HS)), budget // block_r))
    return Tiling(block_b, block_h, block_d, d_chunk, n_splits, n_h_tiles, triton.next_power_of_2(n_h_tiles),
                  block_r, block_hm, block_k, one_level, n_splits if one_level else 1,
                  "tf32x3" if on_gpu else "ieee", n_heads)


def workspace_size(batch: int, t: Tiling) -> int:
    """fp32 words of the workspace (`_regions`): tickets, tile shares of the logits, parked pre-activations."""
    n_b_tiles = triton.cdiv(batch, t.BLOCK_B)
    units = t.N_H_TILES * t.BLOCK_H
    h = t.N_HEADS
    return 1 + h * t.N_H_TILES * n_b_tiles + h * t.N_H_TILES * batch + h * t.N_SPLITS * batch * units


def workspace_tickets(batch: int, t: Tiling) -> int:
    """How many of the workspace's first words are int32 tickets (each back at 0 after every launch)."""
    return 1 + t.N_HEADS * t.N_H_TILES * triton.cdiv(batch, t.BLOCK_B)


# ---------------------------------------------------------------------------------------------- helpers


@triton.jit
def _regions(work_ptr, B, TILE: tl.constexpr):
    """The workspace's parts: tickets int32 [1 + N_HEADS * N_H_TILES * b tiles] (the launch's first, then each
    (head, h tile, b tile)'s), shares fp32 [N_HEADS, N_H_TILES, B], parked z fp32 [N_HEADS, N_SPLITS, B,
    N_H_TILES * BLOCK_H]."""
    n_b_tiles = tl.cdiv(B, TILE.BLOCK_B)
    tickets = work_ptr.to(tl.pointer_type(tl.int32), bitcast=True)
    shares = work_ptr + 1 + TILE.N_HEADS * TILE.N_H_TILES * n_b_tiles
    zpark = shares + TILE.N_HEADS * TILE.N_H_TILES * B
    return tickets, shares, zpark


@triton.jit
def _activate_reduce(z, b1_ptr, w2_ptr, units, umask, RELU: tl.constexpr):
    """sum_j w2[j] * act(z[:, j] + b1[j]) over the units of z [R, U] -> [R] (the head's logit, before b2)."""
    z = z + tl.load(b1_ptr + units, mask=umask, other=0.0)[None, :]
    if RELU:
        z = tl.where(z < 0.0, 0.0, z)  # keeps NaN, like torch.relu
    w2 = tl.load(w2_ptr + units, mask=umask, other=0.0)
    # padded units are dropped explicitly: an inf input makes inf * 0 = NaN there
    return tl.sum(tl.where(umask[None, :], z * w2[None, :], 0.0), axis=1)


@triton.jit
def _guard_reduce(z, coef_ptr, units, umask, R: tl.constexpr):
    """sum_u coef[u] * (z[:, u]^2 for the R projections, z[:, R] = |y|^2 as it is) over z [R rows, U] -> [rows]."""
    coef = tl.load(coef_ptr + units, mask=umask, other=0.0)
    act = tl.where(units[None, :] < R, z * z, z)
    return tl.sum(tl.where(umask[None, :], act * coef[None, :], 0.0), axis=1)


@triton.jit
def _tile_share(acc, probe_ptr, head, units, umask, PROBE: tl.constexpr):
    """A finished tile's share of its head's logit (ready / skip) or of the guard's score (head 2)."""
    if PROBE.GUARD:
        if head == 2:
            share = _guard_reduce(acc, probe_ptr + PROBE.GCOEF, units, umask, PROBE.R)
        else:
            share = _activate_reduce(acc, probe_ptr + tl.where(head == 0, PROBE.RB1, PROBE.SB1),
                                     probe_ptr + tl.where(head == 0, PROBE.RW2, PROBE.SW2), units, umask, PROBE.RELU)
    else:
        share = _activate_reduce(acc, probe_ptr + tl.where(head == 0, PROBE.RB1, PROBE.SB1),
                                 probe_ptr + tl.where(head == 0, PROBE.RW2, PROBE.SW2), units, umask, PROBE.RELU)
    return share


@triton.jit
def _head_tile(hidden_ptr, stride_h, probe_ptr, tickets, shares, zpark, B, pid_h, pid_b, pid_d, head,
               PROBE: tl.constexpr, TILE: tl.constexpr):
    """z = W1[h tile, d chunk] . x[b tile, d chunk], parked or finished; returns whether this program arrives at
    the launch's ticket (it finished its tile, or one level: every chunk arrives).

    Units of the ready head (head 0): H rows of ready_w1 (row stride D + K), then with memory the K rows of
    memory_w; its z is parked for the state machine when the probe has memory. Skip head (head 1): HS rows.
    Guard (head 2): R rows of guard_dirs on y = x - guard_mean, and unit R summing y^2 (no weights).
    """
    UNITS: tl.constexpr = TILE.N_H_TILES * TILE.BLOCK_H
    rows = pid_b * TILE.BLOCK_B + tl.arange(0, TILE.BLOCK_B)  # [BB]
    rmask = rows < B
    units = pid_h * TILE.BLOCK_H + tl.arange(0, TILE.BLOCK_H)  # [BH]
    umask = units < tl.where(head == 0, PROBE.H + PROBE.K, tl.where(head == 1, PROBE.HS, PROBE.R + 1))
    ready_row = tl.where(units < PROBE.H, PROBE.RW1 + units * (PROBE.D + PROBE.K), PROBE.MW + (units - PROBE.H) * PROBE.D)
    other_row = tl.where(head == 1, PROBE.SW1 + units * PROBE.D, PROBE.GDIRS + units * PROBE.D)
    w_row = tl.where(head == 0, ready_row, other_row)  # [BH] offset of each unit's weights
    # the units with weights: the guard's unit R has none
    wmask = units < tl.where(head == 0, PROBE.H + PROBE.K, tl.where(head == 1, PROBE.HS, PROBE.R))
    on_guard = tl.where(head == 2, 1.0, 0.0)  # 1.0 on the guard's head (read only when the probe has one)
    acc = tl.zeros([TILE.BLOCK_B, TILE.BLOCK_H], dtype=tl.float32)
    ysq = tl.zeros([TILE.BLOCK_B], dtype=tl.float32)
    for d0 in range(0, TILE.D_CHUNK, TILE.BLOCK_D):
        ds = pid_d * TILE.D_CHUNK + d0 + tl.arange(0, TILE.BLOCK_D)  # [BD]
        dmask = ds < PROBE.D
        h = tl.load(hidden_ptr + rows[:, None] * stride_h + ds[None, :], mask=rmask[:, None] & dmask[None, :],
                    other=0.0).to(tl.float32)  # [BB, BD]
        mean = tl.load(probe_ptr + PROBE.MEAN + ds, mask=dmask, other=0.0)
        inv_std = tl.load(probe_ptr + PROBE.INV_STD + ds, mask=dmask, other=0.0)
        x = (h - mean[None, :]) * inv_std[None, :]  # same op order as the reference
        if PROBE.GUARD:
            # y = x - guard_mean on head 2 (x - 0 elsewhere: exact)
            x = x - (tl.load(probe_ptr + PROBE.GMEAN + ds, mask=dmask, other=0.0) * on_guard)[None, :]
            # unit R of the guard: |y|^2 (padded rows and features are 0)
            ysq += tl.sum(tl.where(rmask[:, None] & dmask[None, :], x * x, 0.0), axis=1)  # [BB]
        w = tl.load(probe_ptr + w_row[:, None] + ds[None, :], mask=wmask[:, None] & dmask[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=TILE.DOT)  # [BB, BH]
    if PROBE.GUARD:  # the guard's unit R holds |y|^2 (its dot column, 0 * y, would be NaN on an inf row)
        is_norm = tl.where(units == PROBE.R, on_guard, 0.0)  # [BH]
        acc = tl.where(is_norm[None, :] > 0.5, ysq[:, None], acc)
    park = (head == 0) & (PROBE.K > 0)  # the ready head of a probe with memory: the machine finishes it
    zrow = zpark + (head * TILE.N_SPLITS * B + rows[:, None]) * UNITS + units[None, :]  # [BB, BH], chunk 0
    arrives = pid_d >= 0  # true
    if TILE.N_SPLITS > 1:
        # the activation needs the whole z: park this chunk's share
        tl.store(zrow + pid_d * B * UNITS, acc, mask=rmask[:, None])
        if not TILE.ONE_LEVEL:
            tl.debug_barrier()
            ticket = tl.atomic_add(tickets + 1 + (head * TILE.N_H_TILES + pid_h) * tl.cdiv(B, TILE.BLOCK_B) + pid_b,
                                   1, sem="acq_rel")
            arrives = ticket == TILE.N_SPLITS - 1
            if arrives:  # the tile's last chunk sums them in a fixed order: deterministic
                acc = tl.zeros([TILE.BLOCK_B, TILE.BLOCK_H], dtype=tl.float32)
                for c in tl.static_range(TILE.N_SPLITS):
                    # .cg reads through L2: other SMs wrote these in this launch
                    acc += tl.load(zrow + c * B * UNITS, mask=rmask[:, None], other=0.0, cache_modifier=".cg")
                if park:
                    tl.store(zrow, acc, mask=rmask[:, None])
                else:
                    share = _tile_share(acc, probe_ptr, head, units, umask, PROBE)
                    tl.store(shares + (head * TILE.N_H_TILES + pid_h) * B + rows, share, mask=rmask)
                tl.atomic_xchg(tickets + 1 + (head * TILE.N_H_TILES + pid_h) * tl.cdiv(B, TILE.BLOCK_B) + pid_b, 0)
    elif park:
        tl.store(zrow, acc, mask=rmask[:, None])
    else:
        share = _tile_share(acc, probe_ptr, head, units, umask, PROBE)
        tl.store(shares + (head * TILE.N_H_TILES + pid_h) * B + rows, share, mask=rmask)
    return arrives


@triton.jit
def _parked(zpark, head, rows, mask, units, umask, B, TILE: tl.constexpr):
    """A head's parked pre-activation z [R, U] for rows and units, summed over its Z_PARTS parts in order."""
    UNITS: tl.constexpr = TILE.N_H_TILES * TILE.BLOCK_H
    at = zpark + (head * TILE.N_SPLITS * B + rows[:, None]) * UNITS + units[None, :]
    m = mask[:, None] & umask[None, :]
    z = tl.load(at, mask=m, other=0.0, cache_modifier=".cg")  # .cg: written by other SMs in this launch
    for c in tl.static_range(1, TILE.Z_PARTS):
        z += tl.load(at + c * B * UNITS, mask=m, other=0.0, cache_modifier=".cg")
    return z


@triton.jit
def _update_memory(zpark, probe_ptr, sf_ptr, rows, rmask, opened, reads_thought, B,
                   L: tl.constexpr, PROBE: tl.constexpr, TILE: tl.constexpr):
    """The rows' new running maxima and counts [R, BK] (the reference's rule, grow_memory), also written to
    state.floats[MEMORY:].

    A block opening this step starts afresh; only a thought token read this step adds its features, the
    ready tiles' units H.. plus memory_b. Lanes past K or B come back 0, so they add nothing to the head.
    """
    ks = tl.arange(0, TILE.BLOCK_K)
    kmask = ks < PROBE.K
    mask = rmask[:, None] & kmask[None, :]  # [R, BK]
    at = (ks[None, :] + L.MEMORY) * B + rows[:, None]  # state.floats[MEMORY + k, row]
    memory = tl.load(sf_ptr + at, mask=mask, other=0.0)
    feats = _parked(zpark, 0, rows, rmask, PROBE.H + ks, kmask, B, TILE)
    feats = feats + tl.load(probe_ptr + PROBE.MB + ks, mask=kmask, other=0.0)[None, :]
    memory = tl.where(opened[:, None], L.NO_MEMORY, memory)
    # NaN wins, like torch.maximum (Triton's default keeps the other operand on the GPU)
    grown = tl.maximum(memory, feats, propagate_nan=tl.PropagateNan.ALL)
    if PROBE.COUNT:  # counting units add sigmoid(feature) (grow_memory)
        counts = tl.load(probe_ptr + PROBE.MS + ks, mask=kmask, other=0.0)[None, :] > 0.5
        grown = tl.where(counts, memory + tl.sigmoid(feats), grown)
    memory = tl.where(reads_thought[:, None], grown, memory)
    tl.store(sf_ptr + at, memory, mask=mask)
    return tl.where(mask, memory, 0.0)


@triton.jit
def _head_logit(probe_ptr, shares, zpark, memory, rows, mask, B, HEAD: tl.constexpr, PROBE: tl.constexpr,
                TILE: tl.constexpr):
    """sigmoid(logit) [R] of one head for the rows where mask holds (other rows: don't care).

    From the tile shares (one vector load) when the tiles finished the head; else from the parked z, finished
    here BLOCK_HM units at a time: the ready head of a probe with memory adds W1_m m (memory [R, BK]).
    """
    if HEAD == 0:
        N: tl.constexpr = PROBE.H
        B1: tl.constexpr = PROBE.RB1
        W2: tl.constexpr = PROBE.RW2
        B2: tl.constexpr = PROBE.RB2
    else:
        N: tl.constexpr = PROBE.HS
        B1: tl.constexpr = PROBE.SB1
        W2: tl.constexpr = PROBE.SW2
        B2: tl.constexpr = PROBE.SB2
    if (HEAD == 0 and PROBE.K > 0) or TILE.ONE_LEVEL:
        logit = tl.zeros([TILE.BLOCK_R], dtype=tl.float32)
        for j0 in range(0, N, TILE.BLOCK_HM):
            units = j0 + tl.arange(0, TILE.BLOCK_HM)  # [BHM]
            umask = units < N
            z = _parked(zpark, HEAD, rows, mask, units, umask, B, TILE)  # [R, BHM]
            if HEAD == 0 and PROBE.K > 0:
                ks = tl.arange(0, TILE.BLOCK_K)
                wm = tl.load(probe_ptr + PROBE.RW1 + units[:, None] * (PROBE.D + PROBE.K) + PROBE.D + ks[None, :],
                             mask=umask[:, None] & (ks < PROBE.K)[None, :], other=0.0)  # [BHM, BK]
                if TILE.BLOCK_R >= 16:
                    z = tl.dot(memory, tl.trans(wm), z, input_precision=TILE.DOT)
                else:  # too few rows for tl.dot
                    z += tl.sum(memory[:, None, :] * wm[None, :, :], axis=2)
            logit += _activate_reduce(z, probe_ptr + B1, probe_ptr + W2, units, umask, PROBE.RELU)
    else:
        ts = tl.arange(0, TILE.BLOCK_T)
        at = shares + (HEAD * TILE.N_H_TILES + ts[:, None]) * B + rows[None, :]  # [BT, R]
        part = tl.load(at, mask=(ts < TILE.N_H_TILES)[:, None] & mask[None, :], other=0.0, cache_modifier=".cg")
        logit = tl.sum(part, axis=0)
    return tl.sigmoid(logit + tl.load(probe_ptr + B2))


@triton.jit
def _guard_score(probe_ptr, shares, zpark, rows, mask, B, PROBE: tl.constexpr, TILE: tl.constexpr):
    """The guard's score [R] for the rows where mask holds: from the tile shares, or (one level) from the parked
    z of every chunk, summed here BLOCK_HM units at a time."""
    if TILE.ONE_LEVEL:
        total = tl.zeros([TILE.BLOCK_R], dtype=tl.float32)
        for j0 in range(0, PROBE.R + 1, TILE.BLOCK_HM):
            units = j0 + tl.arange(0, TILE.BLOCK_HM)
            umask = units < PROBE.R + 1
            z = _parked(zpark, 2, rows, mask, units, umask, B, TILE)
            total += _guard_reduce(z, probe_ptr + PROBE.GCOEF, units, umask, PROBE.R)
    else:
        ts = tl.arange(0, TILE.BLOCK_T)
        at = shares + (2 * TILE.N_H_TILES + ts[:, None]) * B + rows[None, :]  # [BT, R]
        part = tl.load(at, mask=(ts < TILE.N_H_TILES)[:, None] & mask[None, :], other=0.0, cache_modifier=".cg")
        total = tl.sum(part, axis=0)
    return total


@triton.jit
def _kmp_advance(match, tok, marker_ptr, fail_ptr, N: tl.constexpr, rmask):
    """[R] marker tokens matched after tok, from match (KMP; the steps of the reference's kmp_advance)."""
    k = tl.minimum(tl.maximum(match, 0), N - 1)  # a stored match is always < N
    for _ in tl.static_range(N - 1):  # each fallback shortens k, so N - 1 of them reach any needed length
        fall = (k > 0) & (tl.load(marker_ptr + k, mask=rmask, other=-1) != tok)
        k = tl.where(fall, tl.load(fail_ptr + tl.maximum(k - 1, 0), mask=rmask, other=0), k)
    return tl.where(tl.load(marker_ptr + k, mask=rmask, other=-1) == tok, k + 1, k)


# ---------------------------------------------------------------------------------------------- the state machine


@triton.jit
def _state_machine(hidden_ptr, tok_ptr, stride_t, probe_ptr, spec_ptr, st_ptr, sf_ptr, forced_ptr, pi_ptr, pf_ptr, force_ptr,
                   work_ptr, B, F, NG, L: tl.constexpr, SPEC: tl.constexpr, PROBE: tl.constexpr, TILE: tl.constexpr):
    """Steps 1 to 4 of the reference for every row, BLOCK_R rows at a time (step 2 from the heads' partials, or
    from the logit score [B] at hidden_ptr)."""
    _, shares, zpark = _regions(work_ptr, B, TILE)
    open_ids = (spec_ptr + SPEC.OPEN).to(tl.pointer_type(tl.int64), bitcast=True)
    open_fail = (spec_ptr + SPEC.OPEN_FAIL).to(tl.pointer_type(tl.int32), bitcast=True)
    close_ids = (spec_ptr + SPEC.CLOSE).to(tl.pointer_type(tl.int64), bitcast=True)
    close_fail = (spec_ptr + SPEC.CLOSE_FAIL).to(tl.pointer_type(tl.int32), bitcast=True)
    eos_ids = (spec_ptr + SPEC.EOS).to(tl.pointer_type(tl.int64), bitcast=True)
    for r0 in range(0, B, TILE.BLOCK_R):
        rows = r0 + tl.arange(0, TILE.BLOCK_R)  # [R]
        rmask = rows < B
        tok = tl.load(tok_ptr + rows * stride_t, mask=rmask, other=-1).to(tl.int64)
        phase = tl.load(st_ptr + L.PHASE * B + rows, mask=rmask, other=0)
        think_count = tl.load(st_ptr + L.THINK_COUNT * B + rows, mask=rmask, other=0)
        streak = tl.load(st_ptr + L.STREAK * B + rows, mask=rmask, other=0)
        cursor = tl.load(st_ptr + L.CURSOR * B + rows, mask=rmask, other=0)
        open_match = tl.load(st_ptr + L.OPEN_MATCH * B + rows, mask=rmask, other=0)
        close_match = tl.load(st_ptr + L.CLOSE_MATCH * B + rows, mask=rmask, other=0)
        ended_by = tl.load(st_ptr + L.ENDED_BY * B + rows, mask=rmask, other=0)
        decision_step = tl.load(st_ptr + L.DECISION_STEP * B + rows, mask=rmask, other=0)
        step = tl.load(st_ptr + L.STEP * B + rows, mask=rmask, other=0)
        blocks = tl.load(st_ptr + L.BLOCKS * B + rows, mask=rmask, other=0)
        guard = tl.load(st_ptr + L.GUARD * B + rows, mask=rmask, other=0)
        group = tl.load(st_ptr + L.GROUP * B + rows, mask=rmask, other=0)
        ema = tl.load(sf_ptr + L.EMA * B + rows, mask=rmask, other=0.0)
        guard_score = tl.load(sf_ptr + L.GUARD_SCORE * B + rows, mask=rmask, other=0.0)
        policy = tl.load(pi_ptr + L.POLICY * B + rows, mask=rmask, other=0)
        min_think = tl.load(pi_ptr + L.MIN_THINK * B + rows, mask=rmask, other=0)
        max_think = tl.load(pi_ptr + L.MAX_THINK * B + rows, mask=rmask, other=0)
        patience = tl.load(pi_ptr + L.PATIENCE * B + rows, mask=rmask, other=1)
        boundary_only = tl.load(pi_ptr + L.BOUNDARY_ONLY * B + rows, mask=rmask, other=0)
        skip_close = tl.load(pi_ptr + L.SKIP_CLOSE * B + rows, mask=rmask, other=0)
        skip_end = tl.load(pi_ptr + L.SKIP_END * B + rows, mask=rmask, other=0)
        stop_close = tl.load(pi_ptr + L.STOP_CLOSE * B + rows, mask=rmask, other=0)
        stop_end = tl.load(pi_ptr + L.STOP_END * B + rows, mask=rmask, other=0)
        threshold = tl.load(pf_ptr + L.THRESHOLD * B + rows, mask=rmask, other=2.0)
        skip_threshold = tl.load(pf_ptr + L.SKIP_THRESHOLD * B + rows, mask=rmask, other=2.0)
        alpha = tl.load(pf_ptr + L.ALPHA * B + rows, mask=rmask, other=1.0)
        guard_threshold = tl.load(pf_ptr + L.GUARD_THRESHOLD * B + rows, mask=rmask, other=float("inf"))
        fallback_threshold = tl.load(pf_ptr + L.FALLBACK_THRESHOLD * B + rows, mask=rmask, other=2.0)
        fallback_skip_threshold = tl.load(pf_ptr + L.FALLBACK_SKIP_THRESHOLD * B + rows, mask=rmask, other=2.0)
        # a row of route group g >= 1 (NG of them in the table) runs the table's pair; without a route all are 0
        in_table = rmask & (group > 0) & (group <= NG)
        at = (L.GROUPS + 2 * (group - 1)).to(tl.int64) * B + rows
        threshold = tl.where(in_table, tl.load(pf_ptr + at, mask=in_table, other=2.0), threshold)
        skip_threshold = tl.where(in_table, tl.load(pf_ptr + at + B, mask=in_table, other=2.0), skip_threshold)
        first = step == 0
        obs = step != 0

        # 1. observe the row's last token (not at its step 0): the reference's `observe`
        is_eos = tok != tok  # all False
        for i in tl.static_range(SPEC.N_EOS):
            is_eos = is_eos | (tok == tl.load(eos_ids + i))
        is_eos = is_eos & obs

        closing = obs & (phase == L.CLOSING)
        # forced stop-text tokens are thinking tokens; skip-segment tokens are not
        in_stop_text = closing & (cursor >= skip_end) & (cursor < stop_close)
        cursor = tl.where(closing, cursor + 1, cursor)
        end = tl.where(ended_by == L.ENDED_SKIPPED, skip_end, stop_end)
        phase_new = tl.where(closing & (cursor >= end), L.ANSWERING, phase)

        watching = obs & ((phase == L.PROMPT) | (phase == L.ANSWERING))
        open_match = tl.where(watching, _kmp_advance(open_match, tok, open_ids, open_fail, SPEC.LO, rmask), open_match)
        opened = watching & (open_match >= SPEC.LO)
        phase_new = tl.where(opened, L.THINKING, phase_new)
        open_match = tl.where(opened, 0, open_match)
        blocks = tl.where(opened, blocks + 1, blocks)
        # each block starts like the first: no decision yet, fresh smoothing and patience
        ended_by = tl.where(opened, L.ENDED_NONE, ended_by)
        decision_step = tl.where(opened, -1, decision_step)
        streak = tl.where(opened, 0, streak)
        ema = tl.where(opened, 0.0, ema)

        thinking = obs & (phase == L.THINKING)
        think_count = tl.where((thinking & (is_eos == 0)) | in_stop_text, think_count + 1, think_count)
        close_match = tl.where(thinking, _kmp_advance(close_match, tok, close_ids, close_fail, SPEC.LC, rmask),
                               close_match)
        closed = thinking & (close_match >= SPEC.LC)
        # the close marker's own tokens were counted above; they are not thinking tokens
        think_count = tl.where(closed, think_count - SPEC.LC, think_count)
        phase_new = tl.where(closed, L.ANSWERING, phase_new)
        close_match = tl.where(closed, 0, close_match)
        ended_by = tl.where(closed, L.ENDED_NATURAL, ended_by)
        decision_step = tl.where(closed, step - 1, decision_step)
        phase_new = tl.where(is_eos, L.DONE, phase_new)
        seen = phase_new  # the phase after observing

        # 2. scores (probe rows only; NaN elsewhere)
        is_probe = policy == L.POLICY_PROBE
        nan = tl.full([TILE.BLOCK_R], float("nan"), tl.float32)
        if PROBE.D > 0:
            if PROBE.K > 0:
                # every row keeps its maxima, whatever its policy
                reads_thought = (seen == L.THINKING) & (opened == 0) & (first == 0)
                memory = _update_memory(zpark, probe_ptr, sf_ptr, rows, rmask, opened, reads_thought, B, L, PROBE, TILE)
            else:
                memory = tl.zeros([TILE.BLOCK_R, TILE.BLOCK_K], dtype=tl.float32)  # unread
            ready = tl.where(is_probe, _head_logit(probe_ptr, shares, zpark, memory, rows, rmask, B, 0, PROBE, TILE), nan)
            # the skip head is read at a row's step 0 alone
            skip = nan
            if tl.sum((first & rmask).to(tl.int32), axis=0) > 0:
                skip = _head_logit(probe_ptr, shares, zpark, memory, rows, rmask & first, B, 1, PROBE, TILE)
            skip = tl.where(is_probe, skip, nan)
            g = nan
            if PROBE.GUARD:  # read at a row's step 0 alone, like the skip head
                if tl.sum((first & rmask).to(tl.int32), axis=0) > 0:
                    g = _guard_score(probe_ptr, shares, zpark, rows, rmask & first, B, PROBE, TILE)
                g = tl.where(is_probe, g, nan)
        elif PROBE.SCORE > 0:
            ready = tl.where(is_probe, tl.load(hidden_ptr + rows, mask=rmask, other=0.0), nan)
            if PROBE.SCORE == 2:
                skip = ready
            else:
                skip = nan
            g = nan
        else:
            ready = nan
            skip = nan
            g = nan
        score = tl.where(first, skip, ready)

        # 3. decide
        open_row = (seen == L.PROMPT) | (seen == L.THINKING)
        # the guard reads the prompt's end only; a flagged row keeps its fallback thresholds for the whole request
        flagged = first & open_row & is_probe & (g > guard_threshold)  # NaN never flags
        guarded = (guard != 0) | flagged
        threshold = tl.where(guarded, fallback_threshold, threshold)
        skip_threshold = tl.where(guarded, fallback_skip_threshold, skip_threshold)
        wants_skip = (is_probe & (skip >= skip_threshold)) | (policy == L.POLICY_NONE)  # NaN never skips
        do_skip = (first & open_row & wants_skip) | (opened & (policy == L.POLICY_NONE))

        in_thought = (seen == L.THINKING) & (do_skip == 0)
        valid = ready == ready
        ema = tl.where(in_thought & valid, alpha * ready + (1.0 - alpha) * ema, ema)
        over = in_thought & (think_count >= min_think) & valid & (ema >= threshold)  # NaN compares False
        bidx = tl.minimum(tl.maximum(tok, 0), SPEC.V - 1)
        at_boundary = (tl.load(spec_ptr + SPEC.BOUNDARY + bidx, mask=rmask, other=0) != 0) & obs
        # a row that stops only at boundaries counts its patience in reasoning steps: tokens between them don't count
        counted = in_thought & ((boundary_only == 0) | at_boundary)
        streak = tl.where(counted & over, streak + 1, tl.where(counted, 0, streak))

        stop_len = stop_close - skip_end
        over_budget = in_thought & (think_count >= max_think - stop_len)  # room is kept for the stop text
        # `over` keeps a stop from bypassing min_think / threshold when patience < 1
        probe_stop = is_probe & in_thought & (over_budget == 0) & over & (streak >= patience)
        probe_stop = probe_stop & ((boundary_only == 0) | at_boundary)
        close_now = over_budget | probe_stop
        decided = do_skip | close_now

        phase = tl.where(decided, L.CLOSING, seen)
        # a row skipped from PROMPT opens the block itself (a new block); one already inside starts at the close
        blocks = tl.where(do_skip & (seen == L.PROMPT), blocks + 1, blocks)
        cursor = tl.where(do_skip, tl.where(seen == L.PROMPT, 0, skip_close), cursor)
        # a stop writes the stop text when it fits the budget; a close marker the model has begun is completed
        fits = think_count <= max_think - stop_len
        stop_from = tl.where(close_match > 0, stop_close + close_match, tl.where(fits, skip_end, stop_close))
        cursor = tl.where(close_now, stop_from, cursor)
        think_count = tl.where(close_now, think_count - close_match, think_count)
        ended_by = tl.where(do_skip, L.ENDED_SKIPPED, ended_by)
        ended_by = tl.where(over_budget, L.ENDED_BUDGET, ended_by)
        ended_by = tl.where(probe_stop, L.ENDED_PROBE, ended_by)
        decision_step = tl.where(decided, step, decision_step)
        close_match = tl.where(close_now, 0, close_match)

        # 4. the token to force
        at = tl.minimum(tl.maximum(cursor, 0), F - 1)
        forced = tl.load(force_ptr + rows.to(tl.int64) * F + at, mask=rmask & (phase == L.CLOSING), other=-1)

        tl.store(st_ptr + L.PHASE * B + rows, phase, mask=rmask)
        tl.store(st_ptr + L.THINK_COUNT * B + rows, think_count, mask=rmask)
        tl.store(st_ptr + L.STREAK * B + rows, streak, mask=rmask)
        tl.store(st_ptr + L.CURSOR * B + rows, cursor, mask=rmask)
        tl.store(st_ptr + L.OPEN_MATCH * B + rows, open_match, mask=rmask)
        tl.store(st_ptr + L.CLOSE_MATCH * B + rows, close_match, mask=rmask)
        tl.store(st_ptr + L.ENDED_BY * B + rows, ended_by, mask=rmask)
        tl.store(st_ptr + L.DECISION_STEP * B + rows, decision_step, mask=rmask)
        tl.store(st_ptr + L.STEP * B + rows, step + 1, mask=rmask)
        tl.store(st_ptr + L.BLOCKS * B + rows, blocks, mask=rmask)
        tl.store(st_ptr + L.GUARD * B + rows, guarded.to(tl.int32), mask=rmask)
        tl.store(sf_ptr + L.EMA * B + rows, ema, mask=rmask)
        tl.store(sf_ptr + L.GUARD_SCORE * B + rows, tl.where(first, g, guard_score), mask=rmask)
        tl.store(sf_ptr + L.SCORE * B + rows, score, mask=rmask)
        tl.store(forced_ptr + rows, forced.to(tl.int64), mask=rmask)


@triton.jit
def _controller_step_kernel(hidden_ptr, stride_h, tok_ptr, stride_t, probe_ptr, spec_ptr, st_ptr, sf_ptr, forced_ptr,
                            pi_ptr, pf_ptr, force_ptr, work_ptr, B, F, NG, L: tl.constexpr, SPEC: tl.constexpr,
                            PROBE: tl.constexpr, TILE: tl.constexpr, STAGE: tl.constexpr):
    """STAGE 0: heads and state machine in one launch (the last program to arrive runs the machine);
    1: the heads only (partials to the workspace); 2: the state machine alone (also: no probe)."""
    if STAGE == 2 or PROBE.D == 0:
        _state_machine(hidden_ptr, tok_ptr, stride_t, probe_ptr, spec_ptr, st_ptr, sf_ptr, forced_ptr, pi_ptr, pf_ptr,
                       force_ptr, work_ptr, B, F, NG, L, SPEC, PROBE, TILE)
    else:
        tickets, shares, zpark = _regions(work_ptr, B, TILE)
        n_b_tiles = tl.num_programs(1) // TILE.N_SPLITS
        pid_h = tl.program_id(0)
        pid_b = tl.program_id(1) % n_b_tiles
        pid_d = tl.program_id(1) // n_b_tiles
        head = tl.program_id(2)
        # read before any ticket: the state machine, after every ticket, advances the steps
        tile_rows = pid_b * TILE.BLOCK_B + tl.arange(0, TILE.BLOCK_B)
        tile_steps = tl.load(st_ptr + L.STEP * B + tile_rows, mask=tile_rows < B, other=1)
        n_first = tl.sum((tile_steps == 0).to(tl.int32), axis=0)
        if (head == 0) | (n_first > 0):  # the skip head is only read at a row's step 0
            arrives = _head_tile(hidden_ptr, stride_h, probe_ptr, tickets, shares, zpark, B, pid_h, pid_b, pid_d,
                                 head, PROBE, TILE)
        else:  # an idle skip tile: one program stands for the tile at the launch's ticket (every one with one level)
            arrives = (pid_d == 0) | TILE.ONE_LEVEL
        if STAGE == 0:
            n_arrivals = tl.num_programs(0) * tl.num_programs(2) * n_b_tiles
            if TILE.ONE_LEVEL:
                n_arrivals = n_arrivals * TILE.N_SPLITS
            # every thread's stores precede the ticket (release); the last ticket acquires them all
            tl.debug_barrier()
            ticket = tl.atomic_add(tickets, 1, mask=arrives, sem="acq_rel")
            if arrives & (ticket == n_arrivals - 1):
                _state_machine(hidden_ptr, tok_ptr, stride_t, probe_ptr, spec_ptr, st_ptr, sf_ptr, forced_ptr, pi_ptr, pf_ptr,
                               force_ptr, work_ptr, B, F, NG, L, SPEC, PROBE, TILE)
                tl.atomic_xchg(tickets, 0)  # ready for the next launch / graph replay


def launch(hidden: torch.Tensor | None, last_token: torch.Tensor, probe: torch.Tensor, probe_layout: ProbeLayout,
           spec: torch.Tensor, spec_layout: SpecLayout, state: tuple, params: tuple, workspace: torch.Tensor,
           layout: Layout, t: Tiling, split: bool = False) -> None:
    """Launch the step (one launch; two with `split`). state: (ints, floats, forced); params: (ints, floats, force).

    hidden [B, D] with unit stride along D (None: no probe); with `probe_layout.SCORE` it is the logit score [B]
    fp32 instead (contiguous). The host side has checked every shape.
    """
    batch = state[0].shape[1]
    use_probe = probe_layout.D > 0
    if use_probe:
        grid = (t.N_H_TILES, t.N_SPLITS * triton.cdiv(batch, t.BLOCK_B), t.N_HEADS)
        hargs = (hidden, hidden.stride(0))
    elif probe_layout.SCORE > 0:
        grid = (1, 1, 1)
        hargs = (hidden, 1)
    else:
        grid = (1, 1, 1)
        hargs = (state[1], 0)  # never read
    n_groups = (params[1].shape[0] - layout.GROUPS) // 2  # route groups in the table (G - 1; 0: none)
    args = (*hargs, last_token, last_token.stride(0), probe, spec, *state, *params, workspace, batch,
            params[2].shape[1], n_groups)
    stages = ((1, grid), (2, (1, 1, 1))) if (split and use_probe) else ((0, grid),)
    for stage, stage_grid in stages:
        _controller_step_kernel[stage_grid](*args, L=layout, SPEC=spec_layout, PROBE=probe_layout, TILE=t,
                                            STAGE=stage, num_warps=4)
