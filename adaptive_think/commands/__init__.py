"""Subcommands of the `adaptive-think` CLI, one module each."""

from adaptive_think.commands import generate

COMMANDS = {"generate": generate}
