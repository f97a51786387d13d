"""controller_step: one controller step for every row, on the implementation that fits the device.

    from adaptive_think.controller import controller_step
    controller_step(hidden, last_token, state, params, spec)  # Triton on CUDA, the torch reference elsewhere

state: `ControllerState` (per row, updated in place), params: `RowParams` (per-row policy), spec:
`ControllerSpec` (shared by the batch). The semantics are `step.controller_step_reference`; the fused kernel
(kernels/controller_step) runs the same step in one launch, its buffers packed by `kernel_buffers`.

`impl` ("auto", "triton", "torch") or the environment variable ADAPTIVE_THINK_KERNEL_IMPL overrides the choice
(the argument wins over the variable). Triton is imported only when the Triton path is taken.
"""

from __future__ import annotations

import torch

from adaptive_think.controller.params import RowParams
from adaptive_think.controller.state import ControllerSpec, ControllerState
from adaptive_think.controller.step import controller_step_reference
from adaptive_think.kernels import resolve_impl


def controller_step(hidden: torch.Tensor | None, last_token: torch.Tensor, state: ControllerState,
                    params: RowParams, spec: ControllerSpec, impl: str = "auto",
                    score: torch.Tensor | None = None) -> None:
    """Run one controller step in place on `state`.

    hidden: [B, D] probe-layer hidden state (None: no probe scores); last_token: [B] int; score: [B] fp32 the
    step's logit score when `spec.score` is set (controller/logit_score.py).
    Example:
        >>> controller_step(h[:, -1], tokens[:, -1], state, params, spec); forced = state.forced  # [B], -1 = none
    """
    if resolve_impl(impl, state.ints.device) == "triton":
        from adaptive_think.controller.kernel_buffers import controller_step_triton

        return controller_step_triton(hidden, last_token, state, params, spec, score=score)
    return controller_step_reference(hidden, last_token, state, params, spec, score)
