"""Training-free logit scores in the controller step: the Triton state machine reading a precomputed score [B]
against the torch reference, and the score functions against hand-worked rows and logit_stats' kernel.

Run: pytest tests/kernels/test_logit_score_step.py -q   (on CPU the kernels run in Triton's interpreter)
"""

from __future__ import annotations

import math

import pytest
import torch

from adaptive_think.controller.logit_score import close_margin, entropy_score, logit_score
from adaptive_think.controller.params import P_BOUNDARY_ONLY, P_MIN_THINK, P_PATIENCE, P_POLICY, P_SKIP_THRESHOLD
from adaptive_think.controller.state import ENDED_PROBE, POLICY_PROBE, THINKING, ControllerSpec, LogitScore
from adaptive_think.controller.step import controller_step_reference
from kernel_cases import TokenStreams, assert_states_equal, random_params, random_spec, random_state

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on NaN rows


def _score_spec(gen, skip: bool) -> ControllerSpec:
    base = random_spec(gen, 50, None)
    return ControllerSpec(base.open_ids, base.open_fail, base.close_ids, base.close_fail, base.eos_ids,
                          base.is_boundary, score=LogitScore("close-margin", int(base.close_ids[0]), skip=skip))


def _triton_step(tok, state, params, spec, score):
    from adaptive_think.controller import kernel_buffers

    kernel_buffers.controller_step_triton(None, tok, state, params, spec, score=score)


@pytest.mark.kernels
@pytest.mark.parametrize("skip", [False, True], ids=["no-skip", "skip"])
@pytest.mark.parametrize("B", [1, 7, 300])
@pytest.mark.parametrize("step", [0, None], ids=["step0", "mixed-steps"])
def test_one_step_with_a_logit_score_matches_reference(step, B, skip):
    gen = torch.Generator().manual_seed(B * 10 + int(skip) + (step or 3))
    spec = _score_spec(gen, skip)
    params = random_params(gen, B, 50, spec)
    params.floats[P_SKIP_THRESHOLD].fill_(0.5)  # some probe rows skip at their step 0 (when the file skips)
    params.ints[P_PATIENCE].fill_(1)
    state = random_state(B, gen, spec, params, step)
    score = torch.rand(B, generator=gen)
    if B > 2:
        score[1] = float("nan")  # a NaN score never stops and never skips
    tok = torch.randint(0, 50, (B,), generator=gen)
    want = state.clone()
    controller_step_reference(None, tok, want, params, spec, score)
    _triton_step(tok, state, params, spec, score)
    assert_states_equal(state, want, 0.0, 0.0, where=f"B{B} skip={skip}")
    probe_rows = params.ints[P_POLICY] == POLICY_PROBE
    first = want.step == 1
    assert torch.isnan(state.score[~probe_rows]).all()  # other policies' rows do not score
    ready_rows = probe_rows & ~first
    assert torch.equal(state.score[ready_rows].nan_to_num(-1), score[ready_rows].nan_to_num(-1))
    if not skip:  # a file without a skip score reads NaN at step 0
        assert torch.isnan(state.score[probe_rows & first]).all()


@pytest.mark.kernels
def test_many_steps_with_logit_scores_match_reference():
    """A run of 40 steps over scripted token streams: stops from the score, budgets, skips, all policies mixed."""
    gen = torch.Generator().manual_seed(5)
    B = 9
    spec = _score_spec(gen, True)
    params = random_params(gen, B, 50, spec)
    params.ints[P_PATIENCE].fill_(1)
    params.ints[P_POLICY, ::2] = POLICY_PROBE  # every other row reads the score; the rest keep their random policy
    params.ints[P_BOUNDARY_ONLY].fill_(0)
    params.ints[P_MIN_THINK].fill_(0)
    want = random_state(B, gen, spec, params, 0)
    want.phase.fill_(THINKING)  # every row starts inside a thought (an R1-style prompt)
    got = want.clone()
    streams = TokenStreams(B, 50, spec, gen)
    tok = torch.zeros(B, dtype=torch.int64)
    stops = 0
    for _ in range(40):
        score = torch.rand(B, generator=gen)
        controller_step_reference(None, tok, want, params, spec, score)
        _triton_step(tok, got, params, spec, score)
        assert_states_equal(got, want, 0.0, 0.0)
        stops += int((want.ended_by == ENDED_PROBE).sum())
        tok = streams.next(want.forced)
    assert stops > 0  # the score did stop rows


def test_close_margin_and_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, math.log(0.5) + 2.0, float("-inf")],
                           [0.0, 0.0, 0.0, 0.0],
                           [1.0, float("nan"), 0.0, 0.0]])
    cm = close_margin(logits, 2)
    assert cm[0].item() == pytest.approx(0.5) and cm[1].item() == 1.0 and math.isnan(cm[2].item())
    assert close_margin(logits, 3)[0].item() == 0.0  # a masked close token: the model will not close
    ent = entropy_score(logits, impl="torch")
    assert ent[1].item() == pytest.approx(0.25)  # uniform over 4: exp(-log 4)
    assert math.isnan(ent[2].item())
    assert torch.equal(logit_score(logits, LogitScore("close-margin", 2)).nan_to_num(-1), cm.nan_to_num(-1))


@pytest.mark.kernels
def test_entropy_score_triton_matches_reference():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 333, generator=gen) * 4
    logits[2, :100] = float("-inf")
    want = entropy_score(logits, impl="torch")
    got = entropy_score(logits, impl="triton")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
