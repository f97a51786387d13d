"""GPU: the controller's per-step work adds no host synchronisation (skips without CUDA)."""

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from tiny import make_model, make_tokenizer

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("think", [ThinkConfig(policy="budget", max_think_tokens=3), ThinkConfig(policy="none")])
def test_controller_step_makes_no_host_sync(think):
    tok = make_tokenizer()
    model = make_model("qwen3", len(tok)).cuda()
    thinker = AdaptiveThinker(model, tok)
    batch = tok(["the answer is", "x"], return_tensors="pt", padding=True).to("cuda")
    controller = thinker.controller(think)
    controller.begin(batch["input_ids"])
    scores = torch.randn(2, len(tok), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(6):
            forced = controller.step(batch["input_ids"][:, -1], None)
            steer = (forced >= 0)[:, None]
            only = torch.full_like(scores, float("-inf")).scatter_(1, forced.clamp(min=0)[:, None], 0.0)
            scores = torch.where(steer, only, scores)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert controller.reports()[0].ended_by in {"budget", "skipped"}
