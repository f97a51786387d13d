"""The ThinkConfig flags shared by subcommands: one flag per field."""

from __future__ import annotations

import argparse

from adaptive_think.config import POLICIES, ThinkConfig


def add_think_arguments(p: argparse.ArgumentParser, default_policy: str = "full") -> None:
    g = p.add_argument_group("thinking policy (ThinkConfig)")
    g.add_argument("--policy", choices=POLICIES, default=default_policy, help="full | none | budget | probe")
    g.add_argument("--max-think-tokens", type=int, default=None, help="hard cap on thinking tokens per row")
    g.add_argument("--min-think-tokens", type=int, default=0, help="the probe may not stop before this many")
    g.add_argument("--exit-text", default=None, help='text forced after the close marker (e.g. "\\n\\n")')
    g.add_argument("--stop-text", default=None,
                   help="text forced before the close marker when a budget or probe stops a thought (counted as thinking)")
    g.add_argument("--threshold", type=float, default=None, help="probe ready threshold (default: calibrated)")
    g.add_argument("--skip-threshold", type=float, default=None, help="probe skip threshold (default: calibrated)")
    g.add_argument("--effort", default=None,
                   help="probe effort rung: high | medium | low (the probe's names; default: its default rung)")
    g.add_argument("--smoothing", type=float, default=1.0, help="EMA weight of the newest probe score")
    g.add_argument("--patience", type=int, default=None,
                   help="steps (boundaries, when stopping at boundaries) over threshold before stopping "
                        "(default: the probe's calibrated patience, else 1)")
    g.add_argument("--stop-at-boundary", action=argparse.BooleanOptionalAction, default=None,
                   help="stop only at the end of a sentence (default: the probe's calibrated setting)")
    g.add_argument("--no-skip", dest="allow_skip", action="store_false", help="never skip thinking")
    g.add_argument("--guard", action=argparse.BooleanOptionalAction, default=None,
                   help="the probe's out-of-distribution guard (default: on when the probe carries one)")
    g.add_argument("--guard-fallback", default="full",
                   help="what a row the guard flags does: full (default; the budget still caps) or an effort rung")
    g.add_argument("--think-tokens", nargs=2, metavar=("OPEN", "CLOSE"), default=None,
                   help="think markers for a model the registry does not know")


def _unescape(text: str | None) -> str | None:
    """A flag's "\\n" written on the command line as a real newline."""
    return text.encode().decode("unicode_escape") if text is not None else None


def think_config_from_args(args: argparse.Namespace) -> ThinkConfig:
    return ThinkConfig(
        policy=args.policy, max_think_tokens=args.max_think_tokens, min_think_tokens=args.min_think_tokens,
        exit_text=_unescape(args.exit_text), stop_text=_unescape(args.stop_text),
        threshold=args.threshold, skip_threshold=args.skip_threshold, effort=args.effort, smoothing=args.smoothing,
        patience=args.patience, stop_at_boundary=args.stop_at_boundary, allow_skip=args.allow_skip,
        guard=args.guard, guard_fallback=args.guard_fallback,
    )
