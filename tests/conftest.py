"""Shared test set-up: markers that skip with a reason, Triton's CPU interpreter, thread count."""

import os

import pytest

# Without CUDA, Triton kernels run through the interpreter on CPU tensors; it must be set before
# triton is first imported anywhere, which is why it lives at the top of the root conftest.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton  # noqa: F401

    _HAS_TRITON = True
except ImportError:
    _HAS_TRITON = False

# tiny test models gain nothing from intra-op threads, and two threads on two busy cores spin badly
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; run scripts/gpu_check.sh on a GPU machine")
    skip_triton = pytest.mark.skip(reason="triton is not installed (it ships for Linux x86-64 only)")
    for item in items:
        if "gpu" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_gpu)
        if "kernels" in item.keywords and not _HAS_TRITON:
            item.add_marker(skip_triton)
