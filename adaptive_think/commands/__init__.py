"""Subcommands of the `adaptive-think` CLI, one module each."""

from adaptive_think.commands import (calibrate, calibrate_score, collect, demo, doctor, eval, fit_guard, generate, serve,
                                     train_probe)

COMMANDS = {"demo": demo, "generate": generate, "doctor": doctor, "collect": collect, "train-probe": train_probe,
            "calibrate": calibrate, "calibrate-score": calibrate_score, "fit-guard": fit_guard, "eval": eval,
            "serve": serve}
