"""Subcommands of the `adaptive-think` CLI, one module each."""

from adaptive_think.commands import calibrate, collect, demo, doctor, eval, generate, serve, train_probe

COMMANDS = {"demo": demo, "generate": generate, "doctor": doctor, "collect": collect, "train-probe": train_probe,
            "calibrate": calibrate, "eval": eval, "serve": serve}
