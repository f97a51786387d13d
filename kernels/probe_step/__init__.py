"""probe_step: one controller step for every row (the entry point; picks the implementation).

    from adaptive_think.kernels.probe_step import probe_step
    probe_step(hidden, last_token, state, params, spec)  # Triton on CUDA, torch reference on CPU

state: `ControllerState` (per row, updated in place), params: `RowParams` (per-row policy), spec:
`ControllerSpec` (shared by the batch); see adaptive_think/controller/.

`impl` ("auto", "triton", "torch") or the environment variable ADAPTIVE_THINK_KERNEL_IMPL overrides the
choice (the argument wins over the variable). Both implementations run every probe, probes with memory
included. Triton is imported only when the Triton path is taken, so `import adaptive_think` never imports
triton.
"""

from __future__ import annotations

from adaptive_think.kernels import resolve_impl
from adaptive_think.kernels.probe_step.naive import probe_step_reference


def probe_step(hidden, last_token, state, params, spec, impl: str = "auto") -> None:
    """Run one controller step in place on `state` (semantics: naive.probe_step_reference).

    hidden: [B, D] probe-layer hidden state (None: no probe scores); last_token: [B] int.
    Example:
        >>> probe_step(h[:, -1], tokens[:, -1], state, params, spec); forced = state.forced  # [B], -1 = none
    """
    chosen = resolve_impl(impl, state.phase.device)
    if chosen == "triton":
        from adaptive_think.kernels.probe_step.triton_kernel import probe_step_triton

        return probe_step_triton(hidden, last_token, state, params, spec)
    return probe_step_reference(hidden, last_token, state, params, spec)


__all__ = ["probe_step", "probe_step_reference", "resolve_impl"]
