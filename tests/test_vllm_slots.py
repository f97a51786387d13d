"""The vLLM integration's per-slot core (adaptive_think/integrations/vllm/slots.py), without vLLM.

A toy continuous-batching engine (tests/slot_driver.py) reuses slots, prefills prompts in chunks, shuffles
rows every step and preempts requests; every request must get exactly the tokens it gets alone from a
plain ThinkController. Also: the moves composition of vLLM's V1 batch, and the token forcing rule.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from adaptive_think import ThinkConfig
from adaptive_think.bundled import probe_path, reasoner_path
from adaptive_think.controller import ThinkController, boundary_mask
from adaptive_think.integrations.vllm.context import EngineContext, empty_block_ids
from adaptive_think.integrations.vllm.slots import SlotController, compose_moves, force_tokens
from adaptive_think.markers import resolve_markers
from adaptive_think.probe import Probe
from tests.slot_driver import make_requests, run_engine, run_reference

CONFIGS = [
    ThinkConfig(policy="full"),
    ThinkConfig(policy="none"),
    ThinkConfig(policy="budget", max_think_tokens=0, exit_text="\n\n"),
    ThinkConfig(policy="budget", max_think_tokens=6, exit_text=" The answer"),
    ThinkConfig(policy="budget", max_think_tokens=15, stop_text=" So", exit_text="\n\n"),
    ThinkConfig(policy="probe", threshold=0.6),
    ThinkConfig(policy="probe", threshold=0.3, max_think_tokens=9, stop_at_boundary=False),
    None,  # not steered
]


@pytest.fixture(scope="module")
def context():
    tok = AutoTokenizer.from_pretrained(reasoner_path())
    markers = resolve_markers(tok)
    vocab = len(tok)
    return EngineContext(tokenizer=tok, markers=markers, empty_ids=empty_block_ids(tok, markers),
                         eos_ids=(tok.eos_token_id,), boundary=boundary_mask(tok, vocab),
                         probe=Probe.from_pretrained(probe_path()), vocab_size=vocab)


class CoreHost:
    """Drives SlotController directly; a request that leaves with outputs is kept (snapshot) or replayed."""

    def __init__(self, core: SlotController, keep: bool):
        self.core, self.keep, self.kept = core, keep, {}

    def admit(self, slot, req, outputs):
        if req.rid in self.kept and outputs:
            self.core.restore(slot, *self.kept.pop(req.rid))
            return
        out = torch.tensor([outputs + [0]])[:, :len(outputs)] if outputs else None
        self.core.add([slot], [req.prompt], [len(req.prompt)], [req.config], out, [len(outputs)])
        self.rids = getattr(self, "rids", {})
        self.rids[slot] = req

    def leave(self, slot):
        req = self.rids.pop(slot, None)
        if self.keep and req is not None and req.config is not None:
            self.kept[req.rid] = (self.core.snapshot(slot), req.config.policy == "probe")
        self.core.remove([slot])

    def step(self, logits, slots, tokens, pos, hidden):
        return self.core.step(logits, slots, tokens, pos, hidden)


def _setup(context, n, seed):
    tok = context.tokenizer
    words = [i for i in range(len(tok)) if i not in (*context.markers.open_ids, *context.markers.close_ids, tok.eos_token_id)]
    reqs = make_requests(n, CONFIGS, context.markers.open_ids[0], context.markers.close_ids[0], tok.eos_token_id,
                         words, seed)

    def controller(config):
        return ThinkController(context.markers, config, encode=context.encode, empty_ids=context.empty_ids,
                               eos_ids=context.eos_ids, is_boundary=context.boundary, probe=context.probe,
                               vocab_size=context.vocab_size, device="cpu", impl="torch")

    return reqs, controller


@pytest.mark.parametrize("seed", [0, 1])
def test_slots_match_each_request_alone(context, seed):
    reqs, controller = _setup(context, 16, seed)
    expected = run_reference(controller, reqs, dim=context.probe.hidden_size, eos_id=context.tokenizer.eos_token_id,
                             max_new=40)
    host = CoreHost(SlotController(context, num_slots=5, device="cpu", impl="torch"), keep=True)
    got = run_engine(host, reqs, slots=5, vocab=context.vocab_size, dim=context.probe.hidden_size,
                     eos_id=context.tokenizer.eos_token_id, max_new=40, max_chunk=7, preempt=0.05, seed=seed)
    assert got == expected


def test_replayed_outputs_resume_non_probe_rows(context):
    # without a kept row, a returning request's outputs are replayed: exact for every policy but the probe's
    reqs, controller = _setup(context, 24, 7)
    reqs = [r for r in reqs if r.config is None or r.config.policy != "probe"]
    expected = run_reference(controller, reqs, dim=context.probe.hidden_size, eos_id=context.tokenizer.eos_token_id,
                             max_new=40)
    host = CoreHost(SlotController(context, num_slots=4, device="cpu", impl="torch"), keep=False)
    got = run_engine(host, reqs, slots=4, vocab=context.vocab_size, dim=context.probe.hidden_size,
                     eos_id=context.tokenizer.eos_token_id, max_new=40, max_chunk=5, preempt=0.15, seed=7)
    assert got == expected


def test_partial_prefill_rows_are_not_decided(context):
    core = SlotController(context, num_slots=2, device="cpu", impl="torch")
    prompt = [5, 6, 7, 8, 9, 10]
    core.add([1], [prompt], [len(prompt)], [ThinkConfig(policy="none")])
    logits = torch.zeros(1, context.vocab_size)
    # a chunk ending at position 3 of a 6-token prompt: no decision, no forced token, the row stays at step 0
    core.step(logits, torch.tensor([1]), torch.tensor([8]), torch.tensor([3]), None)
    assert torch.isfinite(logits).all() and int(core.ctl.state.step[1]) == 0
    # the prompt's last position: policy none skips, so the open marker is forced
    core.step(logits, torch.tensor([1]), torch.tensor([10]), torch.tensor([5]), None)
    assert logits[0].argmax().item() == context.markers.open_ids[0] and torch.isinf(logits).sum() == context.vocab_size - 1


def test_compose_moves_follows_vllm_order():
    # 3 -> 1 (1 empty before), swap 0 <-> 2, then 2 -> 3
    src, dst, emptied = compose_moves([(3, 1, False), (0, 2, True), (2, 3, False)])
    assert dict(zip(dst, src)) == {1: 3, 0: 2, 3: 0}
    assert sorted(emptied) == [2]


def test_force_tokens_keeps_unforced_rows():
    logits = torch.randn(3, 11)
    before = logits.clone()
    force_tokens(logits, torch.tensor([-1, 4, 0]))
    assert torch.equal(logits[0], before[0])
    for row, token in ((1, 4), (2, 0)):
        assert logits[row, token] == 0 and torch.isinf(logits[row]).sum() == 10
