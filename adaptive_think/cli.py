"""The `adaptive-think` command line.

    adaptive-think demo                                  # the bundled reasoner, full vs adaptive thinking
    adaptive-think generate --model DIR --prompt TEXT [--policy budget --max-think-tokens 64]
    adaptive-think doctor --model DIR [--questions q.jsonl --checker boxed]   # will probe training work?
    adaptive-think serve --model DIR [--probe DIR] [--port N] [vLLM server args...]

Each subcommand lives in its own module under adaptive_think/commands/ and maps its flags onto the
library's dataclasses one flag per field.
"""

from __future__ import annotations

import argparse
import sys

from adaptive_think.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptive-think", description=__doc__.splitlines()[0].rstrip("."))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(run=module.run, passes_through=getattr(module, "PASSES_THROUGH", False))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not args.passes_through:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra  # a command that passes arguments through (serve) hands these on
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"adaptive-think {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
