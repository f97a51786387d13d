"""Subcommands of the `adaptive-think` CLI, one module each."""

from adaptive_think.commands import collect, demo, doctor, eval, generate, serve, train_probe

COMMANDS = {"demo": demo, "generate": generate, "doctor": doctor, "collect": collect, "train-probe": train_probe,
            "eval": eval, "serve": serve}
