"""probe_step: the Triton kernel against the torch reference, and the reference against hand-worked cases.

Run: pytest tests/kernels/test_probe_step.py -q   (on CPU the kernel runs in Triton's interpreter)
"""

from __future__ import annotations

import pytest
import torch

from adaptive_think.controller.state import (
    ANSWERING,
    CLOSING,
    ENDED_BUDGET,
    ENDED_NATURAL,
    ENDED_NONE,
    ENDED_PROBE,
    ENDED_SKIPPED,
    NO_LIMIT,
    POLICY_BUDGET,
    POLICY_FULL,
    POLICY_NONE,
    POLICY_PROBE,
    PROMPT,
    THINKING,
    ControllerSpec,
    ControllerState,
    ProbeTensors,
)
from adaptive_think.kernels.probe_step import probe_step, probe_step_reference
from kernel_cases import TokenStreams, assert_states_equal, garble, random_hidden, random_probe, random_spec, random_state

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on NaN/inf rows

# hidden states are cast to fp32 before any arithmetic in both implementations, so only the summation
# order differs; the half types get a little more room for the larger values they round to
DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
    pytest.param(torch.bfloat16, 2e-5, 2e-5, id="bf16"),
    pytest.param(torch.float16, 2e-5, 2e-5, id="fp16"),
]


SHAPES = [(1, 64, 1), (5, 64, 1), (3, 100, 16), (63, 257, 40), (500, 33, 20)]


def _triton_step(hidden, tok, state, spec):
    from adaptive_think.kernels.probe_step import triton_kernel

    # the partials must all be rewritten by the launch that reads them (skip partials only at step 0)
    ws = getattr(state, triton_kernel._WORKSPACE_ATTR, None)
    if ws is not None:
        ws.spart.fill_(float("nan"))
        ws.zpart.fill_(float("nan"))
    triton_kernel.probe_step_triton(hidden, tok, state, spec)
    ws = getattr(state, triton_kernel._WORKSPACE_ATTR, None)
    if ws is not None:  # every launch leaves its tickets at 0 for the next one
        assert int(ws.count) == 0 and not ws.gcount.any()


# ----------------------------------------------------------------------------------------------------
# kernel == reference, one step from random mid-run states


@pytest.mark.kernels
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("B, D, H", SHAPES, ids=[f"B{b}-D{d}-H{h}" for b, d, h in SHAPES])
@pytest.mark.parametrize("step", [0, 5], ids=["step0", "step5"])
def test_one_step_matches_reference(step, B, D, H, dtype, atol, rtol):
    gen = torch.Generator().manual_seed(B * 1000 + D + H + step)
    probe = random_probe(D, H, gen, relu=H > 1)
    spec = random_spec(gen, 50, POLICY_PROBE, probe)
    spec.skip_threshold = 0.5  # some rows skip at step 0
    spec.patience, spec.min_think, spec.boundary_only = 1, 2, True  # stops happen, and only at boundaries
    state = random_state(B, gen, step, spec)
    hidden = random_hidden(B, D, dtype, gen)
    tok = torch.randint(0, 50, (B,), generator=gen)
    want = state.clone()
    probe_step_reference(hidden, tok, want, spec)
    _triton_step(hidden, tok, state, spec)
    assert_states_equal(state, want, atol, rtol, where=f"B{B}-D{D}-H{H}-{dtype}")
    if B > 2:  # the NaN row scores NaN, the inf row does not crash
        assert torch.isnan(state.score[1])


@pytest.mark.kernels
@pytest.mark.parametrize("policy", [POLICY_FULL, POLICY_NONE, POLICY_BUDGET, POLICY_PROBE], ids=["full", "none", "budget", "probe"])
def test_no_probe_reads(policy):
    """Without a probe (or without hidden) the kernel runs the state machine alone; scores are NaN."""
    gen = torch.Generator().manual_seed(policy)
    spec = random_spec(gen, 40, policy, None)
    for step in (0, 3):
        state = random_state(37, gen, step, spec)
        tok = torch.randint(0, 40, (37,), generator=gen, dtype=torch.int32)  # int32 tokens are accepted too
        want = state.clone()
        probe_step_reference(None, tok, want, spec)
        _triton_step(None, tok, state, spec)
        assert_states_equal(state, want, 0.0, 0.0, where=f"policy{policy}-step{step}")
        assert torch.isnan(state.score).all()


# ----------------------------------------------------------------------------------------------------
# kernel == reference over whole runs: scripted token streams with markers, eos and forced tokens


CASES = [  # (B, D, H, policy, seed)
    (1, 48, 16, POLICY_PROBE, 0),
    (3, 100, 16, POLICY_PROBE, 1),
    (8, 64, 1, POLICY_PROBE, 2),
    (16, 40, 24, POLICY_PROBE, 3),
    (7, 32, 8, POLICY_BUDGET, 4),
    (5, 32, 8, POLICY_NONE, 5),
    (6, 32, 8, POLICY_FULL, 6),
]


@pytest.mark.kernels
@pytest.mark.parametrize("B, D, H, policy, seed", CASES, ids=[f"B{c[0]}-D{c[1]}-H{c[2]}-policy{c[3]}-seed{c[4]}" for c in CASES])
def test_state_machine_matches_reference(B, D, H, policy, seed):
    gen = torch.Generator().manual_seed(100 + seed)
    vocab = 60
    probe = random_probe(D, H, gen, relu=H > 1)
    for trial in range(3):  # fresh random spec (markers, limits, thresholds) per trial
        spec = random_spec(gen, vocab, policy, probe)
        streams = TokenStreams(B, vocab, spec, gen)
        want = ControllerState.allocate(B, "cpu")
        want.phase.copy_((torch.rand(B, generator=gen) < 0.5).int())  # PROMPT or already THINKING
        got = want.clone()
        garble(got)
        tok = torch.zeros(B, dtype=torch.int64)
        for step in range(40):
            hidden = random_hidden(B, D, torch.float32, gen, bad_rows=False)
            if B > 1:
                hidden[0] = float("nan")  # row 0 never has a valid score
            probe_step_reference(hidden, tok, want, spec)
            _triton_step(hidden, tok, got, spec)
            assert_states_equal(got, want, 1e-5, 1e-5, where=f"trial {trial} step {step}")
            got.ema.copy_(want.ema)  # keep last-ulp differences from compounding into a threshold flip
            garble(got)
            got.forced.copy_(want.forced)
            tok = streams.next(want.forced)
        if B > 1:
            assert want.ended_by[0] != ENDED_PROBE  # NaN never stops


# ----------------------------------------------------------------------------------------------------
# hand-worked cases, for the reference and the kernel alike

IMPLS = ["torch", pytest.param("triton", marks=pytest.mark.kernels)]
OPEN, CLOSE_A, CLOSE_B, EXIT1, EXIT2, EOS = 20, 21, 22, 23, 24, 25


def _constant_probe(ready_logit: float, skip_logit: float, d: int = 8) -> ProbeTensors:
    """A linear probe that scores sigmoid(ready_logit) / sigmoid(skip_logit) whatever the hidden state."""
    z = torch.zeros
    return ProbeTensors(mean=z(d), inv_std=torch.ones(d), ready_w1=z(1, d), ready_b1=z(1), ready_w2=torch.ones(1),
                        ready_b2=torch.tensor([ready_logit]), skip_w1=z(1, d), skip_b1=z(1), skip_w2=torch.ones(1),
                        skip_b2=torch.tensor([skip_logit]), relu=False)


def _spec(policy, close=(CLOSE_A,), max_think=NO_LIMIT, min_think=0, patience=1, boundary_only=False, probe=None,
          threshold=0.5, skip_threshold=2.0) -> ControllerSpec:
    close = torch.tensor(close)
    is_boundary = torch.zeros(32, dtype=torch.bool)
    is_boundary[7] = True
    return ControllerSpec(policy=policy, open_ids=torch.tensor([OPEN]), close_ids=close,
                          force_seq=torch.cat([torch.tensor([OPEN]), close, torch.tensor([EXIT1, EXIT2])]),
                          eos_ids=torch.tensor([EOS]), is_boundary=is_boundary, min_think=min_think, max_think=max_think,
                          threshold=threshold, skip_threshold=skip_threshold, alpha=1.0, patience=patience,
                          boundary_only=boundary_only, probe=probe)


def _run(impl, spec, tokens, phase=THINKING, hidden=None):
    """Feed tokens[t] as the token written before step t (tokens[0] is ignored); returns forced tokens per step."""
    state = ControllerState.allocate(1, "cpu")
    state.phase.fill_(phase)
    forced = []
    for t in tokens:
        h = hidden if hidden is not None else (torch.zeros(1, 8) if spec.probe is not None else None)
        probe_step(h, torch.tensor([t]), state, spec, impl=impl)
        forced.append(int(state.forced))
    return state, forced


@pytest.mark.parametrize("impl", IMPLS)
def test_budget_cut_forces_the_exit_once(impl):
    spec = _spec(POLICY_BUDGET, max_think=3)
    # step 0 is the prompt; tokens 1, 2, 3 are thinking; then the forced tokens are written back
    state, forced = _run(impl, spec, [0, 1, 2, 3, CLOSE_A, EXIT1, EXIT2, 5, 6])
    assert forced == [-1, -1, -1, CLOSE_A, EXIT1, EXIT2, -1, -1, -1]
    assert int(state.phase) == ANSWERING and int(state.ended_by) == ENDED_BUDGET
    assert int(state.think_count) == 3 and int(state.decision_step) == 3


@pytest.mark.parametrize("impl", IMPLS)
def test_budget_cut_mid_marker_completes_it(impl):
    spec = _spec(POLICY_BUDGET, close=(CLOSE_A, CLOSE_B), max_think=3)
    # the third thinking token starts the close marker: it is finished, and leaves the thought count
    state, forced = _run(impl, spec, [0, 1, 2, CLOSE_A, CLOSE_B, EXIT1, EXIT2, 5])
    assert forced == [-1, -1, -1, CLOSE_B, EXIT1, EXIT2, -1, -1]
    assert int(state.think_count) == 2 and int(state.ended_by) == ENDED_BUDGET


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("policy", [POLICY_NONE, POLICY_PROBE], ids=["none", "probe"])
def test_skip_from_prompt_forces_open_close_exit(impl, policy):
    probe = _constant_probe(-5.0, 5.0) if policy == POLICY_PROBE else None
    spec = _spec(policy, probe=probe, skip_threshold=0.9)
    state, forced = _run(impl, spec, [0, OPEN, CLOSE_A, EXIT1, EXIT2, 9], phase=PROMPT)
    assert forced == [OPEN, CLOSE_A, EXIT1, EXIT2, -1, -1]
    assert int(state.phase) == ANSWERING and int(state.ended_by) == ENDED_SKIPPED
    assert int(state.decision_step) == 0 and int(state.think_count) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_skip_inside_open_block_starts_at_close(impl):
    state, forced = _run(impl, _spec(POLICY_NONE), [0, CLOSE_A, EXIT1, EXIT2], phase=THINKING)
    assert forced == [CLOSE_A, EXIT1, EXIT2, -1]


@pytest.mark.parametrize("impl", IMPLS)
def test_natural_close_is_counted_right(impl):
    spec = _spec(POLICY_FULL, close=(CLOSE_A, CLOSE_B))
    # open marker from the prompt phase, 3 thinking tokens (one a broken marker start), then the close marker
    state, forced = _run(impl, spec, [0, OPEN, 1, CLOSE_A, 2, CLOSE_A, CLOSE_B, 3], phase=PROMPT)
    assert forced == [-1] * 8
    assert int(state.phase) == ANSWERING and int(state.ended_by) == ENDED_NATURAL
    assert int(state.think_count) == 3
    assert int(state.decision_step) == 5  # the close marker's last token was written at step 5


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_score_never_stops(impl):
    spec = _spec(POLICY_PROBE, probe=_constant_probe(5.0, 5.0), threshold=0.0, skip_threshold=0.0)
    nan = torch.full((1, 8), float("nan"))
    state, forced = _run(impl, spec, [0] + [1] * 10, phase=THINKING, hidden=nan)
    assert forced == [-1] * 11
    assert int(state.phase) == THINKING and int(state.ended_by) == ENDED_NONE
    assert torch.isnan(state.score).all() and int(state.streak) == 0 and float(state.ema) == 0.0


@pytest.mark.parametrize("impl", IMPLS)
def test_probe_stop_waits_for_min_patience_and_boundary(impl):
    spec = _spec(POLICY_PROBE, probe=_constant_probe(5.0, -5.0), min_think=2, patience=2, boundary_only=True)
    # thinking tokens 1, 2 (min reached at step 2), streak 1 at step 2, 2 at step 3, boundary token 7 at step 4
    state, forced = _run(impl, spec, [0, 1, 2, 3, 7, CLOSE_A, EXIT1, EXIT2], phase=THINKING)
    assert forced == [-1, -1, -1, -1, CLOSE_A, EXIT1, EXIT2, -1]
    assert int(state.ended_by) == ENDED_PROBE and int(state.decision_step) == 4 and int(state.think_count) == 4


@pytest.mark.parametrize("impl", IMPLS)
def test_eos_ends_the_row(impl):
    state, forced = _run(impl, _spec(POLICY_BUDGET, max_think=2), [0, 1, EOS, 3, 4])
    assert int(state.phase) == 4 and int(state.ended_by) == ENDED_NONE and forced == [-1] * 5


def test_bad_impl_name_raises():
    spec = _spec(POLICY_FULL)
    with pytest.raises(ValueError, match="impl"):
        probe_step(None, torch.tensor([0]), ControllerState.allocate(1, "cpu"), spec, impl="cuda")


@pytest.mark.kernels
def test_triton_rejects_bad_inputs():
    from adaptive_think.kernels.probe_step.triton_kernel import probe_step_triton

    gen = torch.Generator().manual_seed(0)
    spec = random_spec(gen, 40, POLICY_PROBE, random_probe(16, 4, gen))
    state = ControllerState.allocate(2, "cpu")
    with pytest.raises(ValueError, match="hidden must be"):
        probe_step_triton(torch.zeros(2, 15), torch.zeros(2, dtype=torch.int64), state, spec)
    with pytest.raises(ValueError, match="bf16/fp16/fp32"):
        probe_step_triton(torch.zeros(2, 16, dtype=torch.float64), torch.zeros(2, dtype=torch.int64), state, spec)
    with pytest.raises(ValueError, match="last_token"):
        probe_step_triton(torch.zeros(2, 16), torch.zeros(3, dtype=torch.int64), state, spec)
    state.ema = state.ema.double()
    with pytest.raises(ValueError, match="state.ema"):
        probe_step_triton(torch.zeros(2, 16), torch.zeros(2, dtype=torch.int64), state, spec)
