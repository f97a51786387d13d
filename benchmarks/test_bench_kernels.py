"""pytest-benchmark cases of the kernels against their torch references.

    pytest benchmarks/test_bench_kernels.py --benchmark-only           # CPU: the references only
    pytest benchmarks/test_bench_kernels.py -m gpu --benchmark-only    # CUDA: Triton kernels and references

On CPU the Triton cases skip (the interpreter's timings mean nothing); benchmarks/gpu_kernels.py is the
full GPU benchmark (graph-captured timings, bandwidth, JSON report).
"""

from __future__ import annotations

import pytest
import torch

from gpu_kernels import make_logits, make_probe_case

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="Triton kernels are benchmarked on CUDA only")
DEVICE = "cuda" if CUDA else "cpu"
PROBE_BATCHES = [1, 8, 32, 64]


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("B", PROBE_BATCHES, ids=[f"B{b}-D4096-H256" for b in PROBE_BATCHES])
def test_probe_step_reference(benchmark, B):
    from adaptive_think.kernels.probe_step import probe_step_reference

    hidden, tok, state, params, spec = make_probe_case(B, 4096, 256, DEVICE)
    benchmark(lambda: (probe_step_reference(hidden, tok, state, params, spec), _sync()))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("B", PROBE_BATCHES, ids=[f"B{b}-D4096-H256" for b in PROBE_BATCHES])
def test_probe_step_triton(benchmark, B):
    from adaptive_think.kernels.probe_step.triton_kernel import probe_step_triton

    hidden, tok, state, params, spec = make_probe_case(B, 4096, 256, DEVICE)
    benchmark(lambda: (probe_step_triton(hidden, tok, state, params, spec), _sync()))


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
