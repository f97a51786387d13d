"""pytest-benchmark cases of the kernels against their torch references.

    pytest benchmarks/test_bench_kernels.py --benchmark-only           # CPU: the references only
    pytest benchmarks/test_bench_kernels.py -m gpu --benchmark-only    # CUDA: Triton kernels and references

Shapes: the controller step at the shipped probe's shape (D 192, H 64, K 8) and at D 4096, H 256, K 8, batch 1
and 32. On CPU the Triton cases skip (the interpreter's timings mean nothing); benchmarks/gpu_kernels.py is
the GPU benchmark (CUDA-graph replays timed with events, fused against two launches, JSON report).
"""

from __future__ import annotations

import pytest
import torch

from gpu_kernels import SHAPES, make_logits, make_probe_case

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="Triton kernels are benchmarked on CUDA only")
DEVICE = "cuda" if CUDA else "cpu"
CASES = [(b, d, h, k) for d, h, k in SHAPES for b in (1, 32)]
IDS = [f"B{b}-D{d}-H{h}-K{k}" for b, d, h, k in CASES]


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("B, D, H, K", CASES, ids=IDS)
def test_controller_step_reference(benchmark, B, D, H, K):
    from adaptive_think.controller.step import controller_step_reference

    hidden, tok, state, params, spec = make_probe_case(B, D, H, DEVICE, memory=K)
    benchmark(lambda: (controller_step_reference(hidden, tok, state, params, spec), _sync()))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("split", [False, True], ids=["fused", "two-launches"])
@pytest.mark.parametrize("B, D, H, K", CASES, ids=IDS)
def test_controller_step_triton(benchmark, B, D, H, K, split):
    from adaptive_think.controller.kernel_buffers import controller_step_triton

    hidden, tok, state, params, spec = make_probe_case(B, D, H, DEVICE, memory=K)
    benchmark(lambda: (controller_step_triton(hidden, tok, state, params, spec, split=split), _sync()))


def test_logit_stats_reference(benchmark):
    from adaptive_think.kernels.logit_stats import logit_stats_reference

    (x,) = make_logits(32, 151936, DEVICE)
    benchmark(lambda: (logit_stats_reference(x), _sync()))


@needs_cuda
@pytest.mark.gpu
def test_logit_stats_triton(benchmark):
    from adaptive_think.kernels.logit_stats.triton_kernel import logit_stats_triton

    (x,) = make_logits(32, 151936, DEVICE)
    benchmark(lambda: (logit_stats_triton(x), _sync()))
