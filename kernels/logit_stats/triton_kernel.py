"""Triton kernel of logit_stats: max logit, log-sum-exp, entropy and top-1/top-2 margin in one pass.

Semantics (including -inf / NaN / +inf rows): `naive.logit_stats_reference`; tests compare the two.
Run on CPU through Triton's interpreter with `TRITON_INTERPRET=1` set before triton is imported.

Design: a decode batch (e.g. 32 rows) is far too few programs to fill 132 SMs, so the vocabulary of each
row is split into N_SPLITS chunks: grid = (B, N_SPLITS). Each program streams its chunk once, keeping
per-lane online accumulators against a running scalar max m (one exp per element):
  s = sum exp(x - m),  u = sum exp(x - m) * (x - m),  per-lane top-2 (a1 >= a2),
so that lse = m + log s and entropy = log s - u / s. A NaN or +inf anywhere turns s into NaN, which is
how bad rows are detected without a per-element flag. The partials (m, s, u, top1, top2) go to a
workspace; the last program of each row (atomic ticket, reset by that program) combines them in a fixed
order, so the result is deterministic and there is a single launch (no separate combine kernel).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from adaptive_think.kernels.logit_stats.naive import LogitStats

_N_PARTS = 5  # m, s, u, top1, top2


@triton.jit
def _finish(m, s, u, t1, t2, row, max_ptr, lse_ptr, ent_ptr, margin_ptr):
    bad = s != s  # NaN or +inf somewhere in the row
    nan = float("nan")
    log_s = tl.log(s)
    tl.store(max_ptr + row, tl.where(bad, nan, t1))
    tl.store(lse_ptr + row, tl.where(bad, nan, m + log_s))
    tl.store(ent_ptr + row, tl.where(bad, nan, log_s - u / s))  # all-masked row: log 0 - 0/0 = NaN
    tl.store(margin_ptr + row, tl.where(bad, nan, t1 - t2))


@triton.jit
def _top2(a1, a2, lanes, BLOCK: tl.constexpr):
    """Top-2 over lanes holding their own top-2 (a1 >= a2): drop one occurrence of the maximum."""
    t1 = tl.max(a1, axis=0)
    first = tl.min(tl.where(a1 == t1, lanes, BLOCK), axis=0)
    t2 = tl.max(tl.where(lanes == first, a2, a1), axis=0)
    return t1, t2


@triton.jit
def _logit_stats_kernel(
    x_ptr, stride_b, stride_v, part_ptr, count_ptr, max_ptr, lse_ptr, ent_ptr, margin_ptr,
    B, V, CHUNK,
    N_SPLITS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    lanes = tl.arange(0, BLOCK_V)  # [BV]
    neg_inf = float("-inf")
    m = tl.full([], neg_inf, tl.float32)
    s_vec = tl.zeros([BLOCK_V], dtype=tl.float32)
    u_vec = tl.zeros([BLOCK_V], dtype=tl.float32)
    a1 = tl.full([BLOCK_V], neg_inf, tl.float32)
    a2 = tl.full([BLOCK_V], neg_inf, tl.float32)
    row_ptr = x_ptr + row.to(tl.int64) * stride_b
    start = split * CHUNK
    for v0 in range(0, CHUNK, BLOCK_V):  # CHUNK is a multiple of BLOCK_V
        idx = start + v0 + lanes
        x = tl.load(row_ptr + idx * stride_v, mask=idx < V, other=neg_inf).to(tl.float32)  # [BV]
        m_new = tl.maximum(m, tl.max(x, axis=0))
        delta = tl.where(m > neg_inf, m - m_new, 0.0)  # rescale of the old sums; 0 while all were -inf
        scale = tl.exp(delta)
        d = x - tl.where(m_new > neg_inf, m_new, 0.0)
        e = tl.exp(d)
        u_vec = scale * (u_vec + delta * s_vec) + tl.where(e > 0.0, e * d, 0.0)  # e * (-inf) would be NaN
        s_vec = scale * s_vec + e
        a2 = tl.maximum(a2, tl.minimum(a1, x))
        a1 = tl.maximum(a1, x)
        m = m_new
    s = tl.sum(s_vec, axis=0)
    u = tl.sum(u_vec, axis=0)
    t1, t2 = _top2(a1, a2, lanes, BLOCK_V)
    if N_SPLITS == 1:
        _finish(m, s, u, t1, t2, row, max_ptr, lse_ptr, ent_ptr, margin_ptr)
    else:
        n = B * N_SPLITS
        slot = row * N_SPLITS + split
        tl.store(part_ptr + slot, m)
        tl.store(part_ptr + n + slot, s)
        tl.store(part_ptr + 2 * n + slot, u)
        tl.store(part_ptr + 3 * n + slot, t1)
        tl.store(part_ptr + 4 * n + slot, t2)
        tl.debug_barrier()
        ticket = tl.atomic_add(count_ptr + row, 1, sem="acq_rel")  # release the partials, acquire the others'
        if ticket == N_SPLITS - 1:
            ss = tl.arange(0, BLOCK_S)  # [BS]
            smask = ss < N_SPLITS
            base = part_ptr + row * N_SPLITS + ss
            # .cg reads through L2: the partials were written by other SMs in this launch
            mi = tl.load(base, mask=smask, other=neg_inf, cache_modifier=".cg")
            si = tl.load(base + n, mask=smask, other=0.0, cache_modifier=".cg")
            ui = tl.load(base + 2 * n, mask=smask, other=0.0, cache_modifier=".cg")
            t1i = tl.load(base + 3 * n, mask=smask, other=neg_inf, cache_modifier=".cg")
            t2i = tl.load(base + 4 * n, mask=smask, other=neg_inf, cache_modifier=".cg")
            m = tl.max(mi, axis=0)
            delta = tl.where(mi > neg_inf, mi - m, 0.0)  # [BS]
            sc = tl.exp(delta)
            s = tl.sum(sc * si, axis=0)
            u = tl.sum(sc * (ui + delta * si), axis=0)
            t1, t2 = _top2(t1i, t2i, ss, BLOCK_S)
            _finish(m, s, u, t1, t2, row, max_ptr, lse_ptr, ent_ptr, margin_ptr)
            tl.atomic_xchg(count_ptr + row, 0)  # ready for the next launch / graph replay


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


# (partials [5, B, S] fp32, tickets [B] int32) per (device, stream, B, S); tickets start and end at 0
_WORKSPACES: dict = {}


def _workspace(device: torch.device, batch: int, n_splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None
    key = (str(device), stream, batch, n_splits)
    ws = _WORKSPACES.get(key)
    if ws is None:
        ws = (torch.empty(_N_PARTS, batch, n_splits, dtype=torch.float32, device=device),
              torch.zeros(batch, dtype=torch.int32, device=device))
        _WORKSPACES[key] = ws
    return ws


def _plan(batch: int, vocab: int, device: torch.device, block_v: int | None, n_splits: int | None) -> tuple[int, int, int]:
    """(BLOCK_V, CHUNK, N_SPLITS): enough programs to fill the GPU, each chunk a whole number of blocks."""
    if block_v is None:
        block_v = 2048 if device.type == "cuda" else 1024
    block_v = max(16, min(block_v, triton.next_power_of_2(vocab)))
    if n_splits is None:
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else 4
        # ~8 programs per SM: enough loads in flight to cover HBM latency (each program streams a few blocks)
        n_splits = max(1, min(triton.cdiv(8 * sms, batch), triton.cdiv(vocab, block_v), 256))
    chunk = triton.cdiv(triton.cdiv(vocab, n_splits), block_v) * block_v
    return block_v, chunk, triton.cdiv(vocab, chunk)  # no empty trailing split


def logit_stats_triton(logits: torch.Tensor, block_v: int | None = None, n_splits: int | None = None) -> LogitStats:
    """LogitStats of logits [B, V] (bf16/fp16/fp32, any strides) in one Triton launch; outputs [B] fp32.

    block_v / n_splits override the launch plan (tests use them to exercise the split-and-combine path).
    """
    if logits.dim() != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"logit_stats_triton: logits must be [B, V] with B, V >= 1, got {tuple(logits.shape)}")
    if logits.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"logit_stats_triton: logits must be bf16/fp16/fp32, got {logits.dtype}")
    if n_splits is not None and n_splits < 1:
        raise ValueError(f"logit_stats_triton: n_splits must be >= 1, got {n_splits}")
    batch, vocab = logits.shape
    device = logits.device
    block_v, chunk, splits = _plan(batch, vocab, device, block_v, n_splits)
    part, tickets = _workspace(device, batch, splits)
    out = torch.empty(4, batch, dtype=torch.float32, device=device)  # [4, B]
    _logit_stats_kernel[(batch, splits)](
        logits, logits.stride(0), logits.stride(1), part, tickets, out[0], out[1], out[2], out[3],
        batch, vocab, chunk,
        N_SPLITS=splits, BLOCK_V=block_v, BLOCK_S=triton.next_power_of_2(splits),
        num_warps=4,
    )
    return LogitStats(out[0], out[1], out[2], out[3])
