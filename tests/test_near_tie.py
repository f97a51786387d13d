"""The bf16 near-tie comparison of tests/near_tie.py on hand-made token streams and logits (CPU)."""

import pytest
import torch

from near_tie import assert_same_or_near_tie

B, START, N, V = 3, 2, 5, 6
TOL = 0.01


def streams():
    """Reference tokens [B, START + N] and logits [B, N, V] in which every reference token is a clear top-1."""
    ref = torch.tensor([[9, 9, 0, 1, 2, 3, 4], [9, 9, 4, 3, 2, 1, 0], [9, 9, 5, 5, 5, 5, 5]])
    logits = torch.zeros(B, N, V)
    for row in range(B):
        for step in range(N):
            logits[row, step, ref[row, START + step]] = 4.0
    return ref, logits


def test_identical_streams_pass_with_no_ties():
    ref, logits = streams()
    assert assert_same_or_near_tie(ref, ref.clone(), logits, START, rel_tol=TOL) == []


def test_a_real_tie_passes_and_the_row_is_free_after_it():
    ref, logits = streams()
    logits[1, 2, 0] = 4.0 - 0.5 * TOL * 4.0  # token 0 within tolerance of the reference's token 2 at step 2
    out = ref.clone()
    out[1, START + 2 :] = torch.tensor([0, 5, 5])  # diverged at the tie, anything after
    assert assert_same_or_near_tie(ref, out, logits, START, rel_tol=TOL) == [(1, START + 2)]
    # HF's output_logits tuple works the same
    assert assert_same_or_near_tie(ref, out, tuple(logits.unbind(1)), START, rel_tol=TOL) == [(1, START + 2)]


def test_a_tie_does_not_excuse_a_difference_in_another_row():
    ref, logits = streams()
    logits[0, 1, 5] = 4.0
    out = ref.clone()
    out[0, START + 1] = 5  # a real tie first, in the first row
    out[2, START + 3] = 0  # then row 2 differs where its logits are far apart
    with pytest.raises(AssertionError, match="row 2 step 3"):
        assert_same_or_near_tie(ref, out, logits, START, rel_tol=TOL)


def test_a_fake_tie_fails():
    ref, logits = streams()
    logits[1, 2, 0] = 4.0 - 3 * TOL * 4.0  # runner-up, but three tolerances below
    out = ref.clone()
    out[1, START + 2] = 0
    with pytest.raises(AssertionError, match="row 1 step 2.*apart"):
        assert_same_or_near_tie(ref, out, logits, START, rel_tol=TOL)


def test_a_token_the_reference_did_not_rank_first_fails():
    ref, logits = streams()
    logits[2, 0, 1] = 4.5  # the reference's logits put another token first: not the logits of this greedy run
    out = ref.clone()
    out[2, START] = 1
    with pytest.raises(AssertionError, match="first"):
        assert_same_or_near_tie(ref, out, logits, START, rel_tol=TOL)


def test_too_many_ties_fail():
    ref, logits = streams()
    out = ref.clone()
    for row in (0, 1):
        logits[row, 1, 5] = 4.0
        out[row, START + 1] = 5
    assert len(assert_same_or_near_tie(ref, out, logits, START, rel_tol=TOL, max_tied_rows=2)) == 2
    with pytest.raises(AssertionError, match="2 rows diverged"):
        assert_same_or_near_tie(ref, out, logits, START, rel_tol=TOL, max_tied_rows=1)


def test_differences_in_the_prompt_and_unexplained_lengths_fail():
    ref, logits = streams()
    out = ref.clone()
    out[0, 1] = 7
    with pytest.raises(AssertionError, match="inside the prompt"):
        assert_same_or_near_tie(ref, out, logits, START, rel_tol=TOL)
    with pytest.raises(AssertionError, match="different lengths"):
        assert_same_or_near_tie(ref, ref[:, :-1], logits, START, rel_tol=TOL)
    # a diverged row may end the other run earlier
    logits[2, 3, 0] = 4.0
    out = ref.clone()[:, :-1]
    out[2, START + 3] = 0
    assert assert_same_or_near_tie(ref, out, logits, START, rel_tol=TOL) == [(2, START + 3)]


def test_masked_logits_never_make_a_tie():
    """A forced step leaves one finite logit: a different token there is -inf away, never a tie."""
    ref, logits = streams()
    logits[0, 0] = float("-inf")
    logits[0, 0, ref[0, START]] = 0.0
    out = ref.clone()
    out[0, START] = 3
    with pytest.raises(AssertionError, match="row 0 step 0"):
        assert_same_or_near_tie(ref, out, logits, START, rel_tol=TOL)
