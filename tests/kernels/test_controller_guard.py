"""The out-of-distribution guard in the controller step: the Triton kernel against the torch reference, and the
reference against hand-worked cases (a flagged row runs its fallback thresholds; an unflagged one the probe's).

Run: pytest tests/kernels/test_controller_guard.py -q   (on CPU the kernel runs in Triton's interpreter)
"""

from __future__ import annotations

import pytest
import torch

from adaptive_think.controller import controller_step
from adaptive_think.controller.params import (
    NEVER,
    NO_GUARD,
    P_FALLBACK_SKIP_THRESHOLD,
    P_FALLBACK_THRESHOLD,
    P_GUARD_THRESHOLD,
    P_PATIENCE,
    P_POLICY,
    P_SKIP_THRESHOLD,
    RowParams,
    RowSettings,
)
from adaptive_think.controller.state import (
    CLOSING,
    ENDED_BUDGET,
    ENDED_PROBE,
    ENDED_SKIPPED,
    NO_LIMIT,
    POLICY_PROBE,
    PROMPT,
    THINKING,
    ControllerSpec,
    ControllerState,
    ProbeTensors,
)
from adaptive_think.controller.step import controller_step_reference, guard_scores, normalised
from kernel_cases import (
    assert_states_equal,
    random_hidden,
    random_params,
    random_probe,
    random_spec,
    random_state,
    with_random_guard,
    with_random_memory,
)
from test_controller_step import _triton_step

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on NaN/inf rows

GUARD_CASES = [  # (B, D, H, R, K, hidden dtype, split, levels, seed); D > 64 splits D in the interpreter
    pytest.param(5, 64, 16, 4, 0, torch.float32, False, None, 0, id="B5-D64-H16-R4"),
    pytest.param(9, 100, 16, 3, 0, torch.float32, False, 2, 1, id="B9-D100-H16-R3-splitD"),
    pytest.param(6, 100, 24, 20, 0, torch.float32, False, 1, 2, id="B6-D100-H24-R20-splitD-one-level"),
    pytest.param(5, 130, 8, 5, 0, torch.float32, True, 2, 3, id="B5-D130-H8-R5-two-launches"),
    pytest.param(12, 40, 16, 0, 3, torch.bfloat16, False, None, 4, id="B12-D40-H16-R0-K3-bf16"),
    pytest.param(63, 257, 40, 8, 0, torch.bfloat16, False, None, 5, id="B63-D257-H40-R8-bf16"),
    pytest.param(4, 192, 16, 64, 0, torch.float32, False, None, 6, id="B4-D192-H16-R64"),
    pytest.param(6, 192, 16, 128, 0, torch.float32, False, None, 8, id="B6-D192-H16-R128"),  # the bundled probe's guard
]


def _guard_case(gen, B, D, H, R, K, dtype, step):
    """A random step (spec, params, state, hidden, tok) whose probe carries a guard, with the guard threshold at the
    median score of the rows' states, so some probe rows are flagged and some pass; every third row has no guard,
    some rows were flagged at an earlier step, and the fallback thresholds differ from the probe's."""
    probe = with_random_guard(random_probe(D, H, gen, relu=True, **({"memory": K} if K else {})), R, gen)
    spec = random_spec(gen, 50, probe)
    params = random_params(gen, B, 50, spec)
    params.ints[P_POLICY][::2] = POLICY_PROBE  # plenty of probe rows
    params.floats[P_SKIP_THRESHOLD].fill_(0.5)  # unflagged probe rows skip at their step 0 now and then
    params.ints[P_PATIENCE].fill_(1)
    hidden = random_hidden(B, D, dtype, gen)
    scores = guard_scores(normalised(hidden, spec.probe), spec.probe)
    params.floats[P_GUARD_THRESHOLD].fill_(float(scores[torch.isfinite(scores)].median()))
    params.floats[P_GUARD_THRESHOLD][::3] = NO_GUARD
    params.floats[P_FALLBACK_THRESHOLD].copy_(torch.where(torch.rand(B, generator=gen) < 0.5, NEVER, 0.3))
    params.floats[P_FALLBACK_SKIP_THRESHOLD].copy_(torch.where(torch.rand(B, generator=gen) < 0.7, NEVER, 0.2))
    state = random_state(B, gen, spec, params, step)
    state.phase[::2] = torch.where(torch.rand((B + 1) // 2, generator=gen) < 0.5, PROMPT, THINKING).int()  # open rows
    if K:
        state = with_random_memory(state, K, gen)
    state.guard.copy_(((torch.rand(B, generator=gen) < 0.3) & (state.step != 0)).int())  # flagged earlier
    tok = torch.randint(0, 50, (B,), generator=gen)
    return spec, params, state, hidden, tok


@pytest.mark.kernels
@pytest.mark.parametrize("B, D, H, R, K, dtype, split, levels, seed", GUARD_CASES)
def test_guard_step_matches_reference(B, D, H, R, K, dtype, split, levels, seed):
    """One step at step 0 and from mixed steps: guard scores, flags, fallback decisions equal the reference's."""
    gen = torch.Generator().manual_seed(300 + seed)
    flagged = passed = 0
    for step in (0, None):
        spec, params, state, hidden, tok = _guard_case(gen, B, D, H, R, K, dtype, step)
        first_probe = (state.step == 0) & (params.ints[P_POLICY] == POLICY_PROBE) & torch.isfinite(
            params.floats[P_GUARD_THRESHOLD]) & ((state.phase == PROMPT) | (state.phase == THINKING))
        want = state.clone()
        controller_step_reference(hidden, tok, want, params, spec)
        _triton_step(hidden, tok, state, params, spec, split=split, levels=levels)
        assert_states_equal(state, want, 1e-5, 1e-5, where=f"step {step}")
        flagged += int((first_probe & (want.guard == 1)).sum())
        passed += int((first_probe & (want.guard == 0)).sum())
    assert flagged and passed, f"the case must flag some rows and pass others: {flagged} flagged, {passed} passed"


# ----------------------------------------------------------------------------------------------------
# hand-worked: a guard that flags or passes one row whose probe wants to skip and to stop at once

IMPLS = ["torch", pytest.param("triton", marks=pytest.mark.kernels)]
OPEN, CLOSE, EXIT, EOS = 20, 21, 23, 25


def _probe_with_guard(d: int = 8) -> ProbeTensors:
    """A probe that always wants to skip and to stop (sigmoid(4)), and a guard scoring |h|^2 (rank 1)."""
    z = torch.zeros
    return ProbeTensors(mean=z(d), inv_std=torch.ones(d), ready_w1=z(1, d), ready_b1=z(1), ready_w2=torch.ones(1),
                        ready_b2=torch.tensor([4.0]), skip_w1=z(1, d), skip_b1=z(1), skip_w2=torch.ones(1),
                        skip_b2=torch.tensor([4.0]), relu=False, guard_mean=z(d),
                        guard_dirs=torch.eye(d)[:1].contiguous(), guard_coef=torch.tensor([0.0, 1.0]))


def _run_row(impl, guard_threshold, fallback=(NEVER, NEVER), h_norm=2.0, phase=PROMPT, steps=8, max_think=5):
    spec = ControllerSpec.build((OPEN,), (CLOSE,), (EOS,), vocab_size=32, probe=_probe_with_guard())
    row = RowSettings(policy=POLICY_PROBE, min_think=0, max_think=max_think, threshold=0.5, skip_threshold=0.5,
                      alpha=1.0, patience=1, boundary_only=False, trace=False, exit_ids=(EXIT,), stop_ids=(),
                      guard_threshold=guard_threshold, fallback_threshold=fallback[0],
                      fallback_skip_threshold=fallback[1])
    params = RowParams.pack([row], (OPEN,), (), (CLOSE,), 8, "cpu")
    state = ControllerState.allocate(1, "cpu")
    state.phase.fill_(phase)
    state.blocks.fill_(int(phase == THINKING))
    hidden = torch.zeros(1, 8)
    hidden[0, 3] = h_norm  # |x|^2 = h_norm^2 = the guard's score
    tok, forced = torch.tensor([0]), []
    for t in range(steps):
        controller_step(hidden, tok, state, params, spec, impl=impl)
        forced.append(int(state.forced))
        tok = state.forced.clone() if int(state.forced) >= 0 else torch.tensor([OPEN if t == 0 else 5])
    return state, forced


@pytest.mark.parametrize("impl", IMPLS)
def test_unflagged_row_skips_flagged_row_thinks_to_its_budget(impl):
    passed, forced = _run_row(impl, guard_threshold=4.5)  # score 4.0 <= 4.5: in distribution
    assert int(passed.guard) == 0 and float(passed.guard_score) == pytest.approx(4.0)
    assert int(passed.ended_by) == ENDED_SKIPPED and forced[:3] == [OPEN, CLOSE, EXIT]
    flagged, forced = _run_row(impl, guard_threshold=3.5)  # 4.0 > 3.5: out of distribution
    assert int(flagged.guard) == 1
    # no skip, no probe stop although both heads say so: the model opens the block (step 1), thinks 5 tokens
    # (steps 2-6), and the budget closes it
    assert forced == [-1, -1, -1, -1, -1, -1, CLOSE, EXIT]
    assert int(flagged.ended_by) == ENDED_BUDGET and int(flagged.think_count) == 5


@pytest.mark.parametrize("impl", IMPLS)
def test_flagged_row_runs_its_fallback_rung_and_no_guard_never_flags(impl):
    # a fallback rung that stops (threshold 0.5) but never skips: no skip at the prompt, a stop once the block opens
    state, forced = _run_row(impl, guard_threshold=3.5, fallback=(0.5, NEVER), steps=4)
    assert int(state.guard) == 1 and forced[:3] == [-1, CLOSE, EXIT] and int(state.ended_by) == ENDED_PROBE
    state, _ = _run_row(impl, guard_threshold=NO_GUARD, h_norm=1e4, steps=2)  # no guard: even a huge score passes
    assert int(state.guard) == 0 and int(state.ended_by) == ENDED_SKIPPED
    state, _ = _run_row(impl, guard_threshold=3.5, h_norm=float("nan"), steps=2)  # NaN never flags, never skips
    assert int(state.guard) == 0 and int(state.phase) != CLOSING


@pytest.mark.kernels
def test_triton_rejects_a_bad_guard():
    from adaptive_think.controller.kernel_buffers import controller_step_triton

    gen = torch.Generator().manual_seed(0)
    spec = random_spec(gen, 40, with_random_guard(random_probe(16, 4, gen), 3, gen))
    params = random_params(gen, 2, 40, spec)
    state = ControllerState.allocate(2, "cpu")
    spec.probe.guard_coef = torch.ones(3)
    with pytest.raises(ValueError, match=r"guard shapes.*guard_coef \[R \+ 1\]"):
        controller_step_triton(torch.zeros(2, 16), torch.zeros(2, dtype=torch.int64), state, params, spec)
    spec.probe.guard_coef = None
    with pytest.raises(ValueError, match="all of guard_mean"):
        controller_step_triton(torch.zeros(2, 16), torch.zeros(2, dtype=torch.int64), state, params, spec)


def test_guard_scores_are_the_low_rank_mahalanobis_distance():
    """sum_j p_j^2 / var_j + |y - U^T p|^2 / res_var, written the way the step computes it."""
    gen = torch.Generator().manual_seed(1)
    d, r = 12, 3
    dirs = torch.linalg.qr(torch.randn(d, r, generator=gen))[0].t().contiguous()
    var, res = torch.tensor([4.0, 2.0, 0.5]), 0.25
    mean = torch.randn(d, generator=gen)
    t = ProbeTensors(*([None] * 10), relu=False, guard_mean=mean, guard_dirs=dirs,
                     guard_coef=torch.cat([1 / var - 1 / res, torch.tensor([1 / res])]))
    x = torch.randn(6, d, generator=gen)
    y = x - mean
    p = y @ dirs.t()
    want = (p**2 / var).sum(-1) + ((y - p @ dirs) ** 2).sum(-1) / res
    torch.testing.assert_close(guard_scores(x, t), want, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.kernels
@pytest.mark.parametrize("B, D, H, R", [(1, 1024, 256, 8), (33, 4096, 256, 16), (200, 2560, 64, 32)],
                         ids=["B1-D1024-R8", "B33-D4096-R16", "B200-D2560-R32"])
def test_guard_step_matches_reference_on_the_gpu(B, D, H, R):
    """The compiled kernel (GPU tiling, tf32x3 dots) against the reference on real model widths."""
    gen = torch.Generator().manual_seed(B + R)
    spec, params, state, hidden, tok = _guard_case(gen, B, D, H, R, 0, torch.bfloat16, None)
    cuda = torch.device("cuda")
    spec = ControllerSpec(**{k: (v.to(cuda) if torch.is_tensor(v) else v) for k, v in vars(spec).items()})
    spec.probe = spec.probe.to(cuda)
    params, state, hidden, tok = params.to(cuda), state.to(cuda), hidden.to(cuda), tok.to(cuda)
    want = state.clone()
    controller_step_reference(hidden, tok, want, params, spec)
    _triton_step(hidden, tok, state, params, spec)
    assert_states_equal(state, want, 1e-4, 1e-4, where=f"B{B}-D{D}-R{R}")
