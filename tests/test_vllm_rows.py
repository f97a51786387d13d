"""The model wrapper's row tap and its hand-over to the logits processor (adaptive_think/integrations/vllm/
rows.py; no vLLM needed): each request's last `width` query tokens, right-aligned, and Model Runner V2's
chunked verification taking consecutive groups of requests."""

from __future__ import annotations

import pytest
import torch

from adaptive_think.integrations.vllm.rows import CHANNEL, RowInputs, RowTap


def _step():
    # three requests: a decode step with 2 drafts (3 tokens), a prefill chunk of 5, a decode step without drafts
    qsl = torch.tensor([0, 3, 8, 9])
    ids = torch.arange(100, 109)
    pos = torch.tensor([40, 41, 42, 0, 1, 2, 3, 4, 17])
    hidden = torch.arange(9, dtype=torch.float32)[:, None].repeat(1, 2)  # [T, 2]: row t holds t
    return qsl, ids, pos, hidden


def test_the_tap_keeps_each_requests_last_tokens_right_aligned():
    tap = RowTap(rows=4, hidden_size=2, dtype=torch.float32, device="cpu", width=3)
    tap.record(*_step())
    rows = tap.view()
    assert rows.width == 3 and tap.recorded == 3
    # a query shorter than the width repeats its first token in front (never a logits row)
    assert rows.token.tolist() == [100, 101, 102, 105, 106, 107, 108, 108, 108]
    assert rows.pos.tolist() == [40, 41, 42, 2, 3, 4, 17, 17, 17]
    assert rows.hidden[:, 0].tolist() == [0, 1, 2, 5, 6, 7, 8, 8, 8]


def test_a_padded_request_of_a_captured_graph_stays_in_bounds():
    tap = RowTap(rows=4, hidden_size=None, dtype=torch.float32, device="cpu", width=2)
    qsl, ids, pos, _ = _step()
    tap.record(torch.cat([qsl, torch.tensor([9])]), ids, pos, None)  # a padded request starts at the end
    assert tap.view().token.tolist()[-2:] == [108, 108] and tap.view().hidden is None


def test_chunked_verification_takes_consecutive_requests():
    tap = RowTap(rows=4, hidden_size=2, dtype=torch.float32, device="cpu", width=3)
    tap.record(*_step())
    CHANNEL.publish(tap.view())
    first = CHANNEL.take_requests(2, 3)
    second = CHANNEL.take_requests(1, 3)
    assert first.token.tolist() == [100, 101, 102, 105, 106, 107] and second.token.tolist() == [108, 108, 108]
    with pytest.raises(RuntimeError, match="disagree on the batch"):
        CHANNEL.take_requests(1, 3)  # more requests than the step had
    CHANNEL.publish(tap.view())  # a new step starts from its first request
    assert CHANNEL.take_requests(3, 3).token.shape[0] == 9
    CHANNEL.publish(tap.view())
    with pytest.raises(RuntimeError, match="disagree on the batch"):
        CHANNEL.take_requests(1, 2)  # the processor's width is not the wrapper's


def test_the_v1_runner_takes_one_row_per_request():
    CHANNEL.publish(RowInputs(torch.tensor([5, 6]), torch.tensor([3, 9]), None))
    assert CHANNEL.take(2).token.tolist() == [5, 6]
    CHANNEL.publish(RowInputs(torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long), None, width=3))
    with pytest.raises(RuntimeError, match="one row per request"):
        CHANNEL.take(2)
