"""`collect --engine vllm` on vLLM's CPU engine against the hf engine, on the bundled reasoner (greedy, fp32): the
same records (labels, positions, full and no-think correctness, every field; the logit scores within fp32
rounding) and the same states within one fp16 rounding step (tests/collect_engines.py says why that is the
tolerance); the forced exits reuse their thought's cached prefix; a sampled collection is seeded and resumes
where it stopped. Run in the vLLM venv: `python -m pytest -m vllm tests/vllm_integration/test_collect_vllm.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here; .ci/run runs these tests in its vLLM venv")

from adaptive_think.bundled import reasoner_path  # noqa: E402
from adaptive_think.cli import main  # noqa: E402
from adaptive_think.loading import chat_prompt, load_model_and_tokenizer  # noqa: E402
from adaptive_think.training import collect_vllm  # noqa: E402
from adaptive_think.training.collect import CollectConfig, collect  # noqa: E402
from adaptive_think.training.items import bundled_items, load_checker  # noqa: E402
from adaptive_think.training.shards import load_collection  # noqa: E402
from tests.collect_engines import assert_same_records, assert_same_states  # noqa: E402

pytestmark = pytest.mark.vllm

CFG = CollectConfig(every=4, batch_size=5, max_new_tokens=200, shard_questions=4, token_states=True)


@pytest.fixture(scope="module")
def engines():
    model, tok = load_model_and_tokenizer("bundled-v1", "cpu", "float32")
    llm = collect_vllm.vllm_engine(reasoner_path("bundled-v1"), model, enforce_eager=True, max_model_len=512,
                                   kv_cache_memory_bytes=2**25)
    yield llm, model, tok
    del llm


def test_vllm_collection_equals_the_hf_engines(engines, tmp_path):
    llm, model, tok = engines
    items, checker = bundled_items(10, seed=5), load_checker(None)
    collect(model, tok, items, tmp_path / "hf", checker, CFG, progress=False)
    summary = collect_vllm.collect_vllm(llm, model, tok, items, tmp_path / "vllm", checker, CFG, progress=False)
    hf_states, hf_records, _ = load_collection(tmp_path / "hf")
    states, records, _ = load_collection(tmp_path / "vllm")
    assert_same_records(hf_records, records)
    assert_same_states(hf_states, states)
    thought = [r for r in records if r["kind"] == 1]
    assert len(thought) > 200 and 0 < sum(r["label"] for r in thought) < len(thought)  # real labels, both kinds
    prompts = [r for r in records if r["kind"] == 0]
    assert 0 < sum(r["nothink_correct"] for r in prompts) < len(prompts) and any(r["full_correct"] for r in prompts)
    # re-prefilling every exit would compute at least prompt + thought up to the exit; the cache leaves a fraction
    prompt_len = {it.id: len(tok.encode(chat_prompt(tok, it.question), add_special_tokens=False)) for it in items}
    re_prefill = sum(prompt_len[r["qid"]] + r["pos"] for r in thought)
    assert summary["cost"]["prefill_tokens"] < 0.5 * re_prefill


def test_a_sampled_vllm_collection_is_seeded_and_resumes(engines, tmp_path, monkeypatch):
    llm, model, tok = engines
    items, checker = bundled_items(6, seed=8), load_checker(None)
    cfg = dataclasses.replace(CFG, batch_size=3, shard_questions=3,
                              sampling={"do_sample": True, "temperature": 1.5, "top_p": 0.95}, sampling_seed=3)
    collect_vllm.collect_vllm(llm, model, tok, items, tmp_path / "whole", checker, cfg, progress=False)
    real, calls = collect_vllm.collect_batch_vllm, []

    def dies_on_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(collect_vllm, "collect_batch_vllm", dies_on_the_second_batch)
        with pytest.raises(KeyboardInterrupt):
            collect_vllm.collect_vllm(llm, model, tok, items, tmp_path / "resumed", checker, cfg, progress=False)
    assert len(load_collection(tmp_path / "resumed")[1]) < len(load_collection(tmp_path / "whole")[1])
    collect_vllm.collect_vllm(llm, model, tok, items, tmp_path / "resumed", checker, cfg, progress=False)
    collect_vllm.collect_vllm(llm, model, tok, items, tmp_path / "reseeded", checker,
                              dataclasses.replace(cfg, sampling_seed=4), progress=False)
    whole, resumed, reseeded = (load_collection(tmp_path / n) for n in ("whole", "resumed", "reseeded"))
    assert whole[1] == resumed[1]
    assert whole[0].keys() == resumed[0].keys() and all(torch.equal(whole[0][k], resumed[0][k]) for k in whole[0])
    assert whole[1] != reseeded[1]  # the draws follow the seed


def test_data_parallel_ranks_each_run_their_own_engine(tmp_path):
    """torchrun, two CPU processes, --engine vllm: each rank starts its own engine alone on its own core, and the
    whole collection equals one hf-engine process's."""
    root = Path(__file__).resolve().parents[2]
    flags = ["--model", "bundled-v1", "--n", "8", "--seed", "31", "--device", "cpu", "--batch-size", "4", "--every", "4",
             "--max-new-tokens", "200", "--token-states"]
    engine = ["--engine", "vllm", "--vllm-kwargs",
              json.dumps({"kv_cache_memory_bytes": 2**25, "enforce_eager": True, "max_model_len": 512})]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--",
           str(root / "scripts" / "collect_probe_data.py"), *flags, *engine, "--out", str(tmp_path / "dp")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert sorted(d["rank"] for d in lines if "rank" in d) == [0, 1]
    assert next(d for d in lines if "ranks" in d)["questions"] == 8
    assert main(["collect", *flags, "--out", str(tmp_path / "hf")]) == 0
    # records in question order, without thought_start (where a question's token states begin in its own rank's file)
    same = lambda recs: [{k: v for k, v in r.items() if k != "thought_start"}  # noqa: E731
                         for r in sorted(recs, key=lambda r: (r["qid"], r["kind"], r["pos"]))]
    hf_states, hf_records, _ = load_collection(tmp_path / "hf")
    states, records, _ = load_collection(tmp_path / "dp")
    assert_same_records(same(hf_records), same(records))
    assert len(records) > 8 and {k: v.shape for k, v in hf_states.items()} == {k: v.shape for k, v in states.items()}
