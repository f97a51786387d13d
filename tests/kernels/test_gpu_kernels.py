"""GPU-only checks of the Triton kernels: compiled (not interpreted) results against the torch reference,
CUDA-graph capture and replay of the controller step, and no host synchronisation.

Run on a CUDA machine: pytest tests/kernels/test_gpu_kernels.py -m gpu -q   (skipped without CUDA)
(scripts/gpu_check.sh runs it with the benchmarks.)
"""

from __future__ import annotations

import pytest
import torch

from dataclasses import replace

from adaptive_think.controller.params import P_PATIENCE, P_SKIP_THRESHOLD
from adaptive_think.controller.state import POLICY_BUDGET, POLICY_PROBE, ControllerState
from adaptive_think.kernels.logit_stats import logit_stats_reference
from adaptive_think.controller.step import controller_step_reference
from kernel_cases import (TokenStreams, assert_states_equal, random_hidden, random_params, random_probe, random_spec,
                          random_state, with_random_memory)

pytestmark = pytest.mark.gpu

DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
    pytest.param(torch.bfloat16, 2e-5, 2e-5, id="bf16"),
    pytest.param(torch.float16, 2e-5, 2e-5, id="fp16"),
]
PROBE_SHAPES = [(1, 4096, 256), (3, 257, 16), (63, 1000, 40), (64, 4096, 256), (256, 2048, 512), (500, 100, 20)]
# fewer than the memoryless cases: each shape and dtype is one more compile inside scripts/gpu_check.sh's budget
MEMORY_SHAPES = [(1, 4096, 256, 8), (63, 1000, 40, 8), (300, 2048, 100, 16)]
LOGIT_SHAPES = [(1, 7), (3, 1000), (63, 257), (32, 151936), (4, 262144), (256, 32000)]


def _cuda_state(state):
    return state.to("cuda")


def _spec_to(spec, device):
    kw = {k: getattr(spec, k).to(device) for k in ("open_ids", "open_fail", "close_ids", "close_fail", "eos_ids", "is_boundary")}
    return replace(spec, probe=spec.probe.to(device) if spec.probe is not None else None, **kw)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("B, D, H", PROBE_SHAPES, ids=[f"B{b}-D{d}-H{h}" for b, d, h in PROBE_SHAPES])
@pytest.mark.parametrize("step", [0, 5], ids=["step0", "step5"])
def test_controller_step_cuda_matches_reference(step, B, D, H, dtype, atol, rtol):
    from adaptive_think.controller.kernel_buffers import controller_step_triton

    gen = torch.Generator().manual_seed(B + D + H + step)
    spec = random_spec(gen, 50, random_probe(D, H, gen, relu=H > 1))
    params = random_params(gen, B, 50, spec)  # mixed policies per row
    params.floats[P_SKIP_THRESHOLD].fill_(0.5)  # some probe rows skip at step 0
    params.ints[P_PATIENCE].fill_(1)  # stops happen
    state = random_state(B, gen, spec, params, step)
    hidden = random_hidden(B, D, dtype, gen)
    tok = torch.randint(0, 50, (B,), generator=gen)
    want = state.clone()
    controller_step_reference(hidden, tok, want, params, spec)  # on CPU: the ground truth
    got = _cuda_state(state)
    controller_step_triton(hidden.cuda(), tok.cuda(), got, params.to("cuda"), _spec_to(spec, "cuda"))
    # tf32x3 products on tensor cores: fp32-level, a hair looser than the interpreter's plain fp32
    assert_states_equal(got, want, 4 * atol, 4 * rtol, where=f"B{B}-D{D}-H{H}-{dtype}")


def _finite_hidden(batch, d, dtype, gen, nan_row=True):
    """random_hidden without its inf rows (row 1 NaN): tf32x3 splits each operand into big + small parts, and
    inf - inf makes a whole row NaN where the fp32 reference keeps +-inf. Both then score NaN (never a stop), but
    a memory would hold NaN against +-inf, so the memory cases compare finite rows and the NaN row only."""
    h = random_hidden(batch, d, dtype, gen, bad_rows=False)
    if nan_row and batch > 1:
        h[1, d // 2] = float("nan")
    return h


# bf16 alone: the dtype changes only the hidden state's load, which the memoryless cases cover in all three
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES[1:2])
@pytest.mark.parametrize("B, D, H, K", MEMORY_SHAPES, ids=[f"B{b}-D{d}-H{h}-K{k}" for b, d, h, k in MEMORY_SHAPES])
@pytest.mark.parametrize("step, counts", [(0, 0), (None, 0), (None, 2)], ids=["step0", "mixed-steps", "mixed-steps-C2"])
def test_memory_probe_controller_step_cuda_matches_reference(step, counts, B, D, H, K, dtype, atol, rtol):
    """A probe with memory (the last `counts` units counting): compiled kernel == reference from random mid-run
    states holding random maxima."""
    from adaptive_think.controller.kernel_buffers import controller_step_triton

    gen = torch.Generator().manual_seed(B + D + H + K + (step if step is not None else 7))
    spec = random_spec(gen, 50, random_probe(D, H, gen, relu=H > 1, memory=K, counts=min(counts, K)))
    params = random_params(gen, B, 50, spec)
    params.floats[P_SKIP_THRESHOLD].fill_(0.5)
    params.ints[P_PATIENCE].fill_(1)
    state = random_state(B, gen, spec, params, step)
    state = with_random_memory(state, K, gen)
    hidden = _finite_hidden(B, D, dtype, gen)
    tok = torch.randint(0, 50, (B,), generator=gen)
    want = state.clone()
    controller_step_reference(hidden, tok, want, params, spec)
    got = _cuda_state(state)
    controller_step_triton(hidden.cuda(), tok.cuda(), got, params.to("cuda"), _spec_to(spec, "cuda"))
    assert_states_equal(got, want, 4 * atol, 4 * rtol, where=f"B{B}-D{D}-H{H}-K{K}-{dtype}")


@pytest.mark.parametrize("dtype, atol, rtol", [pytest.param(torch.float32, 2e-5, 1e-5, id="fp32"),
                                               pytest.param(torch.bfloat16, 5e-5, 2e-5, id="bf16"),
                                               pytest.param(torch.float16, 5e-5, 2e-5, id="fp16")])
@pytest.mark.parametrize("B, V", LOGIT_SHAPES, ids=[f"B{b}-V{v}" for b, v in LOGIT_SHAPES])
def test_logit_stats_cuda_matches_reference(B, V, dtype, atol, rtol):
    from adaptive_think.kernels.logit_stats.triton_kernel import logit_stats_triton
    from kernel_cases import FIELDS, random_logits

    gen = torch.Generator().manual_seed(B + V)
    x = random_logits(B, V, dtype, gen)
    want = logit_stats_reference(x)
    for _ in range(2):  # the second launch checks the tickets were reset
        got = logit_stats_triton(x.cuda())
        for name in FIELDS:
            torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name), atol=atol, rtol=rtol, equal_nan=True)


# (B, D, H, K, reduction levels): the shipped probe's shape (D 192, H 64, K 8) and D 4096 at both levels
REPLAY_SHAPES = [(1, 256, 16, 0, None), (8, 1024, 64, 0, None), (64, 4096, 256, 0, None), (8, 1024, 64, 8, None),
                 (1, 192, 64, 8, None), (1, 4096, 256, 8, 1), (1, 4096, 256, 8, 2), (32, 4096, 256, 8, None)]


@pytest.mark.parametrize("split", [False, True], ids=["fused", "two-launches"])
@pytest.mark.parametrize("B, D, H, K, levels", REPLAY_SHAPES,
                         ids=[f"B{b}-D{d}-H{h}-K{k}-levels{l}" for b, d, h, k, l in REPLAY_SHAPES])
def test_controller_step_graph_replay_matches_reference(B, D, H, K, levels, split):
    """Capture one step in a CUDA graph, replay it over a scripted run (mixed per-row policies, one row restarted
    mid-run), compare with the reference each step (each on its own state); the fused launch and the two-launch design alike, probes
    with memory (K > 0: the maxima through blocks, resets and stops) and without."""
    from adaptive_think.controller.kernel_buffers import controller_step_triton

    gen = torch.Generator().manual_seed(B * D + K)
    vocab = 60
    spec = random_spec(gen, vocab, random_probe(D, H, gen, memory=K))
    params = random_params(gen, B, vocab, spec)
    spec_cuda, params_cuda = _spec_to(spec, "cuda"), params.to("cuda")
    want = ControllerState.allocate(B, "cpu", memory_size=K)
    want.phase.copy_((torch.rand(B, generator=gen) < 0.5).int())
    state = _cuda_state(want)
    hidden_buf = torch.zeros(B, D, dtype=torch.bfloat16, device="cuda")  # static inputs the graph reads
    tok_buf = torch.zeros(B, dtype=torch.int64, device="cuda")

    # warm up (compile, allocate the workspace) on a side stream, then restore the initial state
    initial = state.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        controller_step_triton(hidden_buf, tok_buf, state, params_cuda, spec_cuda, split=split, levels=levels)
    torch.cuda.current_stream().wait_stream(side)
    state.copy_(initial)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        controller_step_triton(hidden_buf, tok_buf, state, params_cuda, spec_cuda, split=split, levels=levels)

    streams = TokenStreams(B, vocab, spec, gen)
    tok = torch.zeros(B, dtype=torch.int64)
    for step in range(30):
        if step == 12:  # a row restarts between replays (a new request in its slot): its own step 0 again
            fresh = ControllerState.allocate(1, "cpu", memory_size=K)
            want.ints[:, B - 1], want.memory[:, B - 1] = fresh.ints[:, 0], fresh.memory[:, 0]
            state.ints[:, B - 1], state.memory[:, B - 1] = fresh.ints[:, 0].cuda(), fresh.memory[:, 0].cuda()
        if step == 20:  # new weights copied into the captured probe in place (as the graph engine does per call)
            for probe in (spec.probe, spec_cuda.probe):
                for name in ("ready_w1", "ready_b2", "skip_w1", "mean") + (("memory_w",) if K else ()):
                    getattr(probe, name).mul_(-0.5)
        if K:  # no inf rows with memory (see _finite_hidden)
            hidden = _finite_hidden(B, D, torch.bfloat16, gen, nan_row=step % 7 == 3)
        else:
            hidden = random_hidden(B, D, torch.bfloat16, gen, bad_rows=step % 7 == 3)
        hidden_buf.copy_(hidden)
        tok_buf.copy_(tok)
        graph.replay()
        controller_step_reference(hidden, tok, want, params, spec)
        assert_states_equal(state, want, 4e-5, 4e-5, where=f"replay step {step}")
        tok = streams.next(want.forced)


def test_no_host_sync():
    """The step and the stats launch without a device-to-host sync (so they can live inside a decode loop)."""
    from adaptive_think.kernels.logit_stats.triton_kernel import logit_stats_triton
    from adaptive_think.controller.kernel_buffers import controller_step_triton

    gen = torch.Generator().manual_seed(0)
    for policy, k in ((POLICY_PROBE, 0), (POLICY_PROBE, 8), (POLICY_BUDGET, 0)):  # k: a probe with memory
        spec_cpu = random_spec(gen, 50, random_probe(512, 32, gen, memory=k) if policy == POLICY_PROBE else None)
        params_cpu = random_params(gen, 16, 50, spec_cpu, policy)
        spec, params = _spec_to(spec_cpu, "cuda"), params_cpu.to("cuda")
        state = random_state(16, gen, spec_cpu, params_cpu, 0)
        state = _cuda_state(ControllerState(state.ints, torch.cat([state.floats, torch.zeros(k, 16)]), state.forced))
        hidden = torch.randn(16, 512, device="cuda", dtype=torch.bfloat16)
        tok = torch.randint(0, 50, (16,), device="cuda")
        logits = torch.randn(16, 32000, device="cuda", dtype=torch.bfloat16)
        controller_step_triton(hidden, tok, state, params, spec)  # compile and allocate before watching
        logit_stats_triton(logits)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                controller_step_triton(hidden, tok, state, params, spec)
                logit_stats_triton(logits)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        assert (state.step == 4).all()
