"""Random inputs for the kernel tests: probes, shared specs, per-row params, states and token streams.

Shared by test_controller_step.py (CPU, Triton interpreter), test_gpu_kernels.py (CUDA) and the benchmarks;
not a test file itself. Everything is drawn from an explicit torch.Generator so a case is reproducible.
"""

from __future__ import annotations

import torch

from adaptive_think.controller.params import RowParams, RowSettings
from adaptive_think.controller.state import (
    DONE,
    ENDED_SKIPPED,
    FLOAT_FIELDS,
    INT_FIELDS,
    NO_LIMIT,
    NO_MEMORY,
    POLICY_CODES,
    PROMPT,
    ControllerSpec,
    ControllerState,
    ProbeTensors,
)

# token ids: markers and eos drawn from 10..29, the rest ordinary text
N_SPECIAL = 30
POLICIES = tuple(POLICY_CODES.values())


def randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """An int in [lo, hi)."""
    return int(torch.randint(lo, hi, (1,), generator=gen))


def random_probe(d: int, h: int, gen: torch.Generator, relu: bool = True, device="cpu",
                 memory: int = 0, counts: int = 0) -> ProbeTensors:
    """A probe whose scores spread over (0, 1) for standard-normal hidden states; with `memory` K > 0 its ready
    head also reads K running maxima (weights large enough that the maxima move the score), the last `counts` of
    them counting units."""

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    def head():
        return (randn(h, d, scale=d**-0.5), randn(h, scale=0.5), randn(h, scale=2.0 * h**-0.5), randn(1, scale=0.5))

    rw1, rb1, rw2, rb2 = head()
    sw1, sb1, sw2, sb2 = head()
    probe = ProbeTensors(
        mean=randn(d, scale=0.1), inv_std=torch.rand(d, generator=gen) + 0.5,
        ready_w1=rw1, ready_b1=rb1, ready_w2=rw2, ready_b2=rb2,
        skip_w1=sw1, skip_b1=sb1, skip_w2=sw2, skip_b2=sb2, relu=relu,
    )
    if memory:
        probe.memory_w = randn(memory, d, scale=d**-0.5)
        probe.memory_b = randn(memory, scale=0.5)
        probe.ready_w1 = torch.cat([rw1, randn(h, memory, scale=memory**-0.5)], 1)
    if counts:
        probe.memory_sum = torch.tensor([0.0] * (memory - counts) + [1.0] * counts)
    return probe.to(device)


def with_random_guard(probe: ProbeTensors, r: int, gen: torch.Generator) -> ProbeTensors:
    """`probe` (CPU) plus a guard of rank R: orthonormal directions, a mean off the origin, positive weights."""
    d = probe.hidden_size
    dirs = torch.linalg.qr(torch.randn(d, max(r, 1), generator=gen))[0].t()[:r].contiguous()  # [R, D]
    probe.guard_mean = torch.randn(d, generator=gen) * 0.3
    probe.guard_dirs = dirs
    probe.guard_coef = torch.rand(r + 1, generator=gen) + 0.1
    return probe


def with_random_route(probe: ProbeTensors, g: int, gen: torch.Generator) -> ProbeTensors:
    """`probe` (CPU) plus a route of G groups whose argmax spreads standard-normal hidden states over the groups."""
    d = probe.hidden_size
    probe.route_w = torch.randn(g, d, generator=gen) * d**-0.5
    probe.route_b = torch.randn(g, generator=gen) * 0.1
    return probe


def random_marker(gen: torch.Generator, pool: list[int], length: int) -> list[int]:
    """A marker of `length` tokens from a pool of 2; about half repeat a token (self-overlapping markers)."""
    a, b = pool
    if randint(gen, 0, 2):
        return [a] * (length - 1) + [b] if length > 1 else [a]
    return [pool[randint(gen, 0, 2)] for _ in range(length)]


def random_spec(gen: torch.Generator, vocab: int, probe: ProbeTensors | None, device="cpu",
                lo: int | None = None, lc: int | None = None) -> ControllerSpec:
    """Random markers (1-3 tokens, often self-overlapping), eos ids and boundary mask."""
    special = (torch.randperm(N_SPECIAL - 10, generator=gen) + 10).tolist()  # distinct ids for markers and eos
    lo = lo if lo is not None else randint(gen, 1, 4)
    lc = lc if lc is not None else randint(gen, 1, 4)
    open_ids = random_marker(gen, special[0:2], lo)
    close_ids = random_marker(gen, special[2:4], lc)
    eos_ids = special[4:4 + randint(gen, 1, 3)]
    is_boundary = torch.rand(vocab, generator=gen) < 0.3
    return ControllerSpec.build(open_ids, close_ids, eos_ids, is_boundary=is_boundary, probe=probe, device=device)


def random_row(gen: torch.Generator, vocab: int, policy: int | None = None) -> RowSettings:
    """One row's policy: limits, thresholds in the scores' range, exit and stop texts of 0-2 tokens."""
    policy = POLICIES[randint(gen, 0, len(POLICIES))] if policy is None else policy
    stop = tuple(torch.randint(0, 10, (randint(gen, 0, 3),), generator=gen).tolist())
    max_think = NO_LIMIT if randint(gen, 0, 4) == 0 else randint(gen, len(stop), 30)
    return RowSettings(
        policy=policy, min_think=randint(gen, 0, 5), max_think=max_think,
        threshold=float(torch.rand(1, generator=gen)) * 0.6 + 0.2,
        skip_threshold=float(torch.rand(1, generator=gen)) * 0.5 + 0.7,  # > 1 sometimes: skip disabled
        alpha=float(torch.rand(1, generator=gen)) * 0.9 + 0.1, patience=randint(gen, 1, 4),
        boundary_only=bool(randint(gen, 0, 2)), trace=False,
        exit_ids=tuple(torch.randint(0, vocab, (randint(gen, 0, 3),), generator=gen).tolist()), stop_ids=stop,
    )


def random_params(gen: torch.Generator, batch: int, vocab: int, spec: ControllerSpec, policy: int | None = None,
                  device="cpu") -> RowParams:
    """Per-row params of random policies (or all `policy`), with a random empty-block text and slack capacity."""
    rows = [random_row(gen, vocab, policy) for _ in range(batch)]
    empty = torch.randint(0, vocab, (randint(gen, 0, 3),), generator=gen).tolist()  # text inside a skipped block
    capacity = spec.open_ids.numel() + len(empty) + 2 * spec.close_ids.numel() + 4 + 2 + randint(gen, 0, 4)
    return RowParams.pack(rows, spec.open_ids.tolist(), empty, spec.close_ids.tolist(), capacity, device)


def random_state(batch: int, gen: torch.Generator, spec: ControllerSpec, params: RowParams, step: int | None = None,
                 device="cpu") -> ControllerState:
    """A state in the middle of a run: mixed phases and steps (some rows at step 0), partial marker matches,
    counters, EMA, garbage outputs. step: every row at that step (None: 0 or 5 per row)."""
    s = ControllerState.allocate(batch, "cpu")
    s.phase.copy_(torch.randint(PROMPT, DONE + 1, (batch,), generator=gen))
    s.think_count.copy_(torch.randint(0, 15, (batch,), generator=gen))
    s.streak.copy_(torch.randint(0, 4, (batch,), generator=gen))
    s.cursor.copy_(torch.randint(0, params.force.shape[1], (batch,), generator=gen))
    s.open_match.copy_(torch.randint(0, spec.open_ids.numel(), (batch,), generator=gen))
    s.close_match.copy_(torch.randint(0, spec.close_ids.numel(), (batch,), generator=gen))
    s.ended_by.copy_(torch.where(torch.rand(batch, generator=gen) < 0.3, ENDED_SKIPPED, 0))
    s.blocks.copy_(torch.randint(0, 3, (batch,), generator=gen))
    s.ema.copy_(torch.rand(batch, generator=gen))
    if step is None:
        s.step.copy_(torch.where(torch.rand(batch, generator=gen) < 0.4, 0, 5))
    else:
        s.step.fill_(step)
    garble(s)
    return s.to(device)


def with_random_memory(state: ControllerState, k: int, gen: torch.Generator) -> ControllerState:
    """`state` (CPU) plus K random running maxima per row, about 30% of rows holding none yet (NO_MEMORY)."""
    memory = torch.randn(k, state.batch_size, generator=gen)
    memory[:, torch.rand(state.batch_size, generator=gen) < 0.3] = NO_MEMORY
    return ControllerState(state.ints, torch.cat([state.floats, memory]), state.forced)


def garble(state: ControllerState) -> None:
    """Fill the buffers every step must rewrite with values no step writes, so an unwritten row fails."""
    state.score.fill_(1234.5)
    state.forced.fill_(-777)


def random_hidden(batch: int, d: int, dtype: torch.dtype, gen: torch.Generator, device="cpu", bad_rows: bool = True) -> torch.Tensor:
    """[B, D] hidden states with a non-contiguous row stride; with bad_rows, row 1 holds a NaN, row 2 a +inf,
    row 3 a -inf and row 4 both infinities."""
    h = torch.randn(batch, d + 3, generator=gen)[:, :d]  # row stride d + 3
    if bad_rows:
        for row, col, value in ((1, d // 2, "nan"), (2, d // 3, "inf"), (3, 0, "-inf"), (4, 0, "inf"), (4, d - 1, "-inf")):
            if row < batch:
                h[row, col] = float(value)
    return h.to(device=device, dtype=dtype)


class TokenStreams:
    """Per-row scripted token streams: text, markers (whole, broken or overlapping), boundaries and eos."""

    def __init__(self, batch: int, vocab: int, spec: ControllerSpec, gen: torch.Generator):
        self.rows = [self._script(vocab, spec, gen) for _ in range(batch)]
        self.pos = [0] * batch

    @staticmethod
    def _script(vocab, spec, gen):
        out = []
        open_ids, close_ids, eos = (t.tolist() for t in (spec.open_ids.cpu(), spec.close_ids.cpu(), spec.eos_ids.cpu()))
        while len(out) < 200:
            r = float(torch.rand(1, generator=gen))
            if r < 0.60:
                out += torch.randint(0, vocab, (int(torch.randint(1, 6, (1,), generator=gen)),), generator=gen).tolist()
            elif r < 0.70:
                out += open_ids
            elif r < 0.80:
                out += close_ids
            elif r < 0.86:
                out += close_ids[:1] + close_ids  # the marker's first token, then the whole marker (overlap)
            elif r < 0.94:
                out += close_ids[: max(1, len(close_ids) - 1)] + open_ids[:1]  # a broken marker
            elif r < 0.95:
                out += eos[:1]
            else:
                out += open_ids[:1] + close_ids[-1:]
        return out

    def next(self, forced: torch.Tensor) -> torch.Tensor:
        """The tokens written this step: the forced token where there is one, else the row's next scripted token."""
        forced = forced.cpu().tolist()
        toks = []
        for i, f in enumerate(forced):
            if f >= 0:
                toks.append(f)
            else:
                toks.append(self.rows[i][self.pos[i] % len(self.rows[i])])
                self.pos[i] += 1
        return torch.tensor(toks, dtype=torch.int64)


def assert_states_equal(got: ControllerState, want: ControllerState, atol: float, rtol: float, where: str = "") -> None:
    """Integer fields exactly, float fields and memory to a tolerance (NaN where NaN)."""
    for name in INT_FIELDS + ("forced",):
        g, w = getattr(got, name).cpu(), getattr(want, name).cpu()
        if not torch.equal(g, w):
            rows = (g != w).nonzero().flatten()[:8].tolist()
            raise AssertionError(f"{where}: state.{name} differs at rows {rows}: got {g[rows].tolist()}, want {w[rows].tolist()}")
    for name in FLOAT_FIELDS + ("memory",):  # memory: [K, B] running maxima of a probe with memory (K may be 0)
        torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name).cpu(), atol=atol, rtol=rtol,
                                   equal_nan=True, msg=lambda m, n=name: f"{where}: state.{n}: {m}")


__all__ = [
    "TokenStreams", "assert_states_equal", "garble", "random_hidden", "random_params", "random_probe", "random_row",
    "random_spec", "random_state", "with_random_guard", "with_random_memory", "with_random_route",
]


# logit_stats: the fields it returns, and logits with the rows that break naive implementations
FIELDS = ("max_logit", "lse", "entropy", "margin")
INF, NAN = float("inf"), float("nan")


def random_logits(batch: int, vocab: int, dtype: torch.dtype, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """[B, V] logits with a non-contiguous row stride and special rows: NaN, all -inf, +inf, masked, ties."""
    x = torch.randn(batch, vocab + 5, generator=gen)[:, :vocab] * 4.0  # row stride V + 5
    x = x.to(dtype).float()  # values the dtype can hold, so ties survive the cast
    specials = [
        lambda r: r.__setitem__(vocab // 2, NAN),
        lambda r: r.fill_(-INF),
        lambda r: r.__setitem__(vocab - 1, INF),
        lambda r: r.__setitem__(slice(None, None, 3), -INF),  # masked vocabulary
        lambda r: (r.fill_(-INF), r.__setitem__(vocab // 3, 2.5)),  # one finite entry
        lambda r: r.__setitem__(slice(0, 2), r.max() + 1.0),  # the maximum twice: margin 0
    ]
    for i, f in enumerate(specials):
        if i + 1 < batch and vocab > 1:
            f(x[i + 1])
    return x.to(device=device, dtype=dtype)
