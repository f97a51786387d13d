"""The kernels' import home, and which implementation an entry point runs (Triton on CUDA, torch elsewhere).

The kernels' sources live in the repository's top-level `kernels/` folder, one sub-package per op, mapped
to `adaptive_think.kernels.<op>` in pyproject.toml. That folder has no `__init__.py` of its own: a Python
started in the repository root then sees it only as a namespace portion, which Hugging Face's installed
`kernels` package (imported by transformers) always beats, so the folder can never shadow it.

Used by `adaptive_think.controller.dispatch` (the controller step) and `adaptive_think.kernels.logit_stats`. The `impl` argument wins over the
environment variable ADAPTIVE_THINK_KERNEL_IMPL, which wins over "auto". Never imports triton eagerly
beyond a probe of whether it imports at all (only when "auto" meets a CUDA tensor).
"""

from __future__ import annotations

import os

import torch

IMPLS = ("auto", "triton", "torch")
ENV_VAR = "ADAPTIVE_THINK_KERNEL_IMPL"


def resolve_impl(impl: str, device: torch.device) -> str:
    """"auto" -> "triton" for CUDA tensors when triton imports, else "torch". Raises ValueError on a bad name."""
    if impl == "auto":
        impl = os.environ.get(ENV_VAR, "").strip() or "auto"
        if impl not in IMPLS:
            raise ValueError(f"{ENV_VAR} must be one of {IMPLS}, got {impl!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    if torch.device(device).type != "cuda":
        return "torch"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "torch"
    return "triton"
