"""`ThinkConfig`: how much a model may think, validated when it is built.

    >>> ThinkConfig(policy="budget", max_think_tokens=64, exit_text="\\n\\n")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

POLICIES = ("full", "none", "budget", "probe")
DECODINGS = ("greedy", "sampled")


def decoding_of(sampling: dict | None) -> str:
    """"sampled" or "greedy": the decoding mode of generate() kwargs, or of a collection's `sampling` setting."""
    return "sampled" if sampling and sampling.get("do_sample") else "greedy"


@dataclass(frozen=True)
class ThinkConfig:
    """Thinking policy of one row (or, given alone, of every row of a generate() call).

    policy: "full" (never intervene), "none" (skip thinking for every row), "budget" (hard cap on
        thinking tokens), "probe" (skip / stop decided by a trained probe; the budget still caps).
    max_think_tokens: hard cap on thinking tokens per row (required for "budget"; optional for "probe").
    min_think_tokens: the probe may not stop a thought before this many tokens.
    exit_text: text forced after the close marker when the controller ends a thought (e.g. "\\n\\n");
        None: the probe's calibrated exit text for policy "probe", else none.
    stop_text: text forced inside the thought, before the close marker, when the controller stops it (budget
        or probe; never on a skip), e.g. Qwen's "Considering the limited time by the user, I have to give the
        solution based on the thinking directly now."; counted as thinking tokens, and the budget makes room
        for it (a row never exceeds max_think_tokens, stop text included). None: none (or the probe's default).
    threshold / skip_threshold: probe score thresholds; None takes the calibrated values of the effort rung.
    effort: which calibrated operating point of the probe's effort ladder to use ("high" loses least,
        "low" saves most; the probe names its rungs); None: the probe's default rung. Explicit
        threshold / skip_threshold override the rung's.
    decoding: which calibration of the rung to use, "greedy" or "sampled" (a probe trained with a sampled
        collection holds both: answers after an early stop are less sure when sampled, so its sampled
        thresholds stop later); None: the generate() call's own decoding (do_sample), or the request's
        temperature under vLLM.
    smoothing: EMA weight of the newest ready score (1.0 = no smoothing).
    patience: consecutive steps the smoothed score must pass the threshold before stopping (hysteresis); a
        row that stops only at boundaries counts boundaries (reasoning steps), not tokens. None: the probe's
        calibrated patience for the row's decoding for policy "probe" (its thresholds were calibrated with it),
        1 otherwise.
    stop_at_boundary: stop only right after a token that ends a sentence or paragraph; None: the
        probe's calibrated setting for policy "probe" (its thresholds were calibrated that way).
    allow_skip: let the probe skip thinking at the end of the prompt.
    trace: keep each row's per-step score in the report.
    guard: the probe's out-of-distribution guard (policy "probe"): a row whose prompt-end state lies outside
        the region the probe was trained on falls back to `guard_fallback`, and its report says so
        (`guard="fallback"`). None: on when the probe carries a guard; True: required (an error without one);
        False: off.
    guard_fallback: what a flagged row does instead: "full" (no skip, no probe stop; the row's
        max_think_tokens still caps it) or the name of one of the probe's effort rungs (e.g. "high").
    """

    policy: str = "full"
    max_think_tokens: int | None = None
    min_think_tokens: int = 0
    exit_text: str | None = None
    stop_text: str | None = None
    threshold: float | None = None
    skip_threshold: float | None = None
    effort: str | None = None
    decoding: str | None = None
    smoothing: float = 1.0
    patience: int | None = None
    stop_at_boundary: bool | None = None
    allow_skip: bool = True
    trace: bool = False
    guard: bool | None = None
    guard_fallback: str = "full"

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"ThinkConfig.policy={self.policy!r} is not a known policy; use one of {POLICIES}.")
        if self.max_think_tokens is not None:
            if isinstance(self.max_think_tokens, bool) or not isinstance(self.max_think_tokens, int):
                raise ValueError(f"ThinkConfig.max_think_tokens must be an int or None, got {self.max_think_tokens!r}.")
            if self.max_think_tokens < 0:
                raise ValueError(
                    f"ThinkConfig.max_think_tokens={self.max_think_tokens} is negative; give 0 or more thinking tokens "
                    "(0 closes the thought at once), or None for no cap."
                )
        if isinstance(self.min_think_tokens, bool) or not isinstance(self.min_think_tokens, int) or self.min_think_tokens < 0:
            raise ValueError(f"ThinkConfig.min_think_tokens must be an int >= 0, got {self.min_think_tokens!r}.")
        if self.max_think_tokens is not None and self.min_think_tokens > self.max_think_tokens:
            raise ValueError(
                f"ThinkConfig.min_think_tokens={self.min_think_tokens} exceeds max_think_tokens={self.max_think_tokens}; "
                "lower the minimum or raise the budget."
            )
        if self.policy == "budget" and self.max_think_tokens is None:
            raise ValueError('ThinkConfig(policy="budget") needs max_think_tokens, e.g. max_think_tokens=256.')
        if self.policy in ("full", "none") and self.max_think_tokens is not None:
            raise ValueError(
                f'ThinkConfig(policy="{self.policy}") takes no max_think_tokens (it would be ignored); '
                'use policy="budget" or policy="probe" for a capped thought.'
            )
        if self.policy != "probe":
            for name in ("threshold", "skip_threshold", "effort", "decoding"):
                if getattr(self, name) is not None:
                    raise ValueError(f'ThinkConfig.{name} only applies to policy="probe" (got policy="{self.policy}").')
        if self.effort is not None and (not isinstance(self.effort, str) or not self.effort):
            raise ValueError(f'ThinkConfig.effort must be a rung name such as "high", "medium" or "low", got {self.effort!r}.')
        if self.decoding is not None and self.decoding not in DECODINGS:
            raise ValueError(f"ThinkConfig.decoding={self.decoding!r} must be one of {DECODINGS} (or None: follow "
                             "the generate() call's do_sample).")
        for name in ("threshold", "skip_threshold"):
            v = getattr(self, name)
            if v is not None and not (0.0 <= float(v) <= 1.0):
                raise ValueError(f"ThinkConfig.{name}={v} must lie in [0, 1] (it is compared with a probability).")
        if not (0.0 < float(self.smoothing) <= 1.0):
            raise ValueError(f"ThinkConfig.smoothing={self.smoothing} must lie in (0, 1]; 1.0 means no smoothing.")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f"ThinkConfig.patience must be an int >= 1 (or None: the probe's), got {self.patience!r}.")
        for name in ("exit_text", "stop_text"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"ThinkConfig.{name} must be a string, got {type(v).__name__}.")
        if self.guard is not None and not isinstance(self.guard, bool):
            raise ValueError(f"ThinkConfig.guard must be True, False or None (the probe's own), got {self.guard!r}.")
        if not isinstance(self.guard_fallback, str) or not self.guard_fallback:
            raise ValueError(f'ThinkConfig.guard_fallback must be "full" or an effort rung name such as "high", got '
                             f"{self.guard_fallback!r}.")
        if self.policy != "probe" and (self.guard is not None or self.guard_fallback != "full"):
            raise ValueError(f'ThinkConfig.guard / guard_fallback only apply to policy="probe" (got policy="{self.policy}").')
        if self.guard is False and self.guard_fallback != "full":
            raise ValueError("ThinkConfig.guard_fallback has no effect with guard=False; drop one of them.")
        if self.stop_text and self.policy in ("full", "none"):
            raise ValueError(
                f'ThinkConfig.stop_text only applies when the controller stops a thought (policy "budget" or "probe"); '
                f'policy="{self.policy}" never does.'
            )

    def to_dict(self) -> dict:
        return asdict(self)
