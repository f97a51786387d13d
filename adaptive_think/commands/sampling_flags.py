"""The decoding flags that `eval` and `collect` share: --do-sample, --temperature, --top-p, --sampling-seed."""

from __future__ import annotations


def add_sampling_arguments(p, title: str, seed_help: str) -> None:
    s = p.add_argument_group(title)
    s.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    s.add_argument("--temperature", type=float, default=None, help="e.g. 0.6 (Qwen3's thinking-mode setting)")
    s.add_argument("--top-p", type=float, default=None, help="e.g. 0.95")
    s.add_argument("--sampling-seed", type=int, default=0, help=seed_help)


def sampling_from_args(args) -> dict:
    """generate() kwargs of the decoding flags; ValueError for settings that only apply when sampling."""
    if not args.do_sample:
        if args.temperature is not None or args.top_p is not None:
            raise ValueError("--temperature and --top-p only apply with --do-sample.")
        return {"do_sample": False}
    out = {"do_sample": True}
    if args.temperature is not None:
        if args.temperature <= 0:
            raise ValueError(f"--temperature must be > 0, got {args.temperature}.")
        out["temperature"] = args.temperature
    if args.top_p is not None:
        if not 0 < args.top_p <= 1:
            raise ValueError(f"--top-p must lie in (0, 1], got {args.top_p}.")
        out["top_p"] = args.top_p
    return out
