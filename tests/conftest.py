"""Shared test set-up: markers that skip with a reason, Triton's CPU interpreter, thread count, shared fixtures."""

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


@pytest.fixture(scope="module")
def pipeline_setup():
    """(tokenizer with an R1-style template, tiny 3-layer model, 24 questions: 20 texts, 4 asked twice)."""
    from adaptive_think.training.items import Item
    from pipeline_helpers import R1_TEMPLATE
    from tiny import make_model, make_tokenizer

    tok = make_tokenizer()
    tok.chat_template = R1_TEMPLATE
    model = make_model("qwen3", len(tok), layers=3)
    items = [Item(f"q{i}", f"the answer is {i % 20}", str(i % 7)) for i in range(24)]
    return tok, model, items
