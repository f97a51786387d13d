"""Model Runner V2 adapter (adaptive_think/integrations/vllm/mrv2.py) driven without a GPU.

The fake batch mirrors vLLM 0.32's `vllm/v1/worker/gpu/sample/logits_processor/interface.py`: the real
`LogitsProcRequestState` / `LogitsContext` dataclasses over stand-ins of the runner's buffers
(`UvaBackedTensor` with `.np` / `.gpu`, `StagedWriteTensor` with `.gpu`), and the runner's call order
from `vllm/v1/worker/gpu/model_runner.py` (`RequestState.add_request` writes prompt_len / prefill_len,
then `add_request` per new request, one `apply_staged_writes` per step, then `apply(logits, ctx)`).
Slots are recycled, rows are reordered every step, prompts are prefilled in chunks and non-probe
requests are preempted (resumed with prefill_len > prompt_len); every request must get the tokens it gets
alone from a plain ThinkController. The `gpu` test runs the real runner on CUDA.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here; .ci/run runs these tests in its vLLM venv")

from vllm.v1.worker.gpu.sample.logits_processor.interface import (  # noqa: E402
    LogitsContext,
    LogitsProcRequestState,
)

from adaptive_think import ThinkConfig  # noqa: E402
from adaptive_think.bundled import probe_path, reasoner_path  # noqa: E402
from adaptive_think.controller import ThinkController  # noqa: E402
from adaptive_think.integrations.vllm.mrv2 import ThinkLogitsProcessorV2  # noqa: E402
from adaptive_think.integrations.vllm.requests import ENV_VAR, ServingSettings  # noqa: E402
from adaptive_think.integrations.vllm.rows import CHANNEL, RowInputs  # noqa: E402
from tests.slot_driver import make_requests, run_engine, run_reference  # noqa: E402

pytestmark = pytest.mark.vllm

SLOTS, MAX_LEN = 5, 160
CONFIGS = [ThinkConfig(policy="full"), ThinkConfig(policy="none"),
           ThinkConfig(policy="budget", max_think_tokens=4, exit_text="\n\n"),
           ThinkConfig(policy="budget", max_think_tokens=12, stop_text=" So"), ThinkConfig(policy="probe", threshold=0.6),
           None]


class FakeRequestStates:
    """The runner's per-slot buffers (vllm/v1/worker/gpu/states.py RequestState) as the processor sees them."""

    def __init__(self):
        self.prompt_len = SimpleNamespace(np=np.zeros(SLOTS, dtype=np.int32))
        self.prefill_len = SimpleNamespace(np=np.zeros(SLOTS, dtype=np.int32))
        self.all_token_ids = SimpleNamespace(gpu=torch.zeros(SLOTS, MAX_LEN, dtype=torch.int32))
        self.total_len = SimpleNamespace(gpu=torch.zeros(SLOTS, dtype=torch.int32))
        self.device, self.max_num_reqs, self.vocab_size = torch.device("cpu"), SLOTS, 0

    def view(self) -> LogitsProcRequestState:
        return LogitsProcRequestState(device=self.device, max_num_reqs=SLOTS, vocab_size=self.vocab_size,
                                      all_token_ids=self.all_token_ids, prompt_len=self.prompt_len,
                                      prefill_len=self.prefill_len, total_len=self.total_len)


class MRV2Host:
    """Calls the processor the way Model Runner V2 does."""

    def __init__(self, processor, states: FakeRequestStates):
        self.proc, self.states, self.staged = processor, states, False

    def admit(self, slot, req, outputs):
        tokens = req.prompt + outputs  # RequestState.add_request: prefill_len = len(all_token_ids)
        self.states.prompt_len.np[slot] = len(req.prompt)
        self.states.prefill_len.np[slot] = len(tokens)
        self.states.all_token_ids.gpu[slot].fill_(0)
        self.states.all_token_ids.gpu[slot, :len(tokens)] = torch.tensor(tokens, dtype=torch.int32)
        extra = {"adaptive_think": {k: v for k, v in req.config.to_dict().items() if v != getattr(ThinkConfig(), k)}
                 } if req.config is not None else None
        self.proc.add_request(slot, vllm.SamplingParams(temperature=0.0, extra_args=extra))
        self.staged = True

    def leave(self, slot):
        pass  # Model Runner V2 has no removal callback: a recycled slot is re-initialised by add_request

    def step(self, logits, slots, tokens, pos, hidden):
        if self.staged:
            self.proc.apply_staged_writes()
            self.staged = False
        CHANNEL.publish(RowInputs(tokens.long(), pos.long(), hidden))
        # committed tokens: the prompt (and earlier outputs) while prefilling, then up to the token fed
        total = self.states.total_len.gpu
        total.index_copy_(0, slots, torch.maximum(pos.to(torch.int32) + 1,
                                                  torch.from_numpy(self.states.prefill_len.np)[slots]))
        ctx = LogitsContext(expanded_idx_mapping=slots.to(torch.int32), idx_mapping=slots.to(torch.int32),
                            idx_mapping_np=slots.numpy(), expanded_local_pos=torch.zeros_like(slots),
                            input_ids=tokens.to(torch.int32), pos=pos.to(torch.int64),
                            seq_lens_upper_bound_np=(pos + 1).numpy())
        return self.proc.apply(logits, ctx)


@pytest.fixture()
def processor(monkeypatch):
    from transformers import AutoConfig

    monkeypatch.setenv(ENV_VAR, ServingSettings(probe=str(probe_path("bundled-v1"))).to_json())
    model_config = SimpleNamespace(tokenizer=str(reasoner_path("bundled-v1")), model=str(reasoner_path("bundled-v1")), trust_remote_code=False,
                                   hf_config=AutoConfig.from_pretrained(reasoner_path("bundled-v1")))
    states = FakeRequestStates()
    proc = ThinkLogitsProcessorV2(SimpleNamespace(model_config=model_config), states.view())
    return proc, states


@pytest.mark.parametrize("seed", [0, 1])
def test_mrv2_adapter_matches_each_request_alone(processor, seed):
    proc, states = processor
    ctx = proc.core.context
    tok = ctx.tokenizer
    words = [i for i in range(ctx.vocab_size) if i not in (*ctx.markers.open_ids, *ctx.markers.close_ids, tok.eos_token_id)]
    reqs = make_requests(20, CONFIGS, ctx.markers.open_ids[0], ctx.markers.close_ids[0], tok.eos_token_id, words, seed)

    def controller(config):
        return ThinkController(ctx.markers, config, encode=ctx.encode, empty_ids=ctx.empty_ids, eos_ids=ctx.eos_ids,
                               is_boundary=ctx.boundary, probe=ctx.probe, vocab_size=ctx.vocab_size, device="cpu")

    dim = ctx.probe.hidden_size
    expected = run_reference(controller, reqs, dim=dim, eos_id=tok.eos_token_id, max_new=60)
    got = run_engine(MRV2Host(proc, states), reqs, slots=SLOTS, vocab=ctx.vocab_size, dim=dim,
                     eos_id=tok.eos_token_id, max_new=60, max_chunk=6, preempt=0.08, seed=seed,
                     preemptable=lambda r: r.config is None or r.config.policy != "probe")
    assert got == expected


def test_mrv2_adapter_refuses_bad_settings():
    from adaptive_think.integrations.vllm.processor import ThinkLogitsProcessor

    with pytest.raises(vllm.exceptions.VLLMValidationError, match="not a known policy"):
        ThinkLogitsProcessor.validate_params(vllm.SamplingParams(extra_args={"adaptive_think.policy": "often"}))


@pytest.mark.gpu
def test_real_model_runner_v2_matches_the_hf_engine(hf_thinker, monkeypatch):
    """On CUDA, the default runner (Model Runner V2) with mixed configs gives the hf engine's tokens (fp32)."""
    from adaptive_think.integrations.vllm import llm_kwargs
    from tests.vllm_integration.conftest import assert_engine_matches_hf_on_cuda

    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    configs = [{"policy": "full"}, {"policy": "none"}, {"policy": "budget", "max_think_tokens": 5, "exit_text": "\n\n"},
               {"policy": "probe"}, {"policy": "probe", "max_think_tokens": 10}, None]
    llm = vllm.LLM(model=str(reasoner_path("bundled-v1")), dtype="float32", max_model_len=256, max_num_seqs=4,
                   max_num_batched_tokens=16, gpu_memory_utilization=0.2, seed=0, **llm_kwargs(probe=probe_path("bundled-v1")))
    assert llm.llm_engine.vllm_config.use_v2_model_runner, "expected Model Runner V2 on this GPU"
    assert_engine_matches_hf_on_cuda(llm, hf_thinker, configs)
