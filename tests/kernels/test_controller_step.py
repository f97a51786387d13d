"""controller_step: the Triton kernel against the torch reference, and the reference against hand-worked cases.

Run: pytest tests/kernels/test_controller_step.py -q   (on CPU the kernel runs in Triton's interpreter)
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_think.controller import controller_step
from adaptive_think.controller.params import P_PATIENCE, P_POLICY, P_SKIP_THRESHOLD, P_THRESHOLD, RowParams, RowSettings
from adaptive_think.controller.state import (
    ANSWERING,
    DONE,
    ENDED_BUDGET,
    ENDED_NATURAL,
    ENDED_NONE,
    ENDED_PROBE,
    ENDED_SKIPPED,
    NO_LIMIT,
    NO_MEMORY,
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
from adaptive_think.controller.step import controller_step_reference
from kernel_cases import (
    TokenStreams,
    assert_states_equal,
    garble,
    random_hidden,
    random_params,
    random_probe,
    random_spec,
    random_state,
    with_random_memory,
)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on NaN/inf rows

# hidden states are cast to fp32 before any arithmetic in both implementations, so only the summation
# order differs; the half types get a little more room for the larger values they round to
DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
    pytest.param(torch.bfloat16, 2e-5, 2e-5, id="bf16"),
    pytest.param(torch.float16, 2e-5, 2e-5, id="fp16"),
]


SHAPES = [(1, 64, 1), (5, 64, 1), (3, 100, 16), (63, 257, 40), (500, 33, 20)]


def _triton_step(hidden, tok, state, params, spec, split=False, levels=None):
    from adaptive_think.controller import kernel_buffers

    # the partials must all be rewritten by the launch that reads them (skip partials only at step 0)
    ws = getattr(state, kernel_buffers._WORKSPACE_ATTR, None)
    if ws is not None:
        ws.partials.fill_(float("nan"))
    kernel_buffers.controller_step_triton(hidden, tok, state, params, spec, split=split, levels=levels)
    ws = getattr(state, kernel_buffers._WORKSPACE_ATTR, None)
    if ws is not None:  # every launch leaves its tickets at 0 for the next one
        assert not ws.tickets.any()


def _random_step_case(gen, B, D, H, dtype, step, relu, memory=0, counts=0):
    """A random probe and mid-run state where stops and step-0 skips happen: (spec, params, state, hidden, tok)."""
    probe = random_probe(D, H, gen, relu=relu, **({"memory": memory, "counts": counts} if memory else {}))
    spec = random_spec(gen, 50, probe)
    params = random_params(gen, B, 50, spec)
    params.floats[P_SKIP_THRESHOLD].fill_(0.5)  # some probe rows skip at their step 0
    params.ints[P_PATIENCE].fill_(1)  # stops happen
    state = random_state(B, gen, spec, params, step)
    if memory:
        state = with_random_memory(state, memory, gen)
    hidden = random_hidden(B, D, dtype, gen)
    tok = torch.randint(0, 50, (B,), generator=gen)
    return spec, params, state, hidden, tok


# ----------------------------------------------------------------------------------------------------
# kernel == reference, one step from random mid-run states with random per-row params


@pytest.mark.kernels
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("B, D, H", SHAPES, ids=[f"B{b}-D{d}-H{h}" for b, d, h in SHAPES])
@pytest.mark.parametrize("step", [0, 5, None], ids=["step0", "step5", "mixed-steps"])
def test_one_step_matches_reference(step, B, D, H, dtype, atol, rtol):
    gen = torch.Generator().manual_seed(B * 1000 + D + H + (step if step is not None else 7))
    spec, params, state, hidden, tok = _random_step_case(gen, B, D, H, dtype, step, relu=H > 1)
    want = state.clone()
    controller_step_reference(hidden, tok, want, params, spec)
    _triton_step(hidden, tok, state, params, spec)
    assert_states_equal(state, want, atol, rtol, where=f"B{B}-D{D}-H{H}-{dtype}")
    probe_rows = params.ints[P_POLICY] == POLICY_PROBE
    assert torch.isnan(state.score[~probe_rows]).all()  # only probe rows score
    if B > 2 and probe_rows[1]:  # the NaN row scores NaN, the inf rows do not crash
        assert torch.isnan(state.score[1])


@pytest.mark.kernels
@pytest.mark.parametrize("B, D, H", [(1, 64, 1), (63, 257, 40)], ids=["B1-D64-H1", "B63-D257-H40"])
@pytest.mark.parametrize("step", [0, None], ids=["step0", "mixed-steps"])
def test_two_launches_match_the_reference(step, B, D, H):
    """The split design (heads, then the state machine in a second launch) computes the same step."""
    gen = torch.Generator().manual_seed(B + D + H + (step or 3))
    spec, params, state, hidden, tok = _random_step_case(gen, B, D, H, torch.bfloat16, step, relu=H > 1)
    want = state.clone()
    controller_step_reference(hidden, tok, want, params, spec)
    _triton_step(hidden, tok, state, params, spec, split=True)
    assert_states_equal(state, want, 2e-5, 2e-5, where=f"split B{B}-D{D}-H{H}")


@pytest.mark.kernels
@pytest.mark.parametrize("policy", [POLICY_FULL, POLICY_NONE, POLICY_BUDGET, POLICY_PROBE, None],
                         ids=["full", "none", "budget", "probe", "mixed"])
def test_no_probe_reads(policy):
    """Without a probe (or without hidden) the kernel runs the state machine alone; scores are NaN."""
    gen = torch.Generator().manual_seed(policy if policy is not None else 9)
    spec = random_spec(gen, 40, None)
    params = random_params(gen, 37, 40, spec, policy)
    for step in (0, 3, None):
        state = random_state(37, gen, spec, params, step)
        tok = torch.randint(0, 40, (37,), generator=gen, dtype=torch.int32)  # int32 tokens are accepted too
        want = state.clone()
        controller_step_reference(None, tok, want, params, spec)
        _triton_step(None, tok, state, params, spec)
        assert_states_equal(state, want, 0.0, 0.0, where=f"policy{policy}-step{step}")
        assert torch.isnan(state.score).all()


# ----------------------------------------------------------------------------------------------------
# kernel == reference over whole runs: scripted token streams with markers, eos and forced tokens


CASES = [  # (B, D, H, policy (None: mixed per row), seed)
    (1, 48, 16, POLICY_PROBE, 0),
    (3, 100, 16, None, 1),
    (8, 64, 1, POLICY_PROBE, 2),
    (17, 40, 24, None, 3),
    (7, 32, 8, POLICY_BUDGET, 4),  # full and none rows run in the mixed cases (and alone in test_no_probe_reads)
]


@pytest.mark.kernels
@pytest.mark.parametrize("B, D, H, policy, seed", CASES, ids=[f"B{c[0]}-D{c[1]}-H{c[2]}-policy{c[3]}-seed{c[4]}" for c in CASES])
def test_state_machine_matches_reference(B, D, H, policy, seed):
    gen = torch.Generator().manual_seed(100 + seed)
    vocab = 60
    probe = random_probe(D, H, gen, relu=H > 1)
    for trial in range(2):  # fresh random markers, limits, thresholds and texts per trial
        spec = random_spec(gen, vocab, probe)
        params = random_params(gen, B, vocab, spec, policy)
        streams = TokenStreams(B, vocab, spec, gen)
        want = ControllerState.allocate(B, "cpu")
        want.phase.copy_((torch.rand(B, generator=gen) < 0.5).int())  # PROMPT or already THINKING
        got = want.clone()
        garble(got)
        tok = torch.zeros(B, dtype=torch.int64)
        for step in range(20):
            hidden = random_hidden(B, D, torch.float32, gen, bad_rows=False)
            if B > 1:
                hidden[0] = float("nan")  # row 0 never has a valid score
            if step == 9 and B > 2:  # restart row 2 mid-run: its own step 0 again while the others go on
                for s in (want, got):
                    s.ints[:, 2] = ControllerState.allocate(1, "cpu").ints[:, 0]
            controller_step_reference(hidden, tok, want, params, spec)
            _triton_step(hidden, tok, got, params, spec)
            # each side runs on its own state: the EMA's error is the scores' summation-order error (fp32,
            # ~1e-7 relative), and the EMA only shrinks past error (weight 1 - alpha < 1), so the same tolerance
            # holds after any number of steps; a drift that builds up over steps fails here
            assert_states_equal(got, want, 1e-5, 1e-5, where=f"trial {trial} step {step}")
            garble(got)
            got.forced.copy_(want.forced)
            tok = streams.next(want.forced)
        if B > 1:
            assert want.ended_by[0] != ENDED_PROBE  # NaN never stops


# ----------------------------------------------------------------------------------------------------
# a probe with memory: kernel == reference over whole runs (the maxima through blocks, resets, stops)

MEMORY_CASES = [  # (B, D, H, K, hidden dtype, atol, rtol, split, levels, seed); D > 64 splits D in the interpreter
    pytest.param(9, 100, 16, 3, torch.float32, 1e-6, 1e-5, False, 2, 0, id="B9-D100-H16-K3-fp32-splitD"),
    pytest.param(6, 100, 24, 8, torch.float32, 1e-6, 1e-5, False, 1, 4, id="B6-D100-H24-K8-fp32-splitD-one-level"),
    pytest.param(6, 40, 24, 8, torch.bfloat16, 1e-6, 1e-5, False, None, 4, id="B6-D40-H24-K8-bf16"),
    pytest.param(5, 130, 8, 5, torch.float32, 1e-6, 1e-5, True, 2, 2, id="B5-D130-H8-K5-fp32-splitD-two-launches"),
    pytest.param(5, 130, 8, 5, torch.float32, 1e-6, 1e-5, True, 1, 3, id="B5-D130-H8-K5-one-level-two-launches"),
]


@pytest.mark.kernels
@pytest.mark.parametrize("B, D, H, K, C, dtype, atol, rtol", [
    pytest.param(300, 70, 40, 3, 0, torch.float32, 1e-6, 1e-5, id="B300-D70-H40-K3-fp32"),  # 3 row blocks, 3 unit chunks
    pytest.param(63, 257, 100, 16, 0, torch.bfloat16, 1e-6, 1e-5, id="B63-D257-H100-K16-bf16"),
    pytest.param(100, 70, 24, 8, 3, torch.float32, 1e-6, 1e-5, id="B100-D70-H24-K8-C3-fp32"),  # 3 counting units
])
def test_memory_probe_one_step_matches_reference(B, D, H, K, C, dtype, atol, rtol):
    """One step from random mid-run states holding random maxima and counts (some rows none yet), NaN / inf
    hidden rows."""
    gen = torch.Generator().manual_seed(B + D + H + K)
    spec, params, state, hidden, tok = _random_step_case(gen, B, D, H, dtype, None, relu=True, memory=K, counts=C)
    before = state.memory.clone()
    want = state.clone()
    controller_step_reference(hidden, tok, want, params, spec)
    _triton_step(hidden, tok, state, params, spec)
    assert_states_equal(state, want, atol, rtol, where=f"B{B}-D{D}-H{H}-K{K}-{dtype}")
    assert (want.memory != before).any(0).sum() > B // 10  # many rows' maxima moved (or were reset)


@pytest.mark.kernels
@pytest.mark.parametrize("B, D, H, K, dtype, atol, rtol, split, levels, seed", MEMORY_CASES)
def test_memory_probe_matches_reference(B, D, H, K, dtype, atol, rtol, split, levels, seed):
    """Scripted streams (markers, eos, forced tokens), mixed policies, every row from its step 0, one row restarted
    mid-run: the kernel's maxima, scores and decisions equal the reference's at every step. The run must cover a
    thought read, a block opened over an earlier block's maxima (the reset), a probe stop and a non-probe row."""
    gen = torch.Generator().manual_seed(200 + seed)
    vocab = 60
    probe = random_probe(D, H, gen, relu=H > 1, memory=K)
    spec = random_spec(gen, vocab, probe, lo=1, lc=1)
    params = random_params(gen, B, vocab, spec)
    # probe rows, with none / budget / full rows between them (the maxima are kept whatever the policy)
    params.ints[P_POLICY].copy_(torch.tensor([POLICY_PROBE, POLICY_NONE, POLICY_PROBE, POLICY_BUDGET, POLICY_PROBE,
                                       POLICY_FULL] * B)[:B])
    params.ints[P_PATIENCE].fill_(1)  # low thresholds: probe stops come within the run
    params.floats[P_THRESHOLD].mul_(0.5)
    streams = TokenStreams(B, vocab, spec, gen)
    want = ControllerState.allocate(B, "cpu", memory_size=K)
    want.phase.copy_((torch.rand(B, generator=gen) < 0.5).int())  # PROMPT or already THINKING
    got = want.clone()
    garble(got)
    tok = torch.zeros(B, dtype=torch.int64)
    seen = dict(read=0, reset=0, probe_stop=0)
    for step in range(24):
        hidden = random_hidden(B, D, dtype, gen, bad_rows=step % 8 == 5)  # NaN / inf rows now and then
        if step == 10:  # restart row 2 mid-run, as a new request in its slot: its own step 0 again, no memory
            fresh = ControllerState.allocate(1, "cpu", memory_size=K)
            for s in (want, got):
                s.ints[:, 2], s.memory[:, 2] = fresh.ints[:, 0], fresh.memory[:, 0]
        before, blocks = want.memory.clone(), want.blocks.clone()
        controller_step_reference(hidden, tok, want, params, spec)
        _triton_step(hidden, tok, got, params, spec, split=split, levels=levels)
        assert_states_equal(got, want, atol, rtol, where=f"step {step}")  # own states: see test_state_machine...
        seen["read"] += int((want.memory != before).any(0).sum())
        remembered = (before != NO_MEMORY).any(0)
        seen["reset"] += int(((want.blocks > blocks) & remembered & (want.memory == NO_MEMORY).all(0)).sum())
        seen["probe_stop"] += int(((want.ended_by == ENDED_PROBE) & (want.decision_step == want.step - 1)).sum())
        garble(got)
        got.forced.copy_(want.forced)
        tok = streams.next(want.forced)
    assert all(seen.values()), f"the run does not cover every case: {seen}"


@pytest.mark.kernels
def test_packed_probe_follows_the_probe():
    """The probe's weights are packed once per probe into one buffer whose views its fields become: a state
    stepped with another probe uses that probe's buffer, and weights changed in place (an engine copying a new
    probe into its captured one) are what the next launch reads."""
    from adaptive_think.controller.kernel_buffers import packed_probe

    gen = torch.Generator().manual_seed(5)
    B, D, H, K = 3, 40, 16, 3
    first, second = random_probe(D, H, gen, memory=K), random_probe(D, H, gen, memory=K)
    spec = random_spec(gen, 50, first)
    params = random_params(gen, B, 50, spec, POLICY_PROBE)
    want = ControllerState.allocate(B, "cpu", memory_size=K)
    want.phase.fill_(THINKING)
    want.step.fill_(3)
    got = want.clone()
    for i, probe in enumerate([first, second, first, "in place", first]):
        if probe == "in place":
            first.memory_w.mul_(-1.0)
            first.ready_w1[:, :D].mul_(0.5)
            first.skip_b2.add_(1.0)
            probe = first
        spec.probe = probe
        hidden = random_hidden(B, D, torch.float32, gen, bad_rows=False)
        tok = torch.randint(0, 10, (B,), generator=gen)  # ordinary text: every row reads a thought token
        controller_step_reference(hidden, tok, want, params, spec)
        _triton_step(hidden, tok, got, params, spec)
        assert_states_equal(got, want, 1e-6, 1e-5, where=f"call {i}")
    buffer, _ = packed_probe(first)
    assert packed_probe(first)[0] is buffer  # not rebuilt per call
    assert first.ready_w1.data_ptr() >= buffer.data_ptr() and first.skip_b2.untyped_storage().data_ptr() == \
        buffer.untyped_storage().data_ptr()  # the fields are views of it
    first.ready_b1 = first.ready_b1.clone()  # a field replaced: packed again
    assert packed_probe(first)[0] is not buffer


@pytest.mark.kernels
@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("memory", [0, 4], ids=["no-memory", "K4"])
def test_reduction_levels_match_the_reference(levels, memory):
    """Both reduction schemes of split-D heads, on odd sizes with NaN / inf rows, at step 0 and mid-run."""
    gen = torch.Generator().manual_seed(levels * 10 + memory)
    for step in (0, None):
        spec, params, state, hidden, tok = _random_step_case(gen, 7, 131, 21, torch.float32, step, relu=True,
                                                             memory=memory)
        want = state.clone()
        controller_step_reference(hidden, tok, want, params, spec)
        _triton_step(hidden, tok, state, params, spec, levels=levels)
        assert_states_equal(state, want, 1e-6, 1e-5, where=f"levels {levels} step {step}")
    with pytest.raises(ValueError, match="levels must be 1 or 2"):
        _triton_step(hidden, tok, state, params, spec, levels=3)


# ----------------------------------------------------------------------------------------------------
# hand-worked cases, for the reference and the kernel alike

IMPLS = ["torch", pytest.param("triton", marks=pytest.mark.kernels)]
OPEN, CLOSE_A, CLOSE_B, EXIT1, EXIT2, EOS, STOP1, STOP2 = 20, 21, 22, 23, 24, 25, 26, 27


def _constant_probe(ready_logit: float, skip_logit: float, d: int = 8) -> ProbeTensors:
    """A linear probe that scores sigmoid(ready_logit) / sigmoid(skip_logit) whatever the hidden state."""
    z = torch.zeros
    return ProbeTensors(mean=z(d), inv_std=torch.ones(d), ready_w1=z(1, d), ready_b1=z(1), ready_w2=torch.ones(1),
                        ready_b2=torch.tensor([ready_logit]), skip_w1=z(1, d), skip_b1=z(1), skip_w2=torch.ones(1),
                        skip_b2=torch.tensor([skip_logit]), relu=False)


def _case(policy, close=(CLOSE_A,), max_think=NO_LIMIT, min_think=0, patience=1, boundary_only=False, probe=None,
          threshold=0.5, skip_threshold=2.0, stop=(), open_=(OPEN,)) -> tuple[ControllerSpec, RowParams]:
    """A one-row (spec, params): exit text EXIT1 EXIT2, no empty-block text, token 7 a boundary."""
    is_boundary = torch.zeros(32, dtype=torch.bool)
    is_boundary[7] = True
    spec = ControllerSpec.build(open_, close, (EOS,), is_boundary=is_boundary, probe=probe)
    row = RowSettings(policy=policy, min_think=min_think, max_think=max_think, threshold=threshold,
                      skip_threshold=skip_threshold, alpha=1.0, patience=patience, boundary_only=boundary_only,
                      trace=False, exit_ids=(EXIT1, EXIT2), stop_ids=tuple(stop))
    return spec, RowParams.pack([row], open_, (), close, 16, "cpu")


def _run(impl, case, tokens, phase=THINKING, hidden=None):
    """Feed tokens[t] as the token written before step t (tokens[0] is ignored); returns forced tokens per step."""
    spec, params = case
    state = ControllerState.allocate(1, "cpu")
    state.phase.fill_(phase)
    state.blocks.fill_(int(phase == THINKING))  # as init_rows starts a row whose prompt opened the block
    forced = []
    for i, t in enumerate(tokens):
        h = hidden if hidden is not None else (torch.zeros(1, 8) if spec.probe is not None else None)
        h = h[i] if isinstance(h, list) else h  # a list: one hidden state per step
        controller_step(h, torch.tensor([t]), state, params, spec, impl=impl)
        forced.append(int(state.forced))
    return state, forced


@pytest.mark.parametrize("impl", IMPLS)
def test_budget_cut_forces_the_exit_once(impl):
    # step 0 is the prompt; tokens 1, 2, 3 are thinking; then the forced tokens are written back
    state, forced = _run(impl, _case(POLICY_BUDGET, max_think=3), [0, 1, 2, 3, CLOSE_A, EXIT1, EXIT2, 5, 6])
    assert forced == [-1, -1, -1, CLOSE_A, EXIT1, EXIT2, -1, -1, -1]
    assert int(state.phase) == ANSWERING and int(state.ended_by) == ENDED_BUDGET
    assert int(state.think_count) == 3 and int(state.decision_step) == 3


@pytest.mark.parametrize("impl", IMPLS)
def test_budget_stop_text_is_thinking_inside_the_budget(impl):
    case = _case(POLICY_BUDGET, max_think=5, stop=(STOP1, STOP2))
    # 3 thinking tokens, then the stop starts early enough for its 2 tokens to end exactly at the budget
    state, forced = _run(impl, case, [0, 1, 2, 3, STOP1, STOP2, CLOSE_A, EXIT1, EXIT2, 5])
    assert forced == [-1, -1, -1, STOP1, STOP2, CLOSE_A, EXIT1, EXIT2, -1, -1]
    assert int(state.think_count) == 5 and int(state.ended_by) == ENDED_BUDGET and int(state.decision_step) == 3


@pytest.mark.parametrize("impl", IMPLS)
def test_probe_stop_writes_the_stop_text(impl):
    case = _case(POLICY_PROBE, probe=_constant_probe(5.0, -5.0), min_think=2, stop=(STOP1,))
    state, forced = _run(impl, case, [0, 1, 2, STOP1, CLOSE_A, EXIT1, EXIT2])
    assert forced == [-1, -1, STOP1, CLOSE_A, EXIT1, EXIT2, -1]
    assert int(state.think_count) == 3 and int(state.ended_by) == ENDED_PROBE


@pytest.mark.parametrize("impl", IMPLS)
def test_budget_cut_mid_marker_completes_it(impl):
    case = _case(POLICY_BUDGET, close=(CLOSE_A, CLOSE_B), max_think=3, stop=(STOP1,))
    # the second thinking token starts the close marker as the budget (minus the stop text) is reached: the
    # marker is finished without stop text, and its first token leaves the thought count
    state, forced = _run(impl, case, [0, 1, CLOSE_A, CLOSE_B, EXIT1, EXIT2, 5])
    assert forced == [-1, -1, CLOSE_B, EXIT1, EXIT2, -1, -1]
    assert int(state.think_count) == 1 and int(state.ended_by) == ENDED_BUDGET


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("policy", [POLICY_NONE, POLICY_PROBE], ids=["none", "probe"])
def test_skip_from_prompt_forces_open_close_exit_without_stop_text(impl, policy):
    probe = _constant_probe(-5.0, 5.0) if policy == POLICY_PROBE else None
    case = _case(policy, probe=probe, skip_threshold=0.9, stop=(STOP1,), max_think=4)
    state, forced = _run(impl, case, [0, OPEN, CLOSE_A, EXIT1, EXIT2, 9], phase=PROMPT)
    assert forced == [OPEN, CLOSE_A, EXIT1, EXIT2, -1, -1]
    assert int(state.phase) == ANSWERING and int(state.ended_by) == ENDED_SKIPPED
    assert int(state.decision_step) == 0 and int(state.think_count) == 0 and int(state.blocks) == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_skip_inside_open_block_starts_at_close(impl):
    state, forced = _run(impl, _case(POLICY_NONE), [0, CLOSE_A, EXIT1, EXIT2], phase=THINKING)
    assert forced == [CLOSE_A, EXIT1, EXIT2, -1]


@pytest.mark.parametrize("impl", IMPLS)
def test_natural_close_is_counted_right(impl):
    case = _case(POLICY_FULL, close=(CLOSE_A, CLOSE_B))
    # open marker from the prompt phase, 3 thinking tokens (one a broken marker start), then the close marker
    state, forced = _run(impl, case, [0, OPEN, 1, CLOSE_A, 2, CLOSE_A, CLOSE_B, 3], phase=PROMPT)
    assert forced == [-1] * 8
    assert int(state.phase) == ANSWERING and int(state.ended_by) == ENDED_NATURAL
    assert int(state.think_count) == 3 and int(state.blocks) == 1
    assert int(state.decision_step) == 5  # the close marker's last token was written at step 5


@pytest.mark.parametrize("impl", IMPLS)
def test_self_overlapping_close_marker_is_found(impl):
    # close marker A A B after A A A B: a matcher that restarts on a mismatch misses it
    case = _case(POLICY_FULL, close=(CLOSE_A, CLOSE_A, CLOSE_B))
    state, _ = _run(impl, case, [0, 1, CLOSE_A, CLOSE_A, CLOSE_A, CLOSE_B, 3])
    assert int(state.phase) == ANSWERING and int(state.ended_by) == ENDED_NATURAL
    assert int(state.think_count) == 2  # 1 and the first A; the last A A B is the marker
    # and an open marker O O B after O O O B
    case = _case(POLICY_FULL, open_=(OPEN, OPEN, CLOSE_B))
    state, _ = _run(impl, case, [0, OPEN, OPEN, OPEN, CLOSE_B, 1], phase=PROMPT)
    assert int(state.phase) == THINKING and int(state.think_count) == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_eos_inside_a_thought_is_not_a_thinking_token(impl):
    state, _ = _run(impl, _case(POLICY_FULL), [0, OPEN, 1, EOS], phase=PROMPT)
    assert int(state.phase) == DONE and int(state.think_count) == 1  # [open, t, eos]: one thinking token


@pytest.mark.parametrize("impl", IMPLS)
def test_second_block_shares_the_budget(impl):
    case = _case(POLICY_BUDGET, max_think=3)
    # block 1: two tokens, closed by the model; answer; block 2 opened by the model: one token, then the cut
    tokens = [0, 1, 2, CLOSE_A, 5, OPEN, 3, CLOSE_A, EXIT1, EXIT2, 6]
    state, forced = _run(impl, case, tokens)
    assert forced == [-1] * 6 + [CLOSE_A, EXIT1, EXIT2, -1, -1]
    assert int(state.think_count) == 3 and int(state.blocks) == 2
    assert int(state.ended_by) == ENDED_BUDGET and int(state.decision_step) == 6


@pytest.mark.parametrize("impl", IMPLS)
def test_second_block_after_the_budget_is_spent_closes_at_once(impl):
    case = _case(POLICY_BUDGET, max_think=2, stop=(STOP1,))
    # block 1 cut by the budget (stop text included), answer, block 2: closed at once, no room for stop text
    tokens = [0, 1, STOP1, CLOSE_A, EXIT1, EXIT2, 5, OPEN, CLOSE_A, EXIT1, EXIT2, 6]
    state, forced = _run(impl, case, tokens)
    assert forced == [-1, STOP1, CLOSE_A, EXIT1, EXIT2, -1, -1, CLOSE_A, EXIT1, EXIT2, -1, -1]
    assert int(state.think_count) == 2 and int(state.blocks) == 2 and int(state.ended_by) == ENDED_BUDGET


@pytest.mark.parametrize("impl", IMPLS)
def test_policy_none_skips_every_later_block(impl):
    state, forced = _run(impl, _case(POLICY_NONE), [0, OPEN, CLOSE_A, EXIT1, EXIT2, 5, OPEN, CLOSE_A, EXIT1, EXIT2],
                         phase=PROMPT)
    assert forced == [OPEN, CLOSE_A, EXIT1, EXIT2, -1, -1, CLOSE_A, EXIT1, EXIT2, -1]
    assert int(state.blocks) == 2 and int(state.ended_by) == ENDED_SKIPPED and int(state.think_count) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_score_never_stops(impl):
    case = _case(POLICY_PROBE, probe=_constant_probe(5.0, 5.0), threshold=0.0, skip_threshold=0.0)
    nan = torch.full((1, 8), float("nan"))
    state, forced = _run(impl, case, [0] + [1] * 10, phase=THINKING, hidden=nan)
    assert forced == [-1] * 11
    assert int(state.phase) == THINKING and int(state.ended_by) == ENDED_NONE
    assert torch.isnan(state.score).all() and int(state.streak) == 0 and float(state.ema) == 0.0


@pytest.mark.parametrize("impl", IMPLS)
def test_probe_stop_waits_for_min_patience_and_boundary(impl):
    case = _case(POLICY_PROBE, probe=_constant_probe(5.0, -5.0), min_think=2, patience=2, boundary_only=True)
    # a boundary-only row counts patience in boundaries (token 7): the one at step 1 comes before min_think, the
    # one at step 3 starts the streak, tokens between boundaries neither count nor reset it, step 5's stops
    state, forced = _run(impl, case, [0, 7, 1, 7, 2, 7, CLOSE_A, EXIT1, EXIT2])
    assert forced == [-1, -1, -1, -1, -1, CLOSE_A, EXIT1, EXIT2, -1]
    assert int(state.ended_by) == ENDED_PROBE and int(state.decision_step) == 5 and int(state.think_count) == 5


@pytest.mark.parametrize("impl", IMPLS)
def test_boundary_patience_resets_on_a_boundary_under_the_threshold(impl):
    # ready = sigmoid(10 h[0]): over the threshold at the boundaries of steps 1, 5 and 7, under at step 3's;
    # non-boundary steps are under (step 4) or over (step 6) and change nothing
    z = torch.zeros(8)
    probe = ProbeTensors(mean=z, inv_std=torch.ones(8), ready_w1=torch.eye(8)[:1] * 10, ready_b1=torch.zeros(1),
                         ready_w2=torch.ones(1), ready_b2=torch.zeros(1), skip_w1=torch.zeros(1, 8),
                         skip_b1=torch.zeros(1), skip_w2=torch.ones(1), skip_b2=torch.tensor([-5.0]), relu=False)
    over, under = torch.eye(8)[:1], -torch.eye(8)[:1]
    case = _case(POLICY_PROBE, probe=probe, patience=2, boundary_only=True)
    hidden = [under, over, under, under, under, over, over, over, under]
    state, forced = _run(impl, case, [0, 7, 1, 7, 2, 7, 3, 7, CLOSE_A], hidden=hidden)
    assert forced == [-1, -1, -1, -1, -1, -1, -1, CLOSE_A, EXIT1]
    assert int(state.decision_step) == 7


@pytest.mark.parametrize("impl", IMPLS)
def test_eos_ends_the_row(impl):
    state, forced = _run(impl, _case(POLICY_BUDGET, max_think=2), [0, 1, EOS, 3, 4])
    assert int(state.phase) == DONE and int(state.ended_by) == ENDED_NONE and forced == [-1] * 5


# ----------------------------------------------------------------------------------------------------
# the marker matcher against a plain Python one, over random (often self-overlapping) markers and streams


def _python_matches(marker: list[int], stream: list[int]) -> tuple[list[int], int]:
    """(matched-prefix length after each token, index of the token that completes the marker or -1)."""
    out, buf = [], []
    for i, t in enumerate(stream):
        buf.append(t)
        if buf[-len(marker):] == marker:
            return out + [len(marker)], i
        out.append(max(j for j in range(len(marker)) if j == 0 or buf[-j:] == marker[:j]))
    return out, -1


def _check_matcher(impl, marker, stream):
    spec, params = _case(POLICY_FULL, close=tuple(marker))
    want, hit = _python_matches(marker, stream)
    state = ControllerState.allocate(1, "cpu")
    state.phase.fill_(THINKING)
    controller_step(None, torch.tensor([0]), state, params, spec, impl=impl)  # step 0 observes nothing
    for i, t in enumerate(stream):
        controller_step(None, torch.tensor([t]), state, params, spec, impl=impl)
        if i == hit:
            assert int(state.phase) == ANSWERING and int(state.think_count) == i + 1 - len(marker)
            return
        assert int(state.phase) == THINKING and int(state.close_match) == want[i], (marker, stream[: i + 1])
    assert hit == -1


_MARKERS = st.lists(st.integers(0, 2), min_size=1, max_size=4)
_STREAMS = st.lists(st.integers(0, 3), max_size=30)


@settings(max_examples=150, deadline=None)
@given(marker=_MARKERS, stream=_STREAMS)
def test_matcher_property_reference(marker, stream):
    _check_matcher("torch", marker, stream)


@pytest.mark.kernels
@settings(max_examples=12, deadline=None)
@given(marker=_MARKERS, stream=st.lists(st.integers(0, 3), max_size=14))
def test_matcher_property_triton(marker, stream):
    _check_matcher("triton", marker, stream)


def test_bad_impl_name_raises():
    spec, params = _case(POLICY_FULL)
    with pytest.raises(ValueError, match="impl"):
        controller_step(None, torch.tensor([0]), ControllerState.allocate(1, "cpu"), params, spec, impl="cuda")


@pytest.mark.kernels
def test_triton_rejects_bad_inputs():
    from adaptive_think.controller.kernel_buffers import controller_step_triton

    gen = torch.Generator().manual_seed(0)
    spec = random_spec(gen, 40, random_probe(16, 4, gen))
    params = random_params(gen, 2, 40, spec)
    state = ControllerState.allocate(2, "cpu")
    with pytest.raises(ValueError, match="hidden must be"):
        controller_step_triton(torch.zeros(2, 15), torch.zeros(2, dtype=torch.int64), state, params, spec)
    with pytest.raises(ValueError, match="bf16/fp16/fp32"):
        controller_step_triton(torch.zeros(2, 16, dtype=torch.float64), torch.zeros(2, dtype=torch.int64), state, params, spec)
    with pytest.raises(ValueError, match="last_token"):
        controller_step_triton(torch.zeros(2, 16), torch.zeros(3, dtype=torch.int64), state, params, spec)
    with pytest.raises(ValueError, match="params.ints"):
        controller_step_triton(torch.zeros(2, 16), torch.zeros(2, dtype=torch.int64), state, random_params(gen, 3, 40, spec), spec)
    state.floats = state.floats.double()
    with pytest.raises(ValueError, match="state.floats"):
        controller_step_triton(torch.zeros(2, 16), torch.zeros(2, dtype=torch.int64), state, params, spec)
    # a probe with memory: the state keeps its K maxima, and the weights agree on K
    memory_spec = random_spec(gen, 40, random_probe(16, 4, gen, memory=3))
    with pytest.raises(ValueError, match=r"state.floats must be \[NS_FLOAT \+ K, B\].*memory_size=3"):
        controller_step_triton(torch.zeros(2, 16), torch.zeros(2, dtype=torch.int64), ControllerState.allocate(2, "cpu"),
                          params, memory_spec)
    state = ControllerState.allocate(2, "cpu", memory_size=3)
    memory_spec.probe.memory_b = torch.zeros(2)
    with pytest.raises(ValueError, match="memory shapes"):
        controller_step_triton(torch.zeros(2, 16), torch.zeros(2, dtype=torch.int64), state, params, memory_spec)
    memory_spec.probe.memory_b = None
    with pytest.raises(ValueError, match="both memory_w"):
        controller_step_triton(torch.zeros(2, 16), torch.zeros(2, dtype=torch.int64), state, params, memory_spec)
    memory_spec.probe.memory_b = torch.zeros(3)
    memory_spec.probe.ready_w1 = memory_spec.probe.ready_w1[:, :16].contiguous()
    with pytest.raises(ValueError, match=r"ready head shapes: w1 \[H, 19\]"):
        controller_step_triton(torch.zeros(2, 16), torch.zeros(2, dtype=torch.int64), state, params, memory_spec)
