"""The host side of the fused controller-step kernel: its packed buffers, their layouts, and the input checks.

The kernel (kernels/controller_step/triton_kernel.py) reads three packed buffers, each with a layout passed as
a constexpr tuple:
- the probe's weights in one fp32 buffer (`packed_probe`); the probe's fields become views of that buffer,
  so an in-place update of a field (an engine copying a new probe into its captured one) is what the next
  launch or graph replay reads;
- the spec's markers, failure links, eos ids and boundary mask in one byte buffer (`packed_spec`), its fields
  views of it likewise;
- a workspace (tickets and partials) in one fp32 buffer, kept on the state object (`_workspace`).
State and params are already packed (`ControllerState`, `RowParams`); `LAYOUT` names their rows.

`controller_step_triton` checks the inputs, packs and launches; `adaptive_think.controller.dispatch` picks it
on CUDA. Triton is imported only when a step is launched.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch

from adaptive_think.controller import params as P
from adaptive_think.controller import state as S
from adaptive_think.controller.params import RowParams
from adaptive_think.controller.state import ControllerSpec, ControllerState, ProbeTensors
from adaptive_think.controller.step import route_rows

PROBE_FIELDS = ("mean", "inv_std", "ready_w1", "ready_b1", "ready_w2", "ready_b2", "skip_w1", "skip_b1", "skip_w2",
                "skip_b2")
MEMORY_FIELDS = ("memory_w", "memory_b")
GUARD_FIELDS = ("guard_mean", "guard_dirs", "guard_coef")
_SPEC_FIELDS = ("open_ids", "open_fail", "close_ids", "close_fail", "eos_ids", "is_boundary")

# the packed buffers hang off the objects themselves: a dict keyed by a tensor compares keys with `==`, a host
# sync that is illegal inside CUDA-graph capture
_PACKED_ATTR = "_controller_step_packed"
_WORKSPACE_ATTR = "_controller_step_workspace"
_ALIGN = 32  # every segment starts on a 128-byte boundary (fp32) / an 8-byte one (bytes)


@lru_cache(maxsize=1)
def layout():
    """The state and params rows and the codes, as the kernel's `Layout`."""
    from adaptive_think.kernels.controller_step.triton_kernel import Layout

    return Layout(
        PHASE=S.S_PHASE, THINK_COUNT=S.S_THINK_COUNT, STREAK=S.S_STREAK, CURSOR=S.S_CURSOR,
        OPEN_MATCH=S.S_OPEN_MATCH, CLOSE_MATCH=S.S_CLOSE_MATCH, ENDED_BY=S.S_ENDED_BY,
        DECISION_STEP=S.S_DECISION_STEP, STEP=S.S_STEP, BLOCKS=S.S_BLOCKS, GUARD=S.S_GUARD, GROUP=S.S_GROUP,
        EMA=S.S_EMA, SCORE=S.S_SCORE, GUARD_SCORE=S.S_GUARD_SCORE, MEMORY=S.NS_FLOAT,
        POLICY=P.P_POLICY, MIN_THINK=P.P_MIN_THINK, MAX_THINK=P.P_MAX_THINK, PATIENCE=P.P_PATIENCE,
        BOUNDARY_ONLY=P.P_BOUNDARY_ONLY, SKIP_CLOSE=P.P_SKIP_CLOSE, SKIP_END=P.P_SKIP_END,
        STOP_CLOSE=P.P_STOP_CLOSE, STOP_END=P.P_STOP_END,
        THRESHOLD=P.P_THRESHOLD, SKIP_THRESHOLD=P.P_SKIP_THRESHOLD, ALPHA=P.P_ALPHA,
        GUARD_THRESHOLD=P.P_GUARD_THRESHOLD, FALLBACK_THRESHOLD=P.P_FALLBACK_THRESHOLD,
        FALLBACK_SKIP_THRESHOLD=P.P_FALLBACK_SKIP_THRESHOLD, GROUPS=P.P_GROUPS,
        PROMPT=S.PROMPT, THINKING=S.THINKING, CLOSING=S.CLOSING, ANSWERING=S.ANSWERING, DONE=S.DONE,
        ENDED_NONE=S.ENDED_NONE, ENDED_NATURAL=S.ENDED_NATURAL, ENDED_BUDGET=S.ENDED_BUDGET,
        ENDED_PROBE=S.ENDED_PROBE, ENDED_SKIPPED=S.ENDED_SKIPPED,
        POLICY_NONE=S.POLICY_NONE, POLICY_PROBE=S.POLICY_PROBE, NO_MEMORY=S.NO_MEMORY,
    )


class _Packed(NamedTuple):
    """A packed buffer, its layout, and the views it handed out (a field replaced since needs a new pack)."""

    buffer: torch.Tensor
    layout: tuple
    views: tuple


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _rebind(obj, names: tuple[str, ...], dtype_of, align: int, buffer_dtype) -> tuple[torch.Tensor, dict[str, int]]:
    """Copy obj's tensor fields `names` into one new buffer and make each field a view of it.

    Returns the buffer and each field's offset in elements of buffer_dtype (each a multiple of `align`)."""
    tensors = [getattr(obj, n) for n in names]
    sizes = [t.numel() * torch.empty((), dtype=dtype_of(t)).element_size() // torch.empty((), dtype=buffer_dtype)
             .element_size() for t in tensors]
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += _round_up(size, align)
    # made outside inference mode: engines copy new weights into these views in place in later calls
    with torch.inference_mode(False), torch.no_grad():
        buffer = torch.zeros(max(total, 1), dtype=buffer_dtype, device=tensors[0].device)
        for name, t, off, size in zip(names, tensors, offsets, sizes):
            view = buffer[off:off + size].view(dtype_of(t)).view(t.shape)
            view.copy_(t)
            setattr(obj, name, view)
    return buffer, dict(zip(names, offsets))


def _cached(obj, names):
    packed = getattr(obj, _PACKED_ATTR, None)
    if packed is not None and len(names) == len(packed.views) and all(getattr(obj, n) is v for n, v in
                                                                      zip(names, packed.views)):
        return packed
    return None


def packed_probe(probe: ProbeTensors):
    """(fp32 buffer, ProbeLayout) of a probe; packed once, its fields views of the buffer from then on."""
    from adaptive_think.kernels.controller_step.triton_kernel import ProbeLayout

    has_guard = probe.guard_dirs is not None
    counts = probe.memory_sum is not None
    names = (PROBE_FIELDS + (MEMORY_FIELDS if probe.memory_w is not None else ()) + (("memory_sum",) if counts else ())
             + (GUARD_FIELDS if has_guard else ()))
    packed = _cached(probe, names)
    if packed is None:
        buffer, off = _rebind(probe, names, lambda t: torch.float32, _ALIGN, torch.float32)
        k = probe.memory_size
        lay = ProbeLayout(D=probe.hidden_size, H=probe.ready_w1.shape[0], HS=probe.skip_w1.shape[0], K=k,
                          RELU=bool(probe.relu), MEAN=off["mean"], INV_STD=off["inv_std"], RW1=off["ready_w1"],
                          RB1=off["ready_b1"], RW2=off["ready_w2"], RB2=off["ready_b2"], SW1=off["skip_w1"],
                          SB1=off["skip_b1"], SW2=off["skip_w2"], SB2=off["skip_b2"], MW=off.get("memory_w", 0),
                          MB=off.get("memory_b", 0), GUARD=has_guard, R=probe.guard_rank or 0,
                          GMEAN=off.get("guard_mean", 0), GDIRS=off.get("guard_dirs", 0), GCOEF=off.get("guard_coef", 0),
                          COUNT=counts, MS=off.get("memory_sum", 0))
        packed = _Packed(buffer, lay, tuple(getattr(probe, n) for n in names))
        setattr(probe, _PACKED_ATTR, packed)
    elif packed.layout.RELU != bool(probe.relu):
        packed = packed._replace(layout=packed.layout._replace(RELU=bool(probe.relu)))
        setattr(probe, _PACKED_ATTR, packed)
    return packed.buffer, packed.layout


def packed_spec(spec: ControllerSpec):
    """(uint8 buffer, SpecLayout) of a spec's markers, failure links, eos ids and boundary mask; its fields
    are views of the buffer from then on."""
    from adaptive_think.kernels.controller_step.triton_kernel import SpecLayout

    packed = _cached(spec, _SPEC_FIELDS)
    if packed is None:
        buffer, off = _rebind(spec, _SPEC_FIELDS, lambda t: t.dtype, 8, torch.uint8)
        lay = SpecLayout(LO=spec.open_ids.numel(), LC=spec.close_ids.numel(), N_EOS=spec.eos_ids.numel(),
                         V=spec.is_boundary.numel(), OPEN=off["open_ids"], OPEN_FAIL=off["open_fail"],
                         CLOSE=off["close_ids"], CLOSE_FAIL=off["close_fail"], EOS=off["eos_ids"],
                         BOUNDARY=off["is_boundary"])
        packed = _Packed(buffer, lay, tuple(getattr(spec, n) for n in _SPEC_FIELDS))
        setattr(spec, _PACKED_ATTR, packed)
    return packed.buffer, packed.layout


class Workspace(NamedTuple):
    """One state's scratch: `buffer` fp32, whose first `tickets` words are int32 counters left at 0 by every launch."""

    buffer: torch.Tensor
    tickets: torch.Tensor  # [n] int32 view
    partials: torch.Tensor  # the rest, fp32 view


def _workspace(state: ControllerState, size: int, n_tickets: int) -> Workspace:
    ws = getattr(state, _WORKSPACE_ATTR, None)
    device = state.ints.device
    if ws is None or ws.buffer.numel() != size or ws.tickets.numel() != n_tickets or ws.buffer.device != device:
        with torch.inference_mode(False):
            buffer = torch.zeros(size, dtype=torch.float32, device=device)  # zero bits: tickets at 0
        ws = Workspace(buffer, buffer[:n_tickets].view(torch.int32), buffer[n_tickets:])
        setattr(state, _WORKSPACE_ATTR, ws)
    return ws


def check_inputs(hidden, last_token, state: ControllerState, params: RowParams, spec: ControllerSpec,
                 use_probe: bool) -> None:
    """Raise ValueError saying which buffer is wrong (dtype, shape, device, contiguity) and how to make it right."""
    device = state.ints.device
    batch = state.batch_size
    k = spec.probe.memory_size if spec.probe is not None else 0

    def need(ok, msg):
        if not ok:
            raise ValueError(f"controller_step_triton: {msg}")

    def buffer(name, t, dtype, shape):
        need(torch.is_tensor(t) and t.dtype == dtype and tuple(t.shape) == shape and t.device == device
             and t.is_contiguous(),
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
    # rows P_GROUPS.. hold the route groups' (ready, skip) pairs: NP_FLOAT + 2 (G - 1) rows in all
    n_pf = params.floats.shape[0] if params.floats.dim() == 2 else P.NP_FLOAT
    need(n_pf >= P.NP_FLOAT and (n_pf - P.NP_FLOAT) % 2 == 0,
         f"params.floats must be [NP_FLOAT + 2 (G - 1), B] = [{P.NP_FLOAT} + 2k, {batch}] (k: route groups beyond "
         f"group 0), got {tuple(params.floats.shape)}; pack it with RowParams.pack(..., groups=G)")
    buffer("params.floats", params.floats, torch.float32, (n_pf, batch))
    need(params.force.dim() == 2 and params.force.shape[1] >= 1, "params.force must be [B, F] with F >= 1")
    buffer("params.force", params.force, torch.int64, (batch, params.force.shape[1]))
    need(last_token.dim() == 1 and last_token.shape[0] == batch and last_token.dtype in (torch.int32, torch.int64)
         and last_token.device == device, f"last_token must be int32/int64 [{batch}] on {device}, got "
         f"{last_token.dtype} {tuple(last_token.shape)} on {last_token.device}")
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
    need(hidden.dtype in (torch.bfloat16, torch.float16, torch.float32),
         f"hidden must be bf16/fp16/fp32, got {hidden.dtype}")
    need(hidden.device == device, f"hidden is on {hidden.device}, state on {device}")
    need((p.memory_w is None) == (p.memory_b is None),
         "a probe with memory needs both memory_w [K, D] and memory_b [K]")
    for name in PROBE_FIELDS + (MEMORY_FIELDS if k else ()):
        t = getattr(p, name)
        need(t.dtype == torch.float32 and t.device == device and t.is_contiguous(),
             f"probe.{name} must be a contiguous fp32 tensor on {device} (use ProbeTensors.to(device))")
    for head in ("ready", "skip"):
        w1, b1, w2, b2 = (getattr(p, f"{head}_{part}") for part in ("w1", "b1", "w2", "b2"))
        h = w1.shape[0]
        d_in = d + k if head == "ready" else d  # a ready head with memory reads [x, memory]
        need(w1.shape == (h, d_in) and b1.shape == (h,) and w2.shape == (h,) and b2.numel() == 1
             and p.inv_std.shape == (d,),
             f"probe {head} head shapes: w1 [H, {d_in}], b1 [H], w2 [H], b2 [1]; got {tuple(w1.shape)}, "
             f"{tuple(b1.shape)}, {tuple(w2.shape)}, {tuple(b2.shape)}")
    if k:
        need(p.memory_w.shape == (k, d) and p.memory_b.shape == (k,), f"probe memory shapes: memory_w [K, {d}], "
             f"memory_b [K]; got {tuple(p.memory_w.shape)}, {tuple(p.memory_b.shape)}")
    if p.memory_sum is not None:
        need(k > 0 and p.memory_sum.shape == (k,) and p.memory_sum.dtype == torch.float32
             and p.memory_sum.device == device and p.memory_sum.is_contiguous(),
             f"probe.memory_sum must be a contiguous fp32 [K] = [{k}] tensor on {device} beside memory_w")
    guard = [getattr(p, n) for n in GUARD_FIELDS]
    need(all(t is None for t in guard) or all(t is not None for t in guard),
         "a probe's guard needs all of guard_mean [D], guard_dirs [R, D] and guard_coef [R + 1]")
    if p.guard_dirs is not None:
        r = p.guard_rank
        for name in GUARD_FIELDS:
            t = getattr(p, name)
            need(t.dtype == torch.float32 and t.device == device and t.is_contiguous(),
                 f"probe.{name} must be a contiguous fp32 tensor on {device} (use ProbeTensors.to(device))")
        need(p.guard_mean.shape == (d,) and p.guard_dirs.shape == (r, d) and p.guard_coef.shape == (r + 1,),
             f"probe guard shapes: guard_mean [{d}], guard_dirs [R, {d}], guard_coef [R + 1]; got "
             f"{tuple(p.guard_mean.shape)}, {tuple(p.guard_dirs.shape)}, {tuple(p.guard_coef.shape)}")


def controller_step_triton(hidden: torch.Tensor | None, last_token: torch.Tensor, state: ControllerState,
                           params: RowParams, spec: ControllerSpec, split: bool = False,
                           levels: int | None = None, score: torch.Tensor | None = None) -> None:
    """One controller step in place on `state` in one Triton launch (the contract of controller_step_reference).

    hidden: [B, D] bf16/fp16/fp32 (read when the spec has a probe); last_token: [B] int32/int64. A probe with
    memory (K features) needs state.floats [NS_FLOAT + K, B] (`ControllerState.allocate(..., memory_size=K)`).
    split: two launches (the heads, then the state machine alone), the design the fused launch is measured
    against (benchmarks/gpu_kernels.py); levels: the heads' reduction levels, 1 or 2 (None: by batch size).
    Both give the same results. score: [B] fp32, the step's logit score when `spec.score` is set.
    """
    from adaptive_think.kernels.controller_step import triton_kernel as K

    use_probe = spec.probe is not None and hidden is not None
    check_inputs(hidden, last_token, state, params, spec, use_probe)
    route_rows(hidden, state, params, spec)  # the route runs in torch before the launch: the reference's own code
    if use_probe:
        if hidden.stride(1) != 1:
            hidden = hidden.contiguous()  # the kernel reads each row's features at unit stride
        probe, probe_layout = packed_probe(spec.probe)
    elif spec.score is not None and score is not None:
        batch = state.batch_size
        if not (torch.is_tensor(score) and score.shape == (batch,) and score.device == state.ints.device):
            raise ValueError(f"controller_step_triton: score must be a [{batch}] tensor on {state.ints.device}, got "
                             f"{tuple(getattr(score, 'shape', ()))} on {getattr(score, 'device', None)}")
        hidden = score.float().contiguous()  # the logit score comes in where the hidden state would
        probe, probe_layout = state.floats, K.NO_PROBE._replace(SCORE=2 if spec.score.skip else 1)
    else:
        probe, probe_layout = state.floats, K.NO_PROBE  # never read
    spec_buffer, spec_layout = packed_spec(spec)
    batch = state.batch_size
    t = K.tiling(batch, probe_layout, on_gpu=state.ints.device.type == "cuda", levels=levels)
    ws = _workspace(state, K.workspace_size(batch, t), K.workspace_tickets(batch, t))
    K.launch(hidden, last_token, probe, probe_layout, spec_buffer, spec_layout, state.tensors(), params.tensors(),
             ws.buffer, layout(), t, split=split)
