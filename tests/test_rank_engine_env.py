"""Each data-parallel rank's vLLM engine starts alone on its own share of the machine (training/launch.py)."""

from __future__ import annotations

import os

import pytest

from adaptive_think.training.launch import Launch, patched_env, rank_engine_env

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"}


def test_the_engine_does_not_see_the_launcher_and_gets_its_own_gpus():
    env = rank_engine_env(Launch(1, 2, 1, "torchrun"), 2, on_gpu=True, env=TORCHRUN, gpu_count=4)
    assert {k for k, v in env.items() if v is None} == set(TORCHRUN)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    # an outer CUDA_VISIBLE_DEVICES is sliced, not replaced
    env = rank_engine_env(Launch(1, 2, 1, "torchrun"), 1, on_gpu=True, env={**TORCHRUN, "CUDA_VISIBLE_DEVICES": "5,7"})
    assert env["CUDA_VISIBLE_DEVICES"] == "7"


def test_too_few_gpus_for_the_ranks_is_a_clear_error():
    with pytest.raises(ValueError, match="needs GPUs 2..3 .* 3 are visible: launch at most 1 processes"):
        rank_engine_env(Launch(1, 2, 1, "torchrun"), 2, on_gpu=True, env=TORCHRUN, gpu_count=3)


def test_cpu_ranks_split_the_cores_per_tensor_parallel_worker():
    env = rank_engine_env(Launch(1, 2, 1, "torchrun"), 2, on_gpu=False, env=TORCHRUN, cpus=range(8))
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "4,5|6,7"
    env = rank_engine_env(Launch(0, 2, 0, "torchrun"), 1, on_gpu=False, env=TORCHRUN, cpus={3, 1})
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    # the user's own binding wins
    env = rank_engine_env(Launch(0, 2, 0, "torchrun"), 1, on_gpu=False,
                          env={**TORCHRUN, "VLLM_CPU_OMP_THREADS_BIND": "0-3|4-7"}, cpus=range(8))
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env
    with pytest.raises(ValueError, match="need at least 4 CPU cores"):
        rank_engine_env(Launch(0, 2, 0, "torchrun"), 2, on_gpu=False, env=TORCHRUN, cpus=range(3))


def test_a_single_process_only_hides_the_launcher():
    assert rank_engine_env(Launch(0, 1, 0, "none"), 1, on_gpu=True, env={}, gpu_count=8) == {}


def test_patched_env_sets_unsets_and_restores(monkeypatch):
    monkeypatch.setenv("AT_KEEP", "a")
    monkeypatch.delenv("AT_NEW", raising=False)
    with patched_env({"AT_KEEP": None, "AT_NEW": "b"}):
        assert "AT_KEEP" not in os.environ and os.environ["AT_NEW"] == "b"
    assert os.environ["AT_KEEP"] == "a" and "AT_NEW" not in os.environ
