"""Subcommands of the `adaptive-think` CLI, one module each."""

from adaptive_think.commands import collect, demo, eval, generate, serve, train_probe

COMMANDS = {"demo": demo, "generate": generate, "collect": collect, "train-probe": train_probe, "eval": eval,
            "serve": serve}
