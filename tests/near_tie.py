"""Comparing greedy token streams of two implementations in half precision.

Two correct engines in bf16 may round the last bit of a logit differently (kernels over caches of another
length, another summation order), so at a step where the reference's top two logits are a near tie they can
pick different tokens, and from there the rows legitimately differ. Everything else must be identical.
`assert_same_or_near_tie` checks exactly that: every row equal up to its first difference, each difference a
real near tie in the reference's own logits (the reference's token is its top-1 and the other engine's token is
within tolerance of it), and such rows rare. Tested on hand-made logits in tests/test_near_tie.py.
"""

from __future__ import annotations

import torch


def _stack_logits(ref_logits) -> torch.Tensor:
    """HF's per-step tuple of [B, V] (output_logits=True) or a [B, N, V] tensor -> [B, N, V] fp32."""
    if isinstance(ref_logits, (tuple, list)):
        ref_logits = torch.stack(list(ref_logits), 1)
    return ref_logits.float()


def assert_same_or_near_tie(ref: torch.Tensor, out: torch.Tensor, ref_logits, start: int, *, rel_tol: float,
                            max_tied_rows: int = 1) -> list[tuple[int, int]]:
    """Check that out [B, T_out] equals ref [B, T_ref] except after a rare, real near tie; return the ties.

    ref_logits: the logits the reference chose each generated token from ([B, T_ref - start, V], or HF's
    `output_logits` tuple). start: index of the first generated token (the padded prompt length).
    A row may differ from position p on only if p >= start, ref[p] is the top-1 of ref_logits at p, and
    logits[ref[p]] - logits[out[p]] <= rel_tol * max |finite logit| there; after p the row is not compared.
    At most `max_tied_rows` rows may differ. Different lengths are allowed only when some row differs (a
    diverged row may finish at another step). Raises AssertionError saying which row and step failed.
    """
    if ref.shape[0] != out.shape[0]:
        raise AssertionError(f"batch sizes differ: reference {ref.shape[0]} rows, output {out.shape[0]}")
    logits = _stack_logits(ref_logits)  # [B, N, V]
    n = min(ref.shape[1], out.shape[1])
    if logits.shape[:2] != (ref.shape[0], ref.shape[1] - start):
        raise AssertionError(f"ref_logits has shape {tuple(logits.shape)}; expected [{ref.shape[0]}, "
                             f"{ref.shape[1] - start}, V] (one row of logits per generated reference token)")
    differs = ref[:, :n] != out[:, :n]  # [B, n]
    ties = []
    for row in range(ref.shape[0]):
        if not bool(differs[row].any()):
            continue
        p = int(differs[row].float().argmax())
        if p < start:
            raise AssertionError(f"row {row} differs at position {p}, inside the prompt (generation starts at {start})")
        a, b = int(ref[row, p]), int(out[row, p])
        step_logits = logits[row, p - start]  # [V]
        top = int(step_logits.argmax())
        if step_logits[a] < step_logits[top]:
            raise AssertionError(f"row {row} step {p - start}: the reference wrote token {a}, but its logits put "
                                 f"token {top} first (not a greedy step, or logits from another run)")
        finite = step_logits[torch.isfinite(step_logits)]
        tol = rel_tol * float(finite.abs().max()) if finite.numel() else 0.0
        gap = float(step_logits[a] - step_logits[b])
        if not gap <= tol:  # NaN or -inf logits of b fail too
            raise AssertionError(f"row {row} step {p - start}: tokens differ ({a} vs {b}) where the reference's "
                                 f"logits are {gap:.4g} apart, more than a near tie allows ({tol:.4g})")
        ties.append((row, p))
    if len(ties) > max_tied_rows:
        raise AssertionError(f"{len(ties)} rows diverged at near ties {ties}; at most {max_tied_rows} may: "
                             "real ties are rare, so this many points to a real difference")
    if ref.shape[1] != out.shape[1] and not ties:
        raise AssertionError(f"same tokens but different lengths ({ref.shape[1]} vs {out.shape[1]}): "
                             "one engine stopped at another step")
    return ties
