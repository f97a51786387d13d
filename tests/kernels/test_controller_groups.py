"""Routed thresholds: a probe's route puts each probe row in a calibration group at its step 0, and the row runs its
group's thresholds for the whole request (the guard still wins). The Triton kernel against the torch reference, the
reference against hand-worked cases, and the host side (resolve_config, RowParams.pack, ThinkController's reports).

Run: pytest tests/kernels/test_controller_groups.py -q   (on CPU the kernel runs in Triton's interpreter)
"""

from __future__ import annotations

import pytest
import torch

from adaptive_think import ThinkConfig
from adaptive_think.controller import ThinkController, controller_step
from adaptive_think.controller.params import (
    NEVER,
    NO_GUARD,
    NP_FLOAT,
    P_FALLBACK_SKIP_THRESHOLD,
    P_FALLBACK_THRESHOLD,
    P_GROUPS,
    P_GUARD_THRESHOLD,
    P_PATIENCE,
    P_POLICY,
    P_SKIP_THRESHOLD,
    RowParams,
    RowSettings,
    resolve_config,
)
from adaptive_think.controller.state import (
    ENDED_BUDGET,
    ENDED_PROBE,
    ENDED_SKIPPED,
    POLICY_BUDGET,
    POLICY_PROBE,
    PROMPT,
    THINKING,
    ControllerSpec,
    ControllerState,
    ProbeTensors,
)
from adaptive_think.controller.step import controller_step_reference, guard_scores, normalised, route_rows
from adaptive_think.markers import ThinkMarkers
from kernel_cases import (
    TokenStreams,
    assert_states_equal,
    garble,
    random_hidden,
    random_params,
    random_probe,
    random_spec,
    random_state,
    with_random_guard,
    with_random_memory,
    with_random_route,
)
from test_controller_step import _triton_step

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns on NaN/inf rows

G = 3

GROUP_CASES = [  # (B, D, H, R guard rank or None, K, hidden dtype, split, levels, seed); D > 64 splits D
    pytest.param(9, 40, 16, None, 0, torch.float32, False, None, 0, id="B9-D40-H16"),
    pytest.param(6, 100, 16, 3, 0, torch.float32, False, 2, 1, id="B6-D100-H16-R3-splitD"),
    pytest.param(7, 40, 16, None, 3, torch.bfloat16, True, None, 2, id="B7-D40-H16-K3-bf16-two-launches"),
]


def _group_case(gen, B, D, H, R, K, dtype, step):
    """A random step (spec, params, state, hidden, tok) whose probe carries a route of G groups (and a guard of rank
    R), with per-row group tables of differing thresholds and rows already routed at earlier steps (one of them to a
    group past the table, which runs group 0's thresholds)."""
    probe = random_probe(D, H, gen, relu=True, **({"memory": K} if K else {}))
    if R is not None:
        probe = with_random_guard(probe, R, gen)
    spec = random_spec(gen, 50, with_random_route(probe, G, gen))
    params = random_params(gen, B, 50, spec)
    params.ints[P_POLICY][::2] = POLICY_PROBE  # plenty of probe rows
    params.floats[P_SKIP_THRESHOLD].fill_(0.5)
    params.ints[P_PATIENCE].fill_(1)
    hidden = random_hidden(B, D, dtype, gen)
    if R is not None:
        scores = guard_scores(normalised(hidden, spec.probe), spec.probe)
        ranked = scores[torch.isfinite(scores)].sort().values  # the threshold halfway between two scores: no near-tie
        params.floats[P_GUARD_THRESHOLD].fill_(float(ranked[len(ranked) // 2 - 1: len(ranked) // 2 + 1].mean()))
        params.floats[P_GUARD_THRESHOLD][::3] = NO_GUARD
        params.floats[P_FALLBACK_THRESHOLD].fill_(0.3)
        params.floats[P_FALLBACK_SKIP_THRESHOLD].fill_(NEVER)
    table = []
    for _ in range(G - 1):  # (ready, skip) of groups 1..G-1: some never stop or skip, the rest anywhere in (0, 1)
        table.append(torch.where(torch.rand(B, generator=gen) < 0.3, NEVER, torch.rand(B, generator=gen) * 0.8 + 0.1))
        table.append(torch.where(torch.rand(B, generator=gen) < 0.3, NEVER, torch.rand(B, generator=gen) * 0.8 + 0.1))
    params = RowParams(params.ints, torch.cat([params.floats, torch.stack(table)]).contiguous(), params.force)
    state = random_state(B, gen, spec, params, step)
    state.phase[::2] = torch.where(torch.rand((B + 1) // 2, generator=gen) < 0.5, PROMPT, THINKING).int()  # open rows
    if K:
        state = with_random_memory(state, K, gen)
    state.group.copy_(torch.randint(0, G, (B,), generator=gen))
    state.group[-1] = G + 4  # past the table
    tok = torch.randint(0, 50, (B,), generator=gen)
    return spec, params, state, hidden, tok


@pytest.mark.kernels
@pytest.mark.parametrize("B, D, H, R, K, dtype, split, levels, seed", GROUP_CASES)
def test_routed_step_matches_reference(B, D, H, R, K, dtype, split, levels, seed):
    """One step at step 0 and from mixed steps, then a short run: groups and routed decisions equal the reference's."""
    gen = torch.Generator().manual_seed(500 + seed)
    routed = set()
    for step in (0, None):
        spec, params, state, hidden, tok = _group_case(gen, B, D, H, R, K, dtype, step)
        want = state.clone()
        controller_step_reference(hidden, tok, want, params, spec)
        _triton_step(hidden, tok, state, params, spec, split=split, levels=levels)
        assert_states_equal(state, want, 1e-5, 1e-5, where=f"step {step}")
        routed |= set(want.group[(params.ints[P_POLICY] == POLICY_PROBE)].tolist())
    assert len(routed & set(range(G))) >= 2, f"the case must route probe rows to several groups, got {routed}"

    spec, params, want, _, _ = _group_case(gen, B, D, H, R, K, dtype, 0)
    got = want.clone()
    streams, tok = TokenStreams(B, 50, spec, gen), torch.zeros(B, dtype=torch.int64)
    for step in range(6):
        hidden = random_hidden(B, D, dtype, gen, bad_rows=False)
        controller_step_reference(hidden, tok, want, params, spec)
        _triton_step(hidden, tok, got, params, spec, split=split, levels=levels)
        assert_states_equal(got, want, 1e-5, 1e-5, where=f"run step {step}")
        garble(got)
        got.forced.copy_(want.forced)
        tok = streams.next(want.forced)


# ----------------------------------------------------------------------------------------------------
# hand-worked: three probe rows routed to three groups; group 0 never stops, group 1 stops at once, group 2 skips

IMPLS = ["torch", pytest.param("triton", marks=pytest.mark.kernels)]
OPEN, CLOSE, EXIT, EOS = 20, 21, 23, 25
D = 8
GROUP_PAIRS = ((0.0, NEVER), (NEVER, 0.0))  # groups 1 and 2 (group 0: the row's own NEVER, NEVER)
BUDGET_STOP = [-1, -1, -1, -1, -1, -1, CLOSE, EXIT]  # opens at step 1, thinks 5 tokens, the budget closes
PROBE_STOP = [-1, CLOSE, EXIT]
SKIP = [OPEN, CLOSE, EXIT]


def _routed_probe(guard: bool = False) -> ProbeTensors:
    """Ready score sigmoid(0) = 0.5 and skip score sigmoid(-4) everywhere; a route sending 2 e_g to group g; with
    `guard`, a guard scoring |h|^2 (4 for every row here)."""
    z = torch.zeros
    extra = {"guard_mean": z(D), "guard_dirs": torch.eye(D)[:1].contiguous(), "guard_coef": torch.tensor([0.0, 1.0])}
    extra = extra if guard else {}
    return ProbeTensors(mean=z(D), inv_std=torch.ones(D), ready_w1=z(1, D), ready_b1=z(1), ready_w2=torch.ones(1),
                        ready_b2=z(1), skip_w1=z(1, D), skip_b1=z(1), skip_w2=torch.ones(1),
                        skip_b2=torch.tensor([-4.0]), relu=False, route_w=torch.eye(G, D), route_b=z(G), **extra)


def _row(policy=POLICY_PROBE, guard_threshold=NO_GUARD, pairs=GROUP_PAIRS, threshold=NEVER) -> RowSettings:
    return RowSettings(policy=policy, min_think=0, max_think=5, threshold=threshold, skip_threshold=NEVER, alpha=1.0,
                       patience=1, boundary_only=False, trace=False, exit_ids=(EXIT,), stop_ids=(),
                       guard_threshold=guard_threshold, group_thresholds=pairs)


def _run(impl, rows, groups, guard=False, steps=8):
    """Step rows (RowSettings) whose hidden state routes row i to groups[i] at step 0 and to another group after
    (a row keeps its step-0 group); returns (state, forced per row per step)."""
    spec = ControllerSpec.build((OPEN,), (CLOSE,), (EOS,), vocab_size=32, probe=_routed_probe(guard))
    params = RowParams.pack(rows, (OPEN,), (), (CLOSE,), 8, "cpu", groups=G)
    state = ControllerState.allocate(len(rows), "cpu")
    hidden = 2.0 * torch.eye(G, D)[list(groups)]
    tok, forced = torch.zeros(len(rows), dtype=torch.int64), []
    for t in range(steps):
        controller_step(hidden if t == 0 else hidden.roll(1, 0), tok, state, params, spec, impl=impl)
        forced.append(state.forced.tolist())
        tok = torch.where(state.forced >= 0, state.forced, OPEN if t == 0 else 5)
    return state, [list(col) for col in zip(*forced)]


@pytest.mark.parametrize("impl", IMPLS)
def test_each_group_runs_its_own_thresholds_on_the_same_scores(impl):
    rows = [_row(), _row(), _row(), _row(policy=POLICY_BUDGET, pairs=())]
    state, forced = _run(impl, rows, groups=(0, 1, 2, 1))
    assert state.group.tolist() == [0, 1, 2, 0]  # the budget row is never routed
    assert forced[0] == BUDGET_STOP and int(state.ended_by[0]) == ENDED_BUDGET
    assert forced[1][:3] == PROBE_STOP and int(state.ended_by[1]) == ENDED_PROBE
    assert forced[2][:3] == SKIP and int(state.ended_by[2]) == ENDED_SKIPPED
    assert forced[3] == BUDGET_STOP


@pytest.mark.parametrize("impl", IMPLS)
def test_the_guard_wins_over_the_group(impl):
    flagged, forced = _run(impl, [_row(guard_threshold=3.5)] * 3, groups=(0, 1, 2), guard=True)  # 4 > 3.5
    assert flagged.guard.tolist() == [1, 1, 1] and flagged.group.tolist() == [0, 1, 2]
    assert forced == [BUDGET_STOP] * 3  # the fallback (never stop, never skip) whatever the group
    passed, forced = _run(impl, [_row(guard_threshold=4.5)] * 3, groups=(0, 1, 2), guard=True)
    assert passed.guard.tolist() == [0, 0, 0]
    assert forced[0] == BUDGET_STOP and forced[1][:3] == PROBE_STOP and forced[2][:3] == SKIP


def test_route_rows_routes_probe_rows_at_step_0_only():
    spec = ControllerSpec.build((OPEN,), (CLOSE,), (EOS,), vocab_size=32, probe=_routed_probe())
    params = RowParams.pack([_row(), _row(), _row(policy=POLICY_BUDGET, pairs=())], (OPEN,), (), (CLOSE,), 8, "cpu",
                            groups=G)
    state = ControllerState.allocate(3, "cpu")
    state.step.copy_(torch.tensor([0, 4, 0], dtype=torch.int32))
    state.group.copy_(torch.tensor([0, 2, 0], dtype=torch.int32))
    hidden = torch.zeros(3, D)
    hidden[:, 1] = 1.0  # every row's argmax: group 1
    route_rows(hidden, state, params, spec)
    assert state.group.tolist() == [1, 2, 0]
    hidden.zero_()  # a tie: the first group
    state.group.fill_(2)
    route_rows(hidden, state, params, spec)
    assert state.group.tolist() == [0, 2, 2]
    route_rows(None, state, params, spec)  # no hidden: nothing to route on
    assert state.group.tolist() == [0, 2, 2]
    one = RowParams.pack([_row(pairs=())], (OPEN,), (), (CLOSE,), 8, "cpu")
    with pytest.raises(ValueError, match="groups=3"):
        route_rows(hidden[:1], ControllerState.allocate(1, "cpu"), one, spec)


@pytest.mark.kernels
def test_triton_rejects_a_ragged_group_table():
    from adaptive_think.controller.kernel_buffers import controller_step_triton

    spec = ControllerSpec.build((OPEN,), (CLOSE,), (EOS,), vocab_size=32, probe=_routed_probe())
    params = RowParams.pack([_row()], (OPEN,), (), (CLOSE,), 8, "cpu", groups=G)
    params = RowParams(params.ints, params.floats[:-1].contiguous(), params.force)
    with pytest.raises(ValueError, match=r"params.floats must be \[NP_FLOAT \+ 2 \(G - 1\), B\]"):
        controller_step_triton(torch.zeros(1, D), torch.zeros(1, dtype=torch.int64), ControllerState.allocate(1, "cpu"),
                               params, spec)


# ----------------------------------------------------------------------------------------------------
# host side: the group table a config resolves to, and its packing


class _GroupedProbe:
    """A stand-in for a `Probe` whose route has calibrated one (ready, skip) pair per group."""

    policy_defaults = None
    guard = None

    def __init__(self, pairs):
        self.pairs, self.calls = pairs, []

    def thresholds(self, effort, decoding):
        return 0.99, 0.99  # the ungrouped pair: a grouped probe's rows take pairs[0] instead

    def group_thresholds(self, effort, decoding):
        self.calls.append((effort, decoding))
        return None if self.pairs is None else list(self.pairs)

    def tensors(self):
        return _routed_probe()


PAIRS = [(0.6, 0.9), (0.3, 0.8), (0.7, 0.95)]


def test_resolve_config_takes_each_groups_pair_and_explicit_thresholds_apply_to_all():
    probe = _GroupedProbe(PAIRS)
    row = resolve_config(ThinkConfig(policy="probe", effort="high"), probe, decoding="sampled")
    assert probe.calls == [("high", "sampled")]
    assert (row.threshold, row.skip_threshold) == (0.6, 0.9) and row.group_thresholds == ((0.3, 0.8), (0.7, 0.95))
    row = resolve_config(ThinkConfig(policy="probe", threshold=0.5), probe)
    assert (row.threshold, row.skip_threshold) == (0.5, 0.9) and row.group_thresholds == ((0.5, 0.8), (0.5, 0.95))
    row = resolve_config(ThinkConfig(policy="probe", skip_threshold=0.85), probe)
    assert (row.threshold, row.skip_threshold) == (0.6, 0.85) and row.group_thresholds == ((0.3, 0.85), (0.7, 0.85))
    row = resolve_config(ThinkConfig(policy="probe", allow_skip=False), probe)
    assert row.skip_threshold == NEVER and row.group_thresholds == ((0.3, NEVER), (0.7, NEVER))
    assert resolve_config(ThinkConfig(policy="budget", max_think_tokens=4), probe).group_thresholds == ()
    row = resolve_config(ThinkConfig(policy="probe"), _GroupedProbe(None))  # no route: the ungrouped pair
    assert (row.threshold, row.skip_threshold, row.group_thresholds) == (0.99, 0.99, ())
    bare = _routed_probe()  # bare tensors with a route: no calibrated pairs, so one pair for every group
    row = resolve_config(ThinkConfig(policy="probe", threshold=0.5, skip_threshold=0.7), bare)
    assert row.group_thresholds == ()


def test_pack_fills_short_group_tables_with_the_rows_own_pair_and_refuses_long_ones():
    rows = [_row(pairs=((0.1, 0.2), (0.3, 0.4))), _row(pairs=((0.5, 0.6),), threshold=0.7),
            _row(policy=POLICY_BUDGET, pairs=())]
    params = RowParams.pack(rows, (OPEN,), (), (CLOSE,), 8, "cpu", groups=G)
    assert params.floats.shape == (NP_FLOAT + 2 * (G - 1), 3) and P_GROUPS == NP_FLOAT
    want = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, NEVER], [NEVER] * 4]  # a short table repeats the row's own pair
    torch.testing.assert_close(params.floats[P_GROUPS:].t(), torch.tensor(want))
    assert RowParams.pack(rows[2:], (OPEN,), (), (CLOSE,), 8, "cpu").floats.shape == (NP_FLOAT, 1)
    with pytest.raises(ValueError, match="carries 2 route-group threshold pairs but the batch has 2 groups"):
        RowParams.pack(rows[:1], (OPEN,), (), (CLOSE,), 8, "cpu", groups=2)


def test_controller_routes_rows_and_reports_their_groups():
    probe = _GroupedProbe([(NEVER, NEVER), (0.0, NEVER), (NEVER, 0.0)])
    markers = ThinkMarkers("<o>", "</o>", (OPEN,), (CLOSE,), "explicit")
    configs = [ThinkConfig(policy="probe", max_think_tokens=5)] * 3 + [
        ThinkConfig(policy="probe", max_think_tokens=5, threshold=0.0),  # every group stops at once
        ThinkConfig(policy="budget", max_think_tokens=5)]
    ctl = ThinkController(markers, configs, eos_ids=(EOS,), probe=probe, vocab_size=32, device="cpu", impl="torch")
    ctl.begin(torch.tensor([[3, 4]] * 5))
    assert ctl.params.floats.shape == (NP_FLOAT + 4, 5) and ctl.reports()[0].group is None  # not routed yet
    hidden = 2.0 * torch.eye(G, D)[[0, 1, 2, 0, 1]]
    tok = torch.zeros(5, dtype=torch.int64)
    for t in range(8):
        forced = ctl.step(tok, hidden)
        tok = torch.where(forced >= 0, forced, OPEN if t == 0 else 5)
    reports = [r.to_dict() for r in ctl.reports()]
    assert [r["group"] for r in reports] == [0, 1, 2, 0, None]
    assert [r["ended_by"] for r in reports] == ["budget", "probe", "skipped", "probe", "budget"]
    ctl.move_rows([1], [0])
    assert int(ctl.state.group[0]) == 1
    ctl.init_rows([0], [[3, 4]], configs[0])  # a restarted row starts in group 0, routed again at its step 0
    assert int(ctl.state.group[0]) == 0 and int(ctl.state.step[0]) == 0
