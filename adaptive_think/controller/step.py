"""The controller's step in plain torch: the one statement of its per-row semantics (the kernel's reference).

One call is one decode step of the thinking controller for every row at once; every row reads its own
policy parameters (`RowParams`) and its own step counter (docs/design.md, "The controller"):

1. observe the token the row wrote last step (not at the row's step 0, the prompt's last position):
   - CLOSING: advance the forced-sequence cursor (counting stop-text tokens as thinking), and answer once
     the skip or stop segment is written;
   - PROMPT / ANSWERING: match the open marker; a match opens a think block (ANSWERING -> THINKING is a
     later, interleaved block: the budget is shared with the earlier ones, `blocks` counts them, and the
     row's `ended_by` / `decision_step` describe its latest block);
   - THINKING: count the token as thinking unless it is eos, match the close marker (the model's own
     close: `natural`); markers are matched with KMP failure links, so self-overlapping markers are found;
   - eos ends the row (DONE).
2. route, then score: at a probe row's step 0 the probe's route (if any) puts the row in its calibration
   group (`route_rows`; the row keeps it for the whole request); then the ready head every step, skip head and
   the out-of-distribution guard at the row's step 0 (probe rows only; NaN elsewhere); with a
   training-free logit score (`spec.score`) both come from the step's precomputed score [B] instead
   (controller/logit_score.py), the skip one only when the score file keeps it;
3. decide: the guard first (a probe row whose guard score at its step 0 exceeds its guard threshold is flagged
   and runs its fallback thresholds from then on, this step's skip decision included; any other row runs its
   group's thresholds, `group_threshold`), then skip (a row's
   step 0 for probe / none; policy none also skips every later block at once),
   budget (the row's count reaches max_think minus its stop text), or probe stop (min tokens, EMA
   smoothing, patience, optionally only after a boundary token);
4. write the token to force (`state.forced`, -1 for none) and advance every row's step.

Everything is tensor arithmetic with `torch.where`: no `.item()`, no host sync, no data-dependent shapes,
so the same call can be captured in a CUDA graph. The fused Triton kernel of the same step
(kernels/controller_step, run through `adaptive_think.controller.dispatch`) uses these names, so the two read
side by side.
"""

from __future__ import annotations

import torch

from adaptive_think.controller.params import (
    P_ALPHA,
    P_BOUNDARY_ONLY,
    P_FALLBACK_SKIP_THRESHOLD,
    P_FALLBACK_THRESHOLD,
    P_GROUPS,
    P_GUARD_THRESHOLD,
    P_MAX_THINK,
    P_MIN_THINK,
    P_PATIENCE,
    P_POLICY,
    P_SKIP_CLOSE,
    P_SKIP_END,
    P_SKIP_THRESHOLD,
    P_STOP_CLOSE,
    P_STOP_END,
    P_THRESHOLD,
    RowParams,
)
from adaptive_think.controller.state import (
    ANSWERING,
    CLOSING,
    DONE,
    ENDED_BUDGET,
    ENDED_NATURAL,
    ENDED_NONE,
    ENDED_PROBE,
    ENDED_SKIPPED,
    POLICY_NONE,
    POLICY_PROBE,
    PROMPT,
    THINKING,
    ControllerSpec,
    INT_FIELDS,
    NO_MEMORY,
    ControllerState,
    ProbeTensors,
)


def normalised(hidden: torch.Tensor, probe: ProbeTensors) -> torch.Tensor:
    """The probe's features of hidden states [..., D] (any float dtype): (h - mean) * inv_std, fp32."""
    return (hidden.float() - probe.mean) * probe.inv_std


def memory_features(x: torch.Tensor, probe: ProbeTensors) -> torch.Tensor:
    """What a probe with memory remembers of features x [..., D]: memory_w x + memory_b, [..., K]."""
    return x @ probe.memory_w.t() + probe.memory_b


def grow_memory(memory: torch.Tensor, feats: torch.Tensor, probe: ProbeTensors) -> torch.Tensor:
    """One thought token's update of a memory [..., K] by its features [..., K]: a running maximum, or for the
    counting units (probe.memory_sum) a running sum of sigmoid(features)."""
    grown = torch.maximum(memory, feats)
    if probe.memory_sum is None:
        return grown
    return torch.where(probe.memory_sum > 0.5, memory + torch.sigmoid(feats), grown)


def thought_memory(feats: torch.Tensor, memory_sum: torch.Tensor | None, mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """The memory after each token of whole thoughts, as `grow_memory` leaves it token by token from NO_MEMORY:
    feats [..., T, K] (the memory features of each thought token), mask [..., T] (False: padding, which adds
    nothing) -> [..., T, K]."""
    if mask is not None:
        feats = feats.masked_fill(~mask[..., None], NO_MEMORY)
    out = torch.cummax(feats.clamp_min(NO_MEMORY), -2).values
    if memory_sum is None:
        return out
    grow = torch.sigmoid(feats) if mask is None else torch.sigmoid(feats) * mask[..., None]
    return torch.where(memory_sum > 0.5, NO_MEMORY + torch.cumsum(grow, -2), out)


def head_scores(hidden: torch.Tensor, probe: ProbeTensors, memory: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe heads on hidden states [B, D] (any float dtype, any row stride) -> (ready [B], skip [B]) fp32.

    memory: [B, K] running maxima, including this state's features (probes with memory only, where the ready
    head reads [x, memory]).
    """
    return feature_scores(normalised(hidden, probe), probe, memory)


def feature_scores(x: torch.Tensor, probe: ProbeTensors, memory: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """`head_scores` on features already normalised, x [B, D] fp32."""
    if (memory is None) != (probe.memory_w is None):
        raise ValueError("head_scores: pass memory [B, K] exactly when the probe has memory "
                         f"(this one keeps {probe.memory_size} features).")

    def head(inp, w1, b1, w2, b2):
        z = inp @ w1.t() + b1  # [B, H]
        if probe.relu:
            z = torch.relu(z)
        return torch.sigmoid(z @ w2 + b2)  # [B]

    ready_in = x if memory is None else torch.cat([x, memory], -1)
    ready = head(ready_in, probe.ready_w1, probe.ready_b1, probe.ready_w2, probe.ready_b2)
    skip = head(x, probe.skip_w1, probe.skip_b1, probe.skip_w2, probe.skip_b2)
    return ready, skip


def guard_scores(x: torch.Tensor, probe: ProbeTensors) -> torch.Tensor:
    """The guard's score of features x [B, D] fp32 (normalised as the heads read them) -> [B] fp32.

    y = x - guard_mean, p = guard_dirs y [B, R]: score = sum_j coef_j p_j^2 + coef_R |y|^2. With coef_j =
    1/var_j - 1/res_var and coef_R = 1/res_var this is sum_j p_j^2 / var_j + |y - U^T p|^2 / res_var, the
    Mahalanobis distance under R principal directions plus an isotropic residual (probe/guard.py fits it).
    """
    y = x - probe.guard_mean  # [B, D]
    p = y @ probe.guard_dirs.t()  # [B, R]
    coef = probe.guard_coef
    return (p * p) @ coef[:-1] + (y * y).sum(-1) * coef[-1]


def route_groups(x: torch.Tensor, probe: ProbeTensors) -> torch.Tensor:
    """The route's group of features x [B, D] fp32 (normalised as the heads read them) -> [B] int64:
    argmax(route_w x + route_b), ties to the first group (probe/route.py fits it)."""
    return (x @ probe.route_w.t() + probe.route_b).argmax(-1)


def route_rows(hidden: torch.Tensor | None, state: ControllerState, params: RowParams, spec: ControllerSpec) -> None:
    """Put each probe row at its step 0 in its route group, argmax(route_w x + route_b) (ties: the first), in
    `state.group`; other rows keep theirs. Nothing without a route or hidden. No host sync (graph-capturable)."""
    probe = spec.probe
    if probe is None or probe.route_w is None or hidden is None:
        return
    g, d = probe.route_w.shape[0], probe.hidden_size
    if probe.route_w.shape != (g, d) or probe.route_b is None or probe.route_b.shape != (g,):
        raise ValueError(f"the probe's route must be route_w [G, {d}] and route_b [G], got "
                         f"{tuple(probe.route_w.shape)} and {getattr(probe.route_b, 'shape', None)}.")
    if params.floats.shape[0] < P_GROUPS + 2 * (g - 1):
        raise ValueError(f"the probe's route has {g} groups but params.floats holds a group table for "
                         f"{(params.floats.shape[0] - P_GROUPS) // 2 + 1}; pack the rows with RowParams.pack(..., "
                         f"groups={g}) (ThinkController does).")
    group = route_groups(normalised(hidden, probe), probe)  # [B]
    routed = (state.step == 0) & (params.ints[P_POLICY] == POLICY_PROBE)
    state.group.copy_(torch.where(routed, group.to(state.group.dtype), state.group))


def group_threshold(pf: tuple[torch.Tensor, ...], group: torch.Tensor, which: int) -> torch.Tensor:
    """Each row's threshold of its group [B]: which = 0 the ready one, 1 the skip one (group 0: P_THRESHOLD /
    P_SKIP_THRESHOLD; group g >= 1: the group table's pair g; a group past the table: group 0's)."""
    own = pf[(P_THRESHOLD, P_SKIP_THRESHOLD)[which]]
    if len(pf) == P_GROUPS:  # no group table: every row is in group 0
        return own
    table = torch.stack(pf[P_GROUPS + which::2])  # [G - 1, B]
    at = (group.long() - 1).clamp(0, table.shape[0] - 1)[None]  # [1, B]
    return torch.where((group > 0) & (group <= table.shape[0]), table.gather(0, at)[0], own)


def kmp_advance(match: torch.Tensor, token: torch.Tensor, marker: torch.Tensor, fail: torch.Tensor) -> torch.Tensor:
    """[B] marker tokens matched after `token` [B], from `match` [B] (KMP: fall back along `fail`, then advance)."""
    n = marker.numel()
    if n == 1:  # the common single-token marker: the same result in two ops
        return (token == marker).to(match.dtype)
    k = match.long().clamp(0, n - 1)  # a stored match is always < n (a full match resets it)
    for _ in range(n - 1):  # each fallback shortens k, so n - 1 of them reach any needed length
        fall = (k > 0) & (marker[k] != token)
        k = torch.where(fall, fail[(k - 1).clamp(min=0)].long(), k)
    return torch.where(marker[k] == token, k + 1, k).to(match.dtype)


def observe(tok: torch.Tensor, obs: torch.Tensor, state: ControllerState, spec: ControllerSpec,
            params: RowParams) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Step 1: the rows where obs [B] holds see token tok [B] (int64).

    Returns ({state field name: updated [B] tensor}, opened [B] bool: a think block opened on this token).
    """
    s = dict(zip(INT_FIELDS, state.ints.unbind(0)))  # [B] views, one op
    s["ema"] = state.ema
    s["guard_score"] = state.guard_score
    p = params.ints.unbind(0)
    phase, step = s["phase"], s["step"]
    lo, lc = spec.open_ids.numel(), spec.close_ids.numel()
    is_eos = (tok[:, None] == spec.eos_ids[None, :]).any(-1) & obs

    closing = obs & (phase == CLOSING)
    # forced stop-text tokens are thinking tokens; skip-segment tokens are not
    in_stop_text = closing & (s["cursor"] >= p[P_SKIP_END]) & (s["cursor"] < p[P_STOP_CLOSE])
    cursor = torch.where(closing, s["cursor"] + 1, s["cursor"])
    end = torch.where(s["ended_by"] == ENDED_SKIPPED, p[P_SKIP_END], p[P_STOP_END])
    phase_new = torch.where(closing & (cursor >= end), ANSWERING, phase)

    watching = obs & ((phase == PROMPT) | (phase == ANSWERING))
    open_match = torch.where(watching, kmp_advance(s["open_match"], tok, spec.open_ids, spec.open_fail), s["open_match"])
    opened = watching & (open_match >= lo)
    phase_new = torch.where(opened, THINKING, phase_new)
    open_match = torch.where(opened, 0, open_match)
    blocks = torch.where(opened, s["blocks"] + 1, s["blocks"])
    # each block starts like the first: no decision yet, fresh smoothing and patience
    ended_by = torch.where(opened, ENDED_NONE, s["ended_by"])
    decision_step = torch.where(opened, -1, s["decision_step"])
    streak = torch.where(opened, 0, s["streak"])
    ema = torch.where(opened, 0.0, s["ema"])

    thinking = obs & (phase == THINKING)
    think_count = torch.where((thinking & ~is_eos) | in_stop_text, s["think_count"] + 1, s["think_count"])
    close_match = torch.where(thinking, kmp_advance(s["close_match"], tok, spec.close_ids, spec.close_fail),
                              s["close_match"])
    closed = thinking & (close_match >= lc)
    # the close marker's own tokens were counted above; they are not thinking tokens
    think_count = torch.where(closed, think_count - lc, think_count)
    phase_new = torch.where(closed, ANSWERING, phase_new)
    close_match = torch.where(closed, 0, close_match)
    ended_by = torch.where(closed, ENDED_NATURAL, ended_by)
    decision_step = torch.where(closed, step - 1, decision_step)
    phase_new = torch.where(is_eos, DONE, phase_new)
    return dict(phase=phase_new, think_count=think_count, streak=streak, cursor=cursor, open_match=open_match,
                close_match=close_match, ended_by=ended_by, decision_step=decision_step, step=step, blocks=blocks,
                ema=ema, guard=s["guard"], group=s["group"], guard_score=s["guard_score"]), opened


def _write(state: ControllerState, o: dict[str, torch.Tensor], score: torch.Tensor | None = None,
           memory: torch.Tensor | None = None) -> None:
    """Store the updated fields: one copy per packed buffer (memory [K, B]: a probe's new running maxima)."""
    state.ints.copy_(torch.stack([o[name] for name in INT_FIELDS]))
    floats = [o["ema"][None], (state.score if score is None else score)[None], o["guard_score"][None]]
    if memory is not None:
        floats.append(memory)
    state.floats[: sum(f.shape[0] for f in floats)].copy_(torch.cat(floats))


def observe_final_reference(last_token: torch.Tensor, state: ControllerState, spec: ControllerSpec,
                            params: RowParams) -> None:
    """Observe the final generated token [B] of each row (after it nothing is decided): step 1 alone.

    Leaves `forced`, `score` and `step` as they were. Rows still at their step 0 observe nothing.
    """
    o, _ = observe(last_token.to(state.ints.device, torch.int64), state.step != 0, state, spec, params)
    _write(state, o)


def controller_step_reference(
    hidden: torch.Tensor | None,
    last_token: torch.Tensor,
    state: ControllerState,
    params: RowParams,
    spec: ControllerSpec,
    score: torch.Tensor | None = None,
) -> None:
    """Run one controller step in place on `state` for every row.

    hidden: [B, D] the probe layer's hidden state at the last position (None: no probe scores, NaN).
    last_token: [B] int, the token each row wrote at its previous step (ignored at a row's step 0).
    score: [B] fp32 this step's logit score (`logit_score`), read when `spec.score` is set (None: NaN).
    Writes state.forced [B] (token to force or -1) and state.score [B]; advances state.step [B].

    Example:
        >>> controller_step_reference(None, tokens[:, -1], state, params, spec); forced = state.forced
    """
    route_rows(hidden, state, params, spec)
    tok = last_token.to(torch.int64)
    p, pf = params.ints.unbind(0), params.floats.unbind(0)
    step = state.step  # [B]
    first = step == 0
    o, opened = observe(tok, ~first, state, spec, params)
    seen = o["phase"]  # the phase after observing
    think_count, close_match = o["think_count"], o["close_match"]

    # 2. scores (probe rows only)
    is_probe = p[P_POLICY] == POLICY_PROBE
    nan = torch.full_like(state.ema, float("nan"))
    guard = nan
    memory = None
    if spec.probe is not None and hidden is not None:
        x = normalised(hidden, spec.probe)  # [B, D]
        if spec.probe.memory_w is not None:
            # the memory spans the block's thought tokens read so far: not the prompt's last token, not the open
            # marker (a block opening this step starts it afresh), not the skip or stop text after a decision
            memory = torch.where(opened[None], NO_MEMORY, state.memory)  # [K, B]
            reads_thought = (seen == THINKING) & ~opened & ~first
            feats = memory_features(x, spec.probe).t()  # [K, B]
            memory = torch.where(reads_thought[None], grow_memory(memory.t(), feats.t(), spec.probe).t(), memory)
        ready, skip = feature_scores(x, spec.probe, None if memory is None else memory.t())
        ready, skip = torch.where(is_probe, ready, nan), torch.where(is_probe, skip, nan)
        if spec.probe.guard_dirs is not None:
            guard = torch.where(is_probe, guard_scores(x, spec.probe), nan)
    elif spec.score is not None and score is not None:
        ready = torch.where(is_probe, score.float(), nan)
        skip = ready if spec.score.skip else nan
    else:
        ready, skip = nan, nan
    score = torch.where(first, skip, ready)

    # 3. decide
    open_row = (seen == PROMPT) | (seen == THINKING)
    # the guard reads the prompt's end only; a flagged row keeps its fallback thresholds for the whole request
    flagged = first & open_row & is_probe & (guard > pf[P_GUARD_THRESHOLD])  # NaN never flags
    guarded = (o["guard"] != 0) | flagged
    threshold = torch.where(guarded, pf[P_FALLBACK_THRESHOLD], group_threshold(pf, o["group"], 0))
    skip_threshold = torch.where(guarded, pf[P_FALLBACK_SKIP_THRESHOLD], group_threshold(pf, o["group"], 1))
    wants_skip = (is_probe & (skip >= skip_threshold)) | (p[P_POLICY] == POLICY_NONE)  # NaN never skips
    do_skip = (first & open_row & wants_skip) | (opened & (p[P_POLICY] == POLICY_NONE))

    in_thought = (seen == THINKING) & ~do_skip
    valid = ~torch.isnan(ready)
    alpha = pf[P_ALPHA]
    ema = torch.where(in_thought & valid, alpha * ready + (1.0 - alpha) * o["ema"], o["ema"])
    over = in_thought & (think_count >= p[P_MIN_THINK]) & valid & (ema >= threshold)  # NaN compares False
    at_boundary = spec.is_boundary[tok.clamp(0, spec.is_boundary.numel() - 1)] & ~first
    # a row that stops only at boundaries counts its patience in reasoning steps: tokens between them don't count
    counted = in_thought & ((p[P_BOUNDARY_ONLY] == 0) | at_boundary)
    streak = torch.where(counted & over, o["streak"] + 1, torch.where(counted, 0, o["streak"]))

    stop_len = p[P_STOP_CLOSE] - p[P_SKIP_END]
    over_budget = in_thought & (think_count >= p[P_MAX_THINK] - stop_len)  # room is kept for the stop text
    # `over` keeps a stop from bypassing min_think / threshold when patience < 1 (same result for patience >= 1)
    probe_stop = is_probe & in_thought & ~over_budget & over & (streak >= p[P_PATIENCE])
    probe_stop = probe_stop & ((p[P_BOUNDARY_ONLY] == 0) | at_boundary)
    close_now = over_budget | probe_stop
    decided = do_skip | close_now

    phase = torch.where(decided, CLOSING, seen)
    # a row skipped from PROMPT opens the block itself (a new block); one already inside starts at the close
    blocks = torch.where(do_skip & (seen == PROMPT), o["blocks"] + 1, o["blocks"])
    cursor = torch.where(do_skip, torch.where(seen == PROMPT, 0, p[P_SKIP_CLOSE]), o["cursor"])
    # a stop writes the stop text when it fits the budget; a close marker the model has begun is completed
    # instead (its tokens leave the thought count), so a row never holds more than max_think thinking tokens
    fits = think_count <= p[P_MAX_THINK] - stop_len
    stop_from = torch.where(close_match > 0, p[P_STOP_CLOSE] + close_match,
                            torch.where(fits, p[P_SKIP_END], p[P_STOP_CLOSE]))
    cursor = torch.where(close_now, stop_from, cursor)
    think_count = torch.where(close_now, think_count - close_match, think_count)
    ended_by = torch.where(do_skip, ENDED_SKIPPED, o["ended_by"])
    ended_by = torch.where(over_budget, ENDED_BUDGET, ended_by)
    ended_by = torch.where(probe_stop, ENDED_PROBE, ended_by)
    decision_step = torch.where(decided, step, o["decision_step"])
    close_match = torch.where(close_now, 0, close_match)

    # 4. the token to force
    width = params.force.shape[1]
    at = cursor.long().clamp(0, width - 1)[:, None]  # [B, 1]
    forced = torch.where(phase == CLOSING, params.force.gather(1, at)[:, 0], -1)

    o.update(phase=phase, think_count=think_count, streak=streak, cursor=cursor, close_match=close_match,
             ended_by=ended_by, decision_step=decision_step, step=step + 1, blocks=blocks, ema=ema,
             guard=guarded.to(o["guard"].dtype), guard_score=torch.where(first, guard, o["guard_score"]))
    _write(state, o, score, memory)
    state.forced.copy_(forced)
