"""probe_step: one controller step for every row (entry point; picks the implementation)."""

from adaptive_think.kernels.probe_step.naive import probe_step_reference


def probe_step(hidden, last_token, state, spec, impl="auto"):
    """Run one controller step in place (see naive.probe_step_reference for the semantics)."""
    return probe_step_reference(hidden, last_token, state, spec)
