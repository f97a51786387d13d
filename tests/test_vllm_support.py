"""Which vLLM engines adaptive_think refuses (adaptive_think/integrations/vllm/support.py) and how
`select_wrapper` tells a speculative draft's config from the served model's (no vLLM needed: the configs
are stand-ins with the attributes vLLM's `VllmConfig` / parsed `EngineArgs` carry; tests/vllm_integration/
test_refusals.py runs the same rules on vLLM's own objects)."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from adaptive_think.integrations.vllm.architectures import select_wrapper
from adaptive_think.integrations.vllm.support import (
    EngineSetup,
    check_engine,
    check_setup,
    setup_of_args,
    setup_of_config,
    speculative_width,
    unsupported,
)

# the speculative methods vLLM 0.32 accepts (vllm/config/speculative.py SpeculativeMethod, MTP folded in):
# adaptive_think steers n-gram, EAGLE-3 and MTP drafts on Model Runner V2, and refuses the others
STEERED = ["ngram", "ngram_gpu", "eagle3", "mtp", "deepseek_mtp", "qwen3_next_mtp"]
REFUSED = ["medusa", "mlp_speculator", "draft_model", "suffix", "custom_class", "eagle", "extract_hidden_states",
           "dflash", "dspark"]


def _vllm_config(method=None, pp=1, batch_sharded=False, v2=True, rejection="standard"):
    spec = (SimpleNamespace(method=method, num_speculative_tokens=3, rejection_sample_method=rejection)
            if method else None)
    parallel = SimpleNamespace(pipeline_parallel_size=pp, tensor_parallel_size=2 if batch_sharded else 1,
                               enable_batch_sharded_sampling=batch_sharded)
    return SimpleNamespace(speculative_config=spec, parallel_config=parallel, use_v2_model_runner=v2)


@pytest.mark.parametrize("probe_served", [False, True])
@pytest.mark.parametrize("method", REFUSED)
def test_speculative_methods_adaptive_think_does_not_steer_are_refused(method, probe_served):
    with pytest.raises(ValueError, match=rf"speculative decoding \(method '{method}'\) is not supported with "
                                         r"adaptive_think yet: it steers n-gram, EAGLE-3 and MTP drafts only") as err:
        check_engine(_vllm_config(method), probe_served)
    assert ("hidden-state layers the probe reads" in str(err.value)) == (method == "extract_hidden_states")


@pytest.mark.parametrize("probe_served", [False, True])
@pytest.mark.parametrize("method", STEERED)
def test_ngram_eagle3_and_mtp_drafts_are_steered_on_model_runner_v2(method, probe_served):
    check_engine(_vllm_config(method), probe_served)
    check_engine(_vllm_config(method, v2=False), probe_served, runner="mrv2")  # the processor knows its runner
    assert speculative_width(_vllm_config(method)) == 4 and speculative_width(_vllm_config()) == 1
    with pytest.raises(ValueError, match=rf"\(method '{method}'\) is not supported with adaptive_think on vLLM's V1 "
                                         "model runner.*Use Model Runner V2"):
        check_engine(_vllm_config(method, v2=False), probe_served)


@pytest.mark.parametrize("rejection", ["synthetic", "block"])
def test_rejection_methods_that_do_not_read_forced_logits_are_refused(rejection):
    with pytest.raises(ValueError, match=rf"rejection_sample_method '{rejection}' is not supported.*\"standard\""):
        check_engine(_vllm_config("ngram", rejection=rejection), probe_served=False)
    with pytest.raises(ValueError, match="rejection_sample_method 'synthetic'"):
        check_setup(setup_of_args(_args(speculative_config={"method": "eagle3", "model": "/head",
                                                            "rejection_sample_method": "synthetic"})), False)


def test_pipeline_parallelism_is_refused_only_with_a_probe():
    config = _vllm_config(pp=2)
    assert setup_of_config(config) == EngineSetup(pipeline_parallel_size=2, runner="mrv2")
    check_engine(config, probe_served=False)
    with pytest.raises(ValueError, match=r"pipeline parallelism \(--pipeline-parallel-size 2\).*adaptive_think probe"):
        check_engine(config, probe_served=True)


def test_batch_sharded_sampling_is_refused_and_every_problem_is_named_at_once():
    with pytest.raises(ValueError, match="batch-sharded sampling.*compute_logits_local"):
        check_engine(_vllm_config(batch_sharded=True), probe_served=False)
    problems = unsupported(setup_of_config(_vllm_config("medusa", pp=4, batch_sharded=True)), probe_served=True)
    assert [p.split(" ")[0] for p in problems] == ["speculative", "batch-sharded", "pipeline"]


def test_a_steerable_engine_passes():
    check_engine(_vllm_config(), probe_served=True)
    assert unsupported(EngineSetup(), probe_served=True) == []
    # a config without the batch-sharding field (older vLLM) reads as off
    check_engine(SimpleNamespace(speculative_config=None, parallel_config=SimpleNamespace(pipeline_parallel_size=1)),
                 probe_served=True)


def _args(**given):
    fields = dict(speculative_config=None, spec_method=None, spec_model=None, spec_tokens=None,
                  pipeline_parallel_size=1, enable_batch_sharded_sampling=None)
    return argparse.Namespace(**{**fields, **given})


@pytest.mark.parametrize("given, method", [
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 2}}, "ngram"),
    ({"speculative_config": {"model": "/draft", "num_speculative_tokens": 2}}, None),  # vLLM infers the method
    ({"spec_method": "eagle3", "spec_model": "/head"}, "eagle3"),
    ({"spec_model": "/draft"}, None),
    ({"spec_method": "medusa", "spec_model": "/heads"}, "medusa"),
])
def test_server_arguments_that_configure_speculative_decoding(given, method):
    setup = setup_of_args(_args(**given))
    assert setup.speculative and setup.speculative_method == method and setup.runner is None
    if method in ("ngram", "eagle3"):  # the runner is not known yet: the worker checks it
        check_setup(setup, probe_served=True)
    else:
        with pytest.raises(ValueError, match="speculative decoding .* is not supported with adaptive_think yet"):
            check_setup(setup, probe_served=False)


def test_server_arguments_without_refused_settings():
    assert setup_of_args(_args()) == EngineSetup()
    assert setup_of_args(_args(pipeline_parallel_size=2, enable_batch_sharded_sampling=True)) == EngineSetup(
        pipeline_parallel_size=2, batch_sharded_sampling=True)


class ModelConfig:
    """Stands in for vLLM's ModelConfig, which applies `hf_overrides` to the config it loads."""

    def __init__(self, runner: str):
        self.runner = runner

    def load(self, hf_config):
        return self._parse(hf_config)

    def _parse(self, hf_config):  # the override is applied a few calls below the ModelConfig
        return (lambda cfg: select_wrapper(cfg))(hf_config)


def test_a_draft_models_config_is_never_wrapped():
    from transformers import AutoConfig

    def config(arch):
        return AutoConfig.for_model("qwen3", architectures=[arch])

    assert ModelConfig("generate").load(config("Qwen3ForCausalLM")).architectures == ["AdaptiveThinkQwen3ForCausalLM"]
    # a same-family draft, an EAGLE-3 head and an MTP module are left as they are (no wrap, no error)
    for arch in ("Qwen3ForCausalLM", "Eagle3LlamaForCausalLM", "DeepSeekMTPModel"):
        assert ModelConfig("draft").load(config(arch)).architectures == [arch]
    with pytest.raises(ValueError, match="does not wrap"):  # the served model's unknown architecture still is
        ModelConfig("generate").load(config("DeepSeekMTPModel"))
