"""Shared pieces of the `collect --engine vllm` tests: comparing two collections field by field.

Records must be equal except the two logit scores, which come from another forward of the same numbers (the
hf engine's batched, left-padded generate() step against one teacher-forced pass per question) and so agree to
fp32 rounding. Stored states are fp16 roundings of fp32 states computed by other kernels (another summation
order in every matmul and norm), which agree to a few fp32 rounding steps of the row's scale: about
2^-24 sqrt(hidden) per layer, a few 1e-6 of the row's largest component (up to ~36 in the bundled reasoner's
layer 2). So they agree to one fp16 rounding step, |a - b| <= 2^-10 max(|a|, |b|), plus 2^-18 of the row's
largest component for components near zero, whose fp16 step is finer than that fp32 difference. A probe reads
the fp16 states: nothing it can see differs.
"""

from __future__ import annotations

import math

import torch

SCORES = ("close_margin", "entropy_score")
SCORE_RTOL, SCORE_ATOL = 1e-5, 1e-6  # fp32 rounding of an exp() of logit differences / of an entropy
FP16_STEP = 2.0**-10  # one fp16 rounding step, relative
FP32_ROW = 2.0**-18  # the fp32 difference of two kernels' components near zero, relative to the row's largest


def assert_same_records(reference: list[dict], other: list[dict]) -> None:
    """Every field equal, the logit scores within fp32 rounding."""
    assert len(reference) == len(other)
    for a, b in zip(reference, other):
        assert {k: v for k, v in a.items() if k not in SCORES} == {k: v for k, v in b.items() if k not in SCORES}
        for k in SCORES:
            assert math.isclose(a[k], b[k], rel_tol=SCORE_RTOL, abs_tol=SCORE_ATOL), (k, a[k], b[k], a["qid"], a["pos"])


def assert_same_states(reference: dict, other: dict) -> None:
    """The same tensors, equal within one fp16 rounding step (module docstring)."""
    assert reference.keys() == other.keys()
    for k in reference:
        a, b = reference[k].float(), other[k].float()
        assert a.shape == b.shape, k
        scale = torch.maximum(a.abs(), b.abs())
        bound = FP16_STEP * scale + FP32_ROW * scale.amax(-1, keepdim=True)
        worst = ((a - b).abs() - bound).max().item()
        assert worst <= 0, f"{k}: a state differs by {worst} more than one fp16 step"
