"""Plain-torch reference of the probe_step kernel: the ground truth the Triton kernel is tested against.

One call is one decode step of the thinking controller (DESIGN.md section 4) for every row at once:

1. observe the token written last step (not at step 0, where the prompt's last token is not generated):
   advance the exit-sequence cursor, match the open / close markers, count thinking tokens, see eos;
2. score: ready head every step, skip head at step 0 (probe policy only);
3. decide: skip (step 0), budget cap, or probe stop (min tokens, EMA smoothing, hysteresis, boundary);
4. write the token to force (`state.forced`, -1 for none) and advance `state.step`.

Everything is tensor arithmetic with `torch.where`: no `.item()`, no host sync, no data-dependent shapes,
so the same call can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from adaptive_think.controller.state import (
    CLOSING,
    DONE,
    ENDED_BUDGET,
    ENDED_NATURAL,
    ENDED_PROBE,
    ENDED_SKIPPED,
    POLICY_NONE,
    POLICY_PROBE,
    PROMPT,
    THINKING,
    ANSWERING,
    ControllerSpec,
    ControllerState,
    ProbeTensors,
    close_start,
)


def head_scores(hidden: torch.Tensor, probe: ProbeTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe heads on hidden states [B, D] (any float dtype, any row stride) -> (ready [B], skip [B]) fp32."""
    x = (hidden.float() - probe.mean) * probe.inv_std  # [B, D]

    def head(w1, b1, w2, b2):
        z = x @ w1.t() + b1  # [B, H]
        if probe.relu:
            z = torch.relu(z)
        return torch.sigmoid(z @ w2 + b2)  # [B]

    ready = head(probe.ready_w1, probe.ready_b1, probe.ready_w2, probe.ready_b2)
    skip = head(probe.skip_w1, probe.skip_b1, probe.skip_w2, probe.skip_b2)
    return ready, skip


def _match(match: torch.Tensor, token: torch.Tensor, marker: torch.Tensor) -> torch.Tensor:
    """Advance a marker matcher by one token: [B] count of marker tokens matched so far."""
    expected = marker[match.clamp(max=marker.numel() - 1).long()]
    return torch.where(
        token == expected, match + 1, (token == marker[0]).to(match.dtype)
    )


def probe_step_reference(
    hidden: torch.Tensor | None,
    last_token: torch.Tensor,
    state: ControllerState,
    spec: ControllerSpec,
) -> None:
    """Run one controller step in place on `state`.

    hidden: [B, D] the policy layer's hidden state at the last position (None unless policy is probe).
    last_token: [B] int64, the token written at the previous step (ignored at step 0).
    Writes state.forced [B] (token to force or -1) and state.score [B]; advances state.step.

    Example:
        >>> probe_step_reference(None, tokens[:, -1], state, spec); scores[state.forced >= 0] ...
    """
    step = state.step  # [1]
    first = step == 0  # [1] bool, broadcasts over rows
    tok = last_token.to(torch.int64)
    phase = state.phase
    lo = spec.open_ids.numel()
    cs = close_start(spec)  # where the close marker starts in force_seq
    lc = spec.close_ids.numel()
    n_force = spec.force_seq.numel()

    # 1. observe last step's token (not at step 0)
    obs = ~first
    is_eos = (tok[:, None] == spec.eos_ids[None, :]).any(-1) & obs

    closing = obs & (phase == CLOSING)
    cursor = torch.where(closing, state.cursor + 1, state.cursor)
    phase_new = torch.where(closing & (cursor >= n_force), torch.full_like(phase, ANSWERING), phase)

    prompt = obs & (phase == PROMPT)
    open_match = torch.where(prompt, _match(state.open_match, tok, spec.open_ids), state.open_match)
    opened = prompt & (open_match >= lo)
    phase_new = torch.where(opened, torch.full_like(phase, THINKING), phase_new)
    open_match = torch.where(opened, torch.zeros_like(open_match), open_match)

    thinking = obs & (phase == THINKING)
    think_count = torch.where(thinking, state.think_count + 1, state.think_count)
    close_match = torch.where(thinking, _match(state.close_match, tok, spec.close_ids), state.close_match)
    closed = thinking & (close_match >= lc)
    # the close marker's own tokens were counted above; they are not thinking tokens
    think_count = torch.where(closed, think_count - lc, think_count)
    phase_new = torch.where(closed, torch.full_like(phase, ANSWERING), phase_new)
    close_match = torch.where(closed, torch.zeros_like(close_match), close_match)
    ended_by = torch.where(closed, torch.full_like(state.ended_by, ENDED_NATURAL), state.ended_by)
    decision_step = torch.where(closed, (step - 1).to(torch.int32).expand_as(phase), state.decision_step)

    phase_new = torch.where(is_eos, torch.full_like(phase, DONE), phase_new)

    # 2. scores
    is_probe = spec.policy == POLICY_PROBE
    if is_probe and spec.probe is not None and hidden is not None:
        ready, skip = head_scores(hidden, spec.probe)
    else:
        ready = torch.full_like(state.ema, float("nan"))
        skip = torch.full_like(state.ema, float("nan"))
    score = torch.where(first, skip, ready)

    # 3. decide
    open_row = (phase_new == PROMPT) | (phase_new == THINKING)
    wants_skip = spec.policy == POLICY_NONE
    if is_probe:
        skip_ok = skip >= spec.skip_threshold  # NaN compares False: never skips
        do_skip = first & open_row & skip_ok
    else:
        do_skip = first & open_row & torch.full_like(open_row, wants_skip)

    in_thought = (phase_new == THINKING) & ~do_skip
    valid = ~torch.isnan(ready)
    ema = torch.where(in_thought & valid, spec.alpha * ready + (1.0 - spec.alpha) * state.ema, state.ema)
    eligible = in_thought & (think_count >= spec.min_think)
    over = eligible & valid & (ema >= spec.threshold)  # NaN ema compares False
    streak = torch.where(over, state.streak + 1, torch.where(in_thought, torch.zeros_like(state.streak), state.streak))

    over_budget = in_thought & (think_count >= spec.max_think)
    at_boundary = spec.is_boundary[tok.clamp(0, spec.is_boundary.numel() - 1)] & obs
    # `over` keeps a stop from bypassing min_think / threshold when patience < 1 (same result for patience >= 1)
    probe_stop = in_thought & ~over_budget & over & (streak >= spec.patience)
    if spec.boundary_only:
        probe_stop = probe_stop & at_boundary
    if not is_probe:
        probe_stop = torch.zeros_like(probe_stop)

    step_i32 = step.to(torch.int32).expand_as(phase)
    close_now = over_budget | probe_stop
    phase_new = torch.where(do_skip | close_now, torch.full_like(phase, CLOSING), phase_new)
    # a row skipped from PROMPT must still open the block; one already inside starts at the close marker
    cursor = torch.where(do_skip & (phase == PROMPT), torch.zeros_like(cursor), cursor)
    cursor = torch.where(do_skip & (phase != PROMPT), torch.full_like(cursor, cs), cursor)
    # a close marker the model has begun is completed, not restarted: its tokens leave the thought count,
    # so a row never holds more than max_think thinking tokens even if it was mid-marker
    cursor = torch.where(close_now, cs + close_match, cursor)
    think_count = torch.where(close_now, think_count - close_match, think_count)
    ended_by = torch.where(do_skip, torch.full_like(ended_by, ENDED_SKIPPED), ended_by)
    ended_by = torch.where(over_budget, torch.full_like(ended_by, ENDED_BUDGET), ended_by)
    ended_by = torch.where(probe_stop, torch.full_like(ended_by, ENDED_PROBE), ended_by)
    decision_step = torch.where(do_skip | close_now, step_i32, decision_step)
    close_match = torch.where(close_now, torch.zeros_like(close_match), close_match)

    # 4. the token to force
    forcing = phase_new == CLOSING
    forced = torch.where(forcing, spec.force_seq[cursor.clamp(0, n_force - 1).long()], torch.full_like(state.forced, -1))

    state.phase.copy_(phase_new)
    state.cursor.copy_(cursor)
    state.open_match.copy_(open_match)
    state.close_match.copy_(close_match)
    state.think_count.copy_(think_count)
    state.ended_by.copy_(ended_by)
    state.decision_step.copy_(decision_step)
    state.ema.copy_(ema)
    state.streak.copy_(streak)
    state.score.copy_(score)
    state.forced.copy_(forced)
    state.step.add_(1)
