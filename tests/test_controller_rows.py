"""Rows that come and go: `init_rows` restarts chosen rows mid-run without touching the others, and a
restarted row behaves exactly like a row of a fresh batch; `move_rows` permutes state, params and score trace
consistently. Also the per-row API edges: a row that answers directly, config lists, stop_text validation.

Rows are driven like an engine drives them: the token a row writes is the forced one, else the next token of
its own scripted stream; a random linear probe scores random hidden states.
"""

import dataclasses
import random

import pytest
import torch

from adaptive_think import ThinkConfig
from adaptive_think.controller import ThinkController
from adaptive_think.controller.params import P_POLICY
from adaptive_think.controller.state import POLICY_FULL, POLICY_NONE, ProbeTensors
from adaptive_think.markers import ThinkMarkers

V, D = 40, 6
EOS, OPEN, CLOSE_A, CLOSE_B = 1, 30, 31, 32
TEXTS = {"E": (5, 6), "S": (7,), "N": (8, 8)}  # exit / stop / empty-block texts as token ids
MARKERS = ThinkMarkers("<o>", "</o>", (OPEN,), (CLOSE_A, CLOSE_B), "explicit")
CONFIGS = [
    ThinkConfig(),
    ThinkConfig(policy="none", exit_text="E"),
    ThinkConfig(policy="budget", max_think_tokens=4, exit_text="E", stop_text="S"),
    ThinkConfig(policy="budget", max_think_tokens=9),
    ThinkConfig(policy="probe", threshold=0.55, skip_threshold=0.9, patience=2, smoothing=0.5, trace=True),
    ThinkConfig(policy="probe", threshold=0.4, skip_threshold=0.6, max_think_tokens=6, stop_text="S", min_think_tokens=2,
                stop_at_boundary=True, trace=True),
]


def probe() -> ProbeTensors:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return ProbeTensors(mean=torch.zeros(D), inv_std=torch.ones(D), ready_w1=r(1, D), ready_b1=torch.zeros(1),
                        ready_w2=torch.ones(1), ready_b2=torch.zeros(1), skip_w1=r(1, D), skip_b1=torch.zeros(1),
                        skip_w2=torch.ones(1), skip_b2=torch.zeros(1), relu=False)


def controller(configs) -> ThinkController:
    boundary = torch.zeros(V, dtype=torch.bool)
    boundary[[9, 10]] = True
    return ThinkController(MARKERS, configs, encode=lambda text: TEXTS[text], empty_ids=TEXTS["N"], eos_ids=(EOS,),
                           is_boundary=boundary, probe=probe(), vocab_size=V, device="cpu", impl="torch")


class Row:
    """One row's scripted model: ordinary tokens, markers (sometimes a second block), boundaries and eos."""

    def __init__(self, seed: int):
        rng = random.Random(seed)
        self.tokens = []
        while len(self.tokens) < 200:
            r = rng.random()
            self.tokens += ([rng.randrange(2, 12)] if r < 0.7 else [OPEN] if r < 0.8 else [CLOSE_A, CLOSE_B] if r < 0.9
                            else [CLOSE_A] if r < 0.97 else [EOS])
        self.pos = 0
        self.hidden = torch.randn(300, D, generator=torch.Generator().manual_seed(seed))

    def write(self, forced: int) -> int:
        if forced >= 0:
            return forced
        self.pos += 1
        return self.tokens[self.pos - 1]


def prompts(seeds):
    """Ragged prompts: some end inside an open block, some closed it at their end, some never opened one."""
    kinds = [[3, 4, OPEN, 5], [3, OPEN, 4, CLOSE_A, CLOSE_B, 5], [2, 3, 4, 5, 6], [OPEN]]
    return [kinds[s % len(kinds)] + [2] * (s % 3) for s in seeds]


def pad(rows):
    width = max(map(len, rows))
    return torch.tensor([[0] * (width - len(r)) + r for r in rows])


def steps(ctl, rows, last, n, t0=0):
    """n steps of ctl; rows[i] drives row i (None: feed 0 and zeros). Returns (forced per step, new last tokens)."""
    seen = []
    for t in range(n):
        h = torch.stack([r.hidden[t0 + t] if r is not None else torch.zeros(D) for r in rows])
        forced = ctl.step(last, h).tolist()
        seen.append(forced)
        last = torch.tensor([r.write(f) if r is not None else 0 for r, f in zip(rows, forced)])
    return seen, last


def column(ctl, i):
    s = ctl.state
    return s.ints[:, i].tolist(), s.floats[:, i].tolist(), int(s.forced[i]), ctl.params.ints[:, i].tolist()


def same(a, b):
    """Columns equal: integers exactly, floats to fp32 rounding (a row's probe matmul may round differently at
    another place in the batch on some CPUs), NaN scores equal."""
    ia, fa, xa, pa = a
    ib, fb, xb, pb = b
    return ia == ib and xa == xb and pa == pb and torch.allclose(
        torch.tensor(fa).nan_to_num(-9), torch.tensor(fb).nan_to_num(-9), rtol=1e-6, atol=1e-7)


def test_init_rows_restarts_rows_like_a_fresh_batch_and_leaves_the_others():
    first = [CONFIGS[i] for i in (0, 2, 4, 5, 3)]
    ctl = controller(first)
    ctl.begin(pad(prompts(range(5))))
    base = controller(first)  # the same batch, never restarted
    base.begin(pad(prompts(range(5))))
    rows, base_rows = [Row(s) for s in range(5)], [Row(s) for s in range(5)]
    last = base_last = pad(prompts(range(5)))[:, -1]
    _, last = steps(ctl, rows, last, 7)
    _, base_last = steps(base, base_rows, base_last, 7)

    new_configs, new_prompts = [CONFIGS[1], CONFIGS[5]], prompts([10, 11])
    ctl.init_rows([3, 1], new_prompts, new_configs)  # ragged lists, rows out of order
    # a fresh batch of the same size (same matmul shapes, so scores are bit-equal) with the new rows at 3 and 1
    fresh_configs, fresh_prompts = list(first), prompts(range(5))
    fresh_configs[3], fresh_configs[1], fresh_prompts[3], fresh_prompts[1] = *new_configs, *new_prompts
    fresh = controller(fresh_configs)
    fresh.begin(pad(fresh_prompts))
    rows[3], rows[1] = Row(20), Row(21)
    fresh_rows = [Row(s) for s in (30, 21, 32, 20, 34)]
    last = last.clone()
    last[3], last[1] = new_prompts[0][-1], new_prompts[1][-1]
    fresh_last = pad(fresh_prompts)[:, -1]
    for t in range(14):
        (seen,), last = steps(ctl, rows, last, 1, t0=7 + t)
        (fresh_seen,), fresh_last = steps(fresh, fresh_rows, fresh_last, 1, t0=7 + t)
        (base_seen,), base_last = steps(base, base_rows, base_last, 1, t0=7 + t)
        for i in (1, 3):
            assert seen[i] == fresh_seen[i] and same(column(ctl, i), column(fresh, i)), (t, i)
        for i in (0, 2, 4):
            assert seen[i] == base_seen[i] and same(column(ctl, i), column(base, i)), (t, i)
    reports, fresh_reports, base_reports = ctl.reports(), fresh.reports(), base.reports()
    assert [reports[1], reports[3]] == [fresh_reports[1], fresh_reports[3]]
    assert [reports[i] for i in (0, 2, 4)] == [base_reports[i] for i in (0, 2, 4)]
    assert reports[1].scores is not None and len(reports[1].scores) == 14  # the trace starts at the row's step 0


def test_move_rows_permutes_state_params_and_trace():
    configs = [CONFIGS[i] for i in (5, 0, 2, 4, 1)]
    ref, ctl = controller(configs), controller(configs)
    ids = pad(prompts(range(5)))
    ref.begin(ids)
    ctl.begin(ids)
    ref_rows, rows = [Row(s) for s in range(5)], [Row(s) for s in range(5)]
    _, ref_last = steps(ref, ref_rows, ids[:, -1], 5)
    _, last = steps(ctl, rows, ids[:, -1], 5)
    perm = [2, 0, 4, 1, 3]  # new row i is old row perm[i] (a 5-cycle: every move overlaps another)
    ctl.move_rows(torch.tensor(perm), torch.arange(5))
    rows, last = [rows[p] for p in perm], last[perm]
    for t in range(10):
        (seen,), last = steps(ctl, rows, last, 1, t0=5 + t)
        (ref_seen,), ref_last = steps(ref, ref_rows, ref_last, 1, t0=5 + t)
        assert seen == [ref_seen[p] for p in perm]
        assert all(same(column(ctl, i), column(ref, p)) for i, p in enumerate(perm)), t
    ref_reports = ref.reports()
    for got, want in zip(ctl.reports(), [ref_reports[p] for p in perm]):  # scores (trace) included
        assert dataclasses.replace(got, scores=None) == dataclasses.replace(want, scores=None)
        trace = lambda r: [float("nan") if x is None else x for x in r.scores or []]  # noqa: E731
        assert same(([], trace(got), 0, []), ([], trace(want), 0, []))


def test_move_rows_copies_one_row_over_another():
    ctl = controller([CONFIGS[2], CONFIGS[0]])
    ctl.begin(pad(prompts([0, 2])))
    steps(ctl, [Row(0), Row(1)], pad(prompts([0, 2]))[:, -1], 3)
    before = column(ctl, 0)
    ctl.move_rows([0], [1])
    assert same(column(ctl, 1), before) and same(column(ctl, 0), before)


def test_a_row_that_answers_directly_reports_natural():
    """The row never opens a thought and ends with eos: `natural`, not `unfinished`."""
    ctl = controller([ThinkConfig(policy="budget", max_think_tokens=3), ThinkConfig()])
    ctl.begin(torch.tensor([[2, 3], [2, 3]]))
    last = torch.tensor([3, 3])
    for tok in ([4, 4], [5, 5], [EOS, 6]):  # row 0: "4 5 eos"; row 1 is cut off by max_new_tokens
        ctl.step(last, torch.zeros(2, D))
        last = torch.tensor(tok)
    ctl.finish(last)
    reports = ctl.reports()
    assert [(r.ended_by, r.think_tokens, r.decision_step, r.blocks) for r in reports] == [("natural", 0, -1, 0)] * 2


def test_one_config_per_row_and_num_return_sequences():
    ctl = controller([CONFIGS[0], CONFIGS[1]])
    ctl.begin(torch.tensor([[OPEN]] * 4))  # each prompt repeated twice, as HF's num_return_sequences=2 does
    assert ctl.params.ints[P_POLICY].tolist() == [POLICY_FULL, POLICY_FULL, POLICY_NONE, POLICY_NONE]
    with pytest.raises(ValueError, match="one per row"):
        controller([CONFIGS[0]] * 3).begin(torch.tensor([[OPEN]] * 4))


def test_stop_text_validation():
    with pytest.raises(ValueError, match="stop_text only applies"):
        ThinkConfig(policy="none", stop_text="x")
    with pytest.raises(ValueError, match="stop_text"):
        ThinkConfig(policy="budget", max_think_tokens=2, stop_text=3)
    with pytest.raises(ValueError, match="budget counts the stop text"):
        controller([ThinkConfig(policy="budget", max_think_tokens=1, stop_text="N")])  # 2 tokens > budget 1


def test_force_capacity_is_checked_when_a_row_is_started():
    ctl = ThinkController(MARKERS, ThinkConfig(), encode=lambda text: (5,) * len(text), eos_ids=(EOS,), vocab_size=V,
                          device="cpu", force_capacity=8)
    ctl.allocate(2)
    with pytest.raises(ValueError, match="force_capacity"):
        ctl.init_rows([0], [[OPEN]], [ThinkConfig(policy="budget", max_think_tokens=9, exit_text="long exit")])
