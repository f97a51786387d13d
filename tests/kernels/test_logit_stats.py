"""logit_stats: the Triton kernel against the torch reference, and the reference against hand-worked rows.

Run: pytest tests/kernels/test_logit_stats.py -q   (on CPU the kernel runs in Triton's interpreter)
"""

from __future__ import annotations

import math

import pytest
import torch

from adaptive_think.kernels.logit_stats import logit_stats, logit_stats_reference
from kernel_cases import FIELDS, INF, NAN, random_logits

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on NaN/inf rows

# both implementations cast to fp32 first, so inputs agree exactly and only the summation order differs;
# half types round to coarser, larger-spread values, hence a little more room
DTYPES = [
    pytest.param(torch.float32, 2e-5, 1e-5, id="fp32"),
    pytest.param(torch.bfloat16, 5e-5, 2e-5, id="bf16"),
    pytest.param(torch.float16, 5e-5, 2e-5, id="fp16"),
]
SHAPES = [(1, 7), (3, 1000), (63, 257), (500, 33), (9, 5003), (2, 262144)]


def _assert_stats(got, want, atol, rtol, where):
    for name in FIELDS:
        torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name).cpu(), atol=atol, rtol=rtol,
                                   equal_nan=True, msg=lambda m, n=name: f"{where}: {n}: {m}")


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty hands out NaN-filled float buffers, so an output or partial the kernel forgets fails."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(NAN) if t.is_floating_point() else t.fill_(-12345)

    monkeypatch.setattr(torch, "empty", empty)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("B, V", SHAPES, ids=[f"B{b}-V{v}" for b, v in SHAPES])
def test_matches_reference(B, V, dtype, atol, rtol, nan_empty):
    from adaptive_think.kernels.logit_stats import triton_kernel

    gen = torch.Generator().manual_seed(B * 7 + V)
    x = random_logits(B, V, dtype, gen)
    want = logit_stats_reference(x)
    got = triton_kernel.logit_stats_triton(x)
    _assert_stats(got, want, atol, rtol, f"B{B}-V{V}-{dtype}")
    for _, tickets in triton_kernel._WORKSPACES.values():
        assert (tickets == 0).all()  # every launch leaves the tickets ready for the next


@pytest.mark.kernels
@pytest.mark.parametrize("block_v, n_splits", [(16, 1), (64, 3), (64, 8), (128, 64), (256, 1000)],
                         ids=lambda v: str(v))
def test_split_plans_agree(block_v, n_splits, nan_empty):
    """Every split of the vocabulary (one chunk, uneven chunks, more splits than blocks) gives the same stats."""
    from adaptive_think.kernels.logit_stats.triton_kernel import logit_stats_triton

    gen = torch.Generator().manual_seed(n_splits)
    x = random_logits(9, 3001, torch.float32, gen)
    want = logit_stats_reference(x)
    for _ in range(2):  # twice: the tickets of the first launch must have been reset
        _assert_stats(logit_stats_triton(x, block_v=block_v, n_splits=n_splits), want, 2e-5, 1e-5, f"{block_v}/{n_splits}")


@pytest.mark.kernels
def test_column_major_and_bad_inputs():
    from adaptive_think.kernels.logit_stats.triton_kernel import logit_stats_triton

    x = torch.randn(300, 5)
    _assert_stats(logit_stats_triton(x.t()), logit_stats_reference(x.t()), 2e-5, 1e-5, "column-major")
    with pytest.raises(ValueError, match="bf16/fp16/fp32"):
        logit_stats_triton(x.double())
    with pytest.raises(ValueError, match=r"\[B, V\]"):
        logit_stats_triton(x[0])


def test_reference_hand_worked_rows():
    x = torch.tensor([
        [0.0, 0.0, -INF, -INF],  # two equal live entries: entropy log 2, margin 0
        [1.0, -INF, -INF, -INF],  # one live entry: entropy 0, margin +inf
        [-INF, -INF, -INF, -INF],  # nothing live
        [0.0, NAN, 1.0, 2.0],
        [0.0, INF, 1.0, 2.0],
        [3.0, 1.0, 0.0, -1.0],
    ])
    s = logit_stats_reference(x)
    p = torch.softmax(x[5], 0)
    assert s.entropy[0].item() == pytest.approx(math.log(2)) and s.margin[0].item() == 0.0
    assert s.lse[0].item() == pytest.approx(math.log(2))
    assert s.entropy[1].item() == 0.0 and s.margin[1].item() == INF and s.lse[1].item() == 1.0
    assert s.max_logit[2].item() == -INF and s.lse[2].item() == -INF
    assert math.isnan(s.entropy[2].item()) and math.isnan(s.margin[2].item())
    for row in (3, 4):
        assert all(math.isnan(getattr(s, f)[row].item()) for f in FIELDS)
    assert s.entropy[5].item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-6)
    assert s.margin[5].item() == 2.0 and s.max_logit[5].item() == 3.0


def test_entry_point_dispatch(monkeypatch):
    x = torch.randn(2, 10)
    want = logit_stats_reference(x)
    _assert_stats(logit_stats(x), want, 0, 0, "auto on CPU is the reference")
    monkeypatch.setenv("ADAPTIVE_THINK_KERNEL_IMPL", "bogus")
    with pytest.raises(ValueError, match="ADAPTIVE_THINK_KERNEL_IMPL"):
        logit_stats(x)
    _assert_stats(logit_stats(x, impl="torch"), want, 0, 0, "argument wins over the variable")


@pytest.mark.kernels
def test_entry_point_env_picks_triton(monkeypatch):
    monkeypatch.setenv("ADAPTIVE_THINK_KERNEL_IMPL", "triton")
    x = torch.randn(3, 50)
    _assert_stats(logit_stats(x), logit_stats_reference(x), 2e-5, 1e-5, "env triton")
