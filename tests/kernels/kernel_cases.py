"""Random inputs for the kernel tests: probes, controller specs, states and token streams.

Shared by test_probe_step.py (CPU, Triton interpreter), test_gpu_kernels.py (CUDA) and the benchmarks;
not a test file itself. Everything is drawn from an explicit torch.Generator so a case is reproducible.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from adaptive_think.controller.state import (
    ANSWERING,
    CLOSING,
    DONE,
    NO_LIMIT,
    POLICY_PROBE,
    PROMPT,
    THINKING,
    ControllerSpec,
    ControllerState,
    ProbeTensors,
)

INT_FIELDS = ("phase", "think_count", "streak", "cursor", "open_match", "close_match", "ended_by", "decision_step", "forced", "step")
FLOAT_FIELDS = ("ema", "score")

# token ids: 0..9 ordinary, markers and eos drawn from 10..29, the rest ordinary text
N_SPECIAL = 30


def random_probe(d: int, h: int, gen: torch.Generator, relu: bool = True, device="cpu") -> ProbeTensors:
    """A probe whose scores spread over (0, 1) for standard-normal hidden states."""

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
    return probe.to(device)


def random_spec(gen: torch.Generator, vocab: int, policy: int, probe: ProbeTensors | None, device="cpu",
                lo: int | None = None, lc: int | None = None) -> ControllerSpec:
    """Random markers (1-3 tokens), exit text, eos, boundaries and limits; thresholds in the scores' range."""

    def randint(lo_, hi_):
        return int(torch.randint(lo_, hi_, (1,), generator=gen))

    special = torch.randperm(N_SPECIAL - 10, generator=gen) + 10  # distinct ids for markers and eos
    lo = lo if lo is not None else randint(1, 4)
    lc = lc if lc is not None else randint(1, 4)
    le = randint(0, 3)
    open_ids = special[:lo]
    close_ids = special[lo:lo + lc]
    eos_ids = special[lo + lc:lo + lc + randint(1, 3)]
    exit_text = torch.randint(0, vocab, (le,), generator=gen)
    empty = torch.randint(0, vocab, (randint(0, 3),), generator=gen)  # text inside a skipped (empty) block
    is_boundary = torch.rand(vocab, generator=gen) < 0.3
    max_think = NO_LIMIT if randint(0, 4) == 0 else randint(0, 30)
    return ControllerSpec(
        policy=policy,
        open_ids=open_ids.to(device), close_ids=close_ids.to(device),
        force_seq=torch.cat([open_ids, empty, close_ids, exit_text]).to(device),
        close_at=lo + empty.numel(),
        eos_ids=eos_ids.to(device), is_boundary=is_boundary.to(device),
        min_think=randint(0, 5), max_think=max_think,
        threshold=float(torch.rand(1, generator=gen)) * 0.6 + 0.2,
        skip_threshold=float(torch.rand(1, generator=gen)) * 0.5 + 0.7,  # > 1 sometimes: skip disabled
        alpha=float(torch.rand(1, generator=gen)) * 0.9 + 0.1,
        patience=randint(1, 4),
        boundary_only=bool(randint(0, 2)),
        probe=probe if policy == POLICY_PROBE else None,
    )


def random_state(batch: int, gen: torch.Generator, step: int, spec: ControllerSpec, device="cpu") -> ControllerState:
    """A state in the middle of a run: mixed phases, partial marker matches, counters, EMA, garbage outputs."""
    s = ControllerState.allocate(batch, "cpu")
    s.phase.copy_(torch.randint(PROMPT, DONE + 1, (batch,), generator=gen))
    s.think_count.copy_(torch.randint(0, 15, (batch,), generator=gen))
    s.streak.copy_(torch.randint(0, 4, (batch,), generator=gen))
    s.cursor.copy_(torch.randint(0, spec.force_seq.numel(), (batch,), generator=gen))
    s.open_match.copy_(torch.randint(0, spec.open_ids.numel(), (batch,), generator=gen))
    s.close_match.copy_(torch.randint(0, spec.close_ids.numel(), (batch,), generator=gen))
    s.ema.copy_(torch.rand(batch, generator=gen))
    s.step.fill_(step)
    garble(s)
    return to_device(s, device)


def garble(state: ControllerState) -> None:
    """Fill the buffers every step must rewrite with values no step writes, so an unwritten row fails."""
    state.score.fill_(1234.5)
    state.forced.fill_(-777)


def to_device(state: ControllerState, device) -> ControllerState:
    return ControllerState(**{f.name: getattr(state, f.name).to(device) for f in fields(state)})


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
    """Per-row scripted token streams: text, markers (whole or broken), boundaries and eos, as a model writes them."""

    def __init__(self, batch: int, vocab: int, spec: ControllerSpec, gen: torch.Generator):
        self.rows = [self._script(vocab, spec, gen) for _ in range(batch)]
        self.pos = [0] * batch

    @staticmethod
    def _script(vocab, spec, gen):
        out = []
        open_ids, close_ids, eos = (t.tolist() for t in (spec.open_ids.cpu(), spec.close_ids.cpu(), spec.eos_ids.cpu()))
        while len(out) < 200:
            r = float(torch.rand(1, generator=gen))
            if r < 0.62:
                out += torch.randint(0, vocab, (int(torch.randint(1, 6, (1,), generator=gen)),), generator=gen).tolist()
            elif r < 0.72:
                out += open_ids
            elif r < 0.82:
                out += close_ids
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
    """Integer fields exactly, float fields to a tolerance (NaN where NaN)."""
    for name in INT_FIELDS:
        g, w = getattr(got, name).cpu(), getattr(want, name).cpu()
        if not torch.equal(g, w):
            rows = (g != w).nonzero().flatten()[:8].tolist()
            raise AssertionError(f"{where}: state.{name} differs at rows {rows}: got {g[rows].tolist()}, want {w[rows].tolist()}")
    for name in FLOAT_FIELDS:
        torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name).cpu(), atol=atol, rtol=rtol,
                                   equal_nan=True, msg=lambda m, n=name: f"{where}: state.{n}: {m}")


__all__ = [
    "ANSWERING", "CLOSING", "THINKING", "PROMPT", "DONE",
    "TokenStreams", "assert_states_equal", "garble", "random_hidden", "random_probe", "random_spec", "random_state", "to_device",
]
