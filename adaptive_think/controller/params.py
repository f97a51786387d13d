"""Per-row policy parameters of the controller, as device tensors (one batch mixes policies).

A `ThinkConfig` is resolved on the host into a `RowSettings` (probe defaults filled in, texts tokenized),
and a batch of those is packed into `RowParams`, a struct of arrays the torch reference and the Triton
kernel both read:

- `ints`   [NP_INT, B] int32: policy code, min / max thinking tokens, patience, boundary-only flag, trace flag
           and where each segment of the row's forced-token buffer starts and ends (rows P_*);
- `floats` [NP_FLOAT + 2 (G - 1), B] fp32: ready threshold, skip threshold (2.0 = never skip), EMA weight, the
           guard's threshold (inf = no guard) and the fallback's ready / skip thresholds a flagged row runs instead;
           then the group table of a probe with a route of G groups: group g >= 1's ready threshold at row
           P_GROUPS + 2 (g - 1) and its skip threshold at the row after (group 0's are the first two rows);
- `force`  [B, F] int64: the row's forced sequences, padded with -1 to the capacity F:

      [open, empty-block text, close, exit] [stop text, close, exit]
       ^0                      ^SKIP_CLOSE   ^SKIP_END  ^STOP_CLOSE  ^STOP_END

  A skip from PROMPT forces from 0 (it opens the block itself), a skip of a block that is already open from
  SKIP_CLOSE; both end at SKIP_END. A stop (budget or probe) forces from SKIP_END (stop text, then close and
  exit) and ends at STOP_END; if the model has begun writing the close marker (k tokens) the stop completes
  it from STOP_CLOSE + k instead, without stop text. A skip never writes the stop text.

The budget counts the stop text: a row's budget stop starts when `think_tokens >= max_think - len(stop)`,
and stop-text tokens are counted as thinking tokens as they are written, so a row never holds more than
max_think_tokens thinking tokens, stop text included. A stop text longer than max_think_tokens is refused
when the row is resolved; a later think block opened once the budget is spent is closed without it.

Routed thresholds: a probe with a route puts each probe row in one of G calibration groups at its step 0
(`step.route_rows`), and the row runs its group's (ready, skip) pair from then on; a guard-flagged row still
runs its fallback pair. A row that carries fewer groups than the batch (a non-probe row, or a config that set
its thresholds) repeats its own pair for the rest, so every row of a batch has the same G.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from adaptive_think.config import ThinkConfig
from adaptive_think.controller.state import NO_LIMIT, POLICY_CODES, PackedBuffers

# Rows of `RowParams.ints` [NP_INT, B] int32.
P_POLICY = 0  # POLICY_* code
P_MIN_THINK = 1  # the probe may not stop a thought before this many thinking tokens
P_MAX_THINK = 2  # hard cap on thinking tokens (NO_LIMIT when uncapped); all blocks share it
P_PATIENCE = 3  # consecutive steps (boundaries, for a boundary-only row) over the threshold before a probe stop
P_BOUNDARY_ONLY = 4  # 1: a probe stop only right after a boundary token
P_TRACE = 5  # 1: keep the row's per-step score in its report
P_SKIP_CLOSE = 6  # index in `force` where the skip's close marker starts
P_SKIP_END = 7  # end of the skip segment = start of the stop text
P_STOP_CLOSE = 8  # end of the stop text = where the stop's close marker starts
P_STOP_END = 9  # end of the stop segment
NP_INT = 10
# Rows of `RowParams.floats` [NP_FLOAT, B] fp32.
P_THRESHOLD = 0  # ready-score threshold of a probe stop
P_SKIP_THRESHOLD = 1  # skip-score threshold at the row's step 0 (> 1: never skips)
P_ALPHA = 2  # EMA weight of the newest ready score (1 = no smoothing)
P_GUARD_THRESHOLD = 3  # a probe row whose guard score at its step 0 exceeds this falls back (inf: no guard)
P_FALLBACK_THRESHOLD = 4  # the ready threshold of a row the guard flagged (NEVER: full thinking)
P_FALLBACK_SKIP_THRESHOLD = 5  # its skip threshold (NEVER: no skip)
NP_FLOAT = 6
P_GROUPS = NP_FLOAT  # first row of the group table: group g >= 1's ready at P_GROUPS + 2 (g - 1), its skip after it

NEVER = 2.0  # a threshold no probability reaches
NO_GUARD = float("inf")  # a guard threshold no score passes (a NaN score never passes either)
MIN_FORCE_CAPACITY = 64  # default width of the forced-token buffer (engines key captured steps on shapes)


@dataclass(frozen=True)
class RowSettings:
    """One row's resolved policy (host side): a ThinkConfig with probe defaults applied and texts tokenized."""

    policy: int
    min_think: int
    max_think: int
    threshold: float
    skip_threshold: float
    alpha: float
    patience: int
    boundary_only: bool
    trace: bool
    exit_ids: tuple[int, ...]
    stop_ids: tuple[int, ...]
    guard_threshold: float = NO_GUARD
    fallback_threshold: float = NEVER
    fallback_skip_threshold: float = NEVER
    group_thresholds: tuple[tuple[float, float], ...] = ()  # (ready, skip) of route groups 1..G-1 (0's: above)


def resolve_config(config: ThinkConfig, probe=None, encode: Callable[[str], Sequence[int]] | None = None,
                   decoding: str = "greedy") -> RowSettings:
    """ThinkConfig -> RowSettings. probe: a `Probe` (calibrated thresholds and policy defaults), bare
    `ProbeTensors` (then probe rows must set their thresholds), or None;
    encode: text -> token ids (no special tokens), needed when the row has an exit or stop text;
    decoding: the call's decoding ("greedy" / "sampled"), whose calibrated thresholds a probe row takes
    unless its config names another."""
    if not isinstance(config, ThinkConfig):
        raise ValueError(f"think must be a ThinkConfig (or a list of them, one per row), got {type(config).__name__}.")
    is_probe = config.policy == "probe"
    if is_probe and probe is None:
        raise ValueError('ThinkConfig(policy="probe") needs a probe; pass probe=... to AdaptiveThinker.')
    defaults = dict(getattr(probe, "policy_defaults", {}) or {}) if is_probe else {}
    exit_text = config.exit_text if config.exit_text is not None else defaults.get("exit_text", "")
    stop_text = config.stop_text if config.stop_text is not None else defaults.get("stop_text", "")
    boundary = config.stop_at_boundary if config.stop_at_boundary is not None else defaults.get("stop_at_boundary", False)

    def tokens(text: str, what: str) -> tuple[int, ...]:
        if not text:
            return ()
        if encode is None:
            raise ValueError(f"ThinkConfig.{what}={text!r} needs a tokenizer: pass encode=... to ThinkController.")
        return tuple(int(t) for t in encode(text))

    exit_ids, stop_ids = tokens(exit_text, "exit_text"), tokens(stop_text, "stop_text")
    max_think = NO_LIMIT if config.max_think_tokens is None else config.max_think_tokens
    if len(stop_ids) > max_think:
        raise ValueError(
            f"ThinkConfig.stop_text={stop_text!r} is {len(stop_ids)} tokens but max_think_tokens={max_think}: the "
            "budget counts the stop text, so raise max_think_tokens or shorten stop_text."
        )
    if is_probe:
        # the effort rung's calibrated pair (the probe's default rung when effort is None)
        if hasattr(probe, "thresholds"):
            ready_t, skip_t = probe.thresholds(config.effort, config.decoding or decoding)
        elif config.effort is not None:
            raise ValueError(f"ThinkConfig.effort={config.effort!r} needs a Probe with an effort ladder, not bare ProbeTensors.")
        else:
            ready_t, skip_t = getattr(probe, "ready_threshold", None), getattr(probe, "skip_threshold", None)
        threshold = config.threshold if config.threshold is not None else ready_t
        skip = config.skip_threshold if config.skip_threshold is not None else skip_t
        if threshold is None or skip is None:
            raise ValueError("ThinkConfig.threshold / skip_threshold of None take the probe's calibrated values, but "
                             "the probe given carries none (bare ProbeTensors): set both in the ThinkConfig.")
        guard_t, fallback = guard_settings(config, probe, config.decoding or decoding)
        groups = group_settings(config, probe, config.decoding or decoding)
        if groups:
            threshold, skip = groups[0]
            groups = groups[1:]
    else:
        threshold, skip = NEVER, NEVER
        guard_t, fallback = NO_GUARD, (NEVER, NEVER)
        groups = []
    return RowSettings(
        policy=POLICY_CODES[config.policy], min_think=config.min_think_tokens, max_think=max_think,
        threshold=float(threshold), skip_threshold=float(skip) if config.allow_skip else NEVER,
        alpha=float(config.smoothing), patience=row_patience(config, defaults, config.decoding or decoding),
        boundary_only=bool(boundary) and is_probe,
        trace=bool(config.trace), exit_ids=exit_ids, stop_ids=stop_ids, guard_threshold=float(guard_t),
        fallback_threshold=float(fallback[0]), fallback_skip_threshold=float(fallback[1]) if config.allow_skip else NEVER,
        group_thresholds=tuple((float(r), float(k) if config.allow_skip else NEVER) for r, k in groups),
    )


def row_patience(config: ThinkConfig, defaults: dict, decoding: str) -> int:
    """The config's patience, else the probe's calibrated patience for the row's decoding (a probe row's
    `defaults` are the probe's policy_defaults), else 1."""
    if config.patience is not None:
        return config.patience
    return int((defaults.get("patience") or {}).get(decoding, 1))


def group_settings(config: ThinkConfig, probe, decoding: str) -> list[tuple[float, float]]:
    """A probe row's (ready, skip) per route group, group 0 first ([] without a route); a threshold the config
    sets applies to every group."""
    pairs_of = getattr(probe, "group_thresholds", None)
    pairs = pairs_of(config.effort, decoding) if callable(pairs_of) else None
    if not pairs:
        return []
    return [(config.threshold if config.threshold is not None else ready,
             config.skip_threshold if config.skip_threshold is not None else skip) for ready, skip in pairs]


def guard_settings(config: ThinkConfig, probe, decoding: str) -> tuple[float, tuple[float, float]]:
    """A probe row's guard threshold (NO_GUARD when off) and the (ready, skip) thresholds it falls back to."""
    guard = getattr(probe, "guard", None)
    if config.guard is False or (config.guard is None and guard is None):
        return NO_GUARD, (NEVER, NEVER)
    if guard is None:
        raise ValueError("ThinkConfig(guard=True) needs a probe with an out-of-distribution guard; fit one with "
                         "`adaptive-think fit-guard --model M --probe P --out P2`, or leave guard=None (use the "
                         "probe's guard when it has one).")
    if config.guard_fallback == "full":
        return float(guard.threshold), (NEVER, NEVER)
    if not hasattr(probe, "thresholds") or config.guard_fallback not in probe.efforts:
        raise ValueError(f"ThinkConfig.guard_fallback={config.guard_fallback!r} is neither 'full' nor an effort rung "
                         f"of this probe ({getattr(probe, 'efforts', [])}).")
    return float(guard.threshold), probe.thresholds(config.guard_fallback, decoding)


def force_row(row: RowSettings, open_ids, empty_ids, close_ids) -> tuple[list[int], tuple[int, int, int, int]]:
    """A row's forced tokens (skip segment, stop segment) and (SKIP_CLOSE, SKIP_END, STOP_CLOSE, STOP_END)."""
    skip = list(open_ids) + list(empty_ids) + list(close_ids) + list(row.exit_ids)
    stop = list(row.stop_ids) + list(close_ids) + list(row.exit_ids)
    skip_close = len(open_ids) + len(empty_ids)
    skip_end = len(skip)
    stop_close = skip_end + len(row.stop_ids)
    return skip + stop, (skip_close, skip_end, stop_close, skip_end + len(stop))


class RowParams(PackedBuffers):
    """ints [NP_INT, B] int32, floats [NP_FLOAT + 2 (G - 1), B] fp32, force [B, F] int64 (see the module docstring)."""

    def __init__(self, ints: torch.Tensor, floats: torch.Tensor, force: torch.Tensor):
        self.ints, self.floats, self.force = ints, floats, force

    @classmethod
    def pack(cls, rows: Sequence[RowSettings], open_ids, empty_ids, close_ids, capacity: int, device,
             groups: int = 1) -> "RowParams":
        """Pack resolved rows (host) into device tensors with a forced-token buffer of `capacity` columns and a
        group table of `groups` - 1 (ready, skip) pairs per row (the route's G; 1: no route)."""
        if groups < 1:
            raise ValueError(f"RowParams.pack: groups must be >= 1 (the route's G; 1 without a route), got {groups}.")
        ints, floats, force = [], [], []
        for r in rows:
            if len(r.group_thresholds) > groups - 1:
                raise ValueError(
                    f"a row carries {len(r.group_thresholds)} route-group threshold pairs but the batch has {groups} "
                    f"groups (room for {groups - 1} beyond group 0); pack with groups={len(r.group_thresholds) + 1} "
                    "(the probe's route) or resolve the row against the same probe."
                )
            # a short table repeats the row's own pair (a non-probe row, or a config that set its thresholds)
            table = [*r.group_thresholds] + [(r.threshold, r.skip_threshold)] * (groups - 1 - len(r.group_thresholds))
            seq, (skip_close, skip_end, stop_close, stop_end) = force_row(r, open_ids, empty_ids, close_ids)
            if len(seq) > capacity:
                raise ValueError(
                    f"a row's forced tokens (markers, exit and stop text: {len(seq)} tokens) exceed the controller's "
                    f"force_capacity={capacity}; build the ThinkController with force_capacity={len(seq)} or more."
                )
            ints.append([r.policy, r.min_think, r.max_think, r.patience, int(r.boundary_only), int(r.trace),
                         skip_close, skip_end, stop_close, stop_end])
            floats.append([r.threshold, r.skip_threshold, r.alpha, r.guard_threshold, r.fallback_threshold,
                           r.fallback_skip_threshold] + [t for pair in table for t in pair])
            force.append(seq + [-1] * (capacity - len(seq)))
        return cls(torch.tensor(ints, dtype=torch.int32).t().contiguous().to(device),
                   torch.tensor(floats, dtype=torch.float32).reshape(len(rows), NP_FLOAT + 2 * (groups - 1))
                   .t().contiguous().to(device),
                   torch.tensor(force, dtype=torch.int64).reshape(len(rows), capacity).to(device))

    @property
    def capacity(self) -> int:
        return self.force.shape[1]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.ints, self.floats, self.force


def needed_capacity(rows: Sequence[RowSettings], open_ids, empty_ids, close_ids) -> int:
    """The force-buffer width these rows need."""
    return max((len(force_row(r, open_ids, empty_ids, close_ids)[0]) for r in rows), default=0)
