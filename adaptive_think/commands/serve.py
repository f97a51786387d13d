"""Serve a model with vLLM's OpenAI-compatible server, adaptive thinking wired in per request.

    adaptive-think serve --model DIR [--probe DIR] [--port 8000] [any vLLM server argument ...]
    adaptive-think serve --model bundled --port 8000 --dtype float32 --enforce-eager     # the tiny reasoner

A request picks its policy with flat `vllm_xargs` keys ({"adaptive_think.policy": "budget",
"adaptive_think.max_think_tokens": 64}) or with the chat request's `reasoning_effort` (mapped to the
probe's effort rungs, or to --effort-budgets without a ladder; explicit adaptive_think keys win).
Arguments this command does not know go to `python -m vllm.entrypoints.openai.api_server` unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

HELP = "serve a model with vLLM's OpenAI server and per-request adaptive thinking"
PASSES_THROUGH = True  # unknown arguments are vLLM server arguments
MIDDLEWARE = "adaptive_think.integrations.vllm.effort.ReasoningEffortMiddleware"


def add_arguments(p):
    p.add_argument("--model", required=True, help="local model folder, or `bundled` (the shipped tiny reasoner)")
    p.add_argument("--probe", default=None,
                   help="probe folder (for policy probe and effort rungs; default for `bundled`: the shipped probe)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--think-tokens", nargs=2, metavar=("OPEN", "CLOSE"), default=None,
                   help="think markers for a model the registry does not know")
    p.add_argument("--effort-budgets", default=None,
                   help='JSON map effort -> thinking-token budget used without a probe ladder, e.g. \'{"low": 128}\' '
                        "(null: no cap, 0: skip)")
    p.add_argument("--dry-run", action="store_true", help="print the vLLM command instead of running it")


def server_command(args) -> tuple[list[str], dict]:
    """(argv of the vLLM server, environment) for these arguments."""
    from adaptive_think.integrations.vllm import require_vllm
    from adaptive_think.integrations.vllm.api import check_server_args, server_args, serving_settings
    from adaptive_think.integrations.vllm.requests import ENV_VAR
    from adaptive_think.loading import resolve_model_path

    model = resolve_model_path(args.model)
    probe = args.probe
    from adaptive_think.bundled import is_bundled, probe_path

    if is_bundled(probe):
        probe = probe_path(probe)
    elif probe is None and is_bundled(args.model):
        probe = probe_path(args.model)
    try:
        budgets = json.loads(args.effort_budgets) if args.effort_budgets else None
    except json.JSONDecodeError as err:
        raise ValueError(f"--effort-budgets is not valid JSON ({err}); e.g. '{{\"low\": 128}}'.") from None
    settings = serving_settings(probe, args.think_tokens, budgets, model=model)
    if not args.dry_run:
        require_vllm()
    for flag in ("--logits-processors", "--hf-overrides", "--middleware"):
        if flag in args.extra:
            raise ValueError(f"{flag} is set by adaptive-think serve; drop it from the command line.")
    if importlib.util.find_spec("vllm") is not None:  # a dry run without vLLM prints the command unchecked
        check_server_args(args.extra, settings)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--host", args.host, "--port", str(args.port), *server_args(str(model), settings),
            "--middleware", MIDDLEWARE, *args.extra]
    return argv, {**os.environ, ENV_VAR: settings.to_json()}


def run(args) -> int:
    argv, env = server_command(args)
    if args.dry_run:
        print(" ".join(argv))
        return 0
    os.execvpe(argv[0], argv, env)  # the server replaces this process (signals reach vLLM directly)
    return 0  # pragma: no cover - exec does not return
