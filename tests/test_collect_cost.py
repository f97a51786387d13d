"""What collecting costs, before (doctor's estimate per engine) and after (collect's own accounting): the arithmetic
of the estimate on a built sample and benchmark file, the one formatter both print with, and the doctor's lines
on a scripted model whose labelled sample they scale."""

import json

import pytest

from adaptive_think.training.collect import COST_KEYS, CollectConfig, collect, format_cost
from adaptive_think.training.doctor import (COST_BENCHMARK, VLLM_BLOCK, CollectSample, DoctorConfig, engine_estimates,
                                          examine, measured_ratio)
from adaptive_think.training.health import KIND_PROMPT
from adaptive_think.training.items import Item, load_checker
from tiny import make_scripted, make_tokenizer

# two sample questions: 2 x 420 decode positions, prompts 2 x 30 + no-think prompts 2 x 20 on the shared cache,
# 2 x 50 forced exits of 19 tokens, 2 x 6 no-think answer tokens
SAMPLE = CollectSample(
    cost={"generated_tokens": 840, "prefill_tokens": 100, "forced_exits": 100, "exit_tokens": 1900,
          "nothink_tokens": 12},
    questions=2, thought_tokens=400.0, own_tokens=410.0, prompt_tokens=30.0, nothink_prompt_tokens=20.0,
    seconds=3.0, record_bytes=5000.0, row_bytes=6 * 576 * 2)


def benchmark(tmp_path, rows) -> str:
    path = tmp_path / "collect_cost_cpu.json"
    path.write_text(json.dumps({"rows": rows}))
    return str(path)


def test_engine_estimates_scale_the_sample_by_engine(tmp_path):
    bench = benchmark(tmp_path, [{"T": 128, "ratio_cpu": 1.5}, {"T": 512, "ratio_cpu": 1.25, "vllm_ratio_cpu": 0.8},
                                 {"T": 2048, "ratio_cpu": 1.1, "vllm_ratio_cpu": 0.5}])
    hf, vllm = engine_estimates(SAMPLE, 1000, bench)
    assert hf["engine"] == "hf" and vllm["engine"] == "vllm"
    for e in (hf, vllm):  # what both engines do alike: the forced exits and the answers
        assert e["questions"] == 1000 and e["estimated"] and e["thought_tokens"] == 400.0
        assert (e["forced_exits"], e["exit_tokens"], e["nothink_tokens"]) == (50_000, 950_000, 6_000)
        assert e["bytes_per_question"] == 5000 + (1 + 50) * 6 * 576 * 2  # JSON + the prompt's and 50 checkpoint rows
    assert (hf["generated_tokens"], hf["prefill_tokens"]) == (420_000, 50_000)
    # vLLM: no batch padding; both prompts, a teacher-forced prompt + thought, half a block per exit
    assert vllm["generated_tokens"] == 410_000
    assert vllm["prefill_tokens"] == (30 + 20 + (30 + 400) + 50 * (VLLM_BLOCK - 1) / 2) * 1000
    # wall time: 3 s of generation per question x the ratio at T = 512, the nearest measured length to 400
    assert hf["wall_s"] == pytest.approx(3.0 * 1000 * 1.25, rel=1e-12)
    assert vllm["wall_s"] == pytest.approx(3.0 * 1000 * 0.8, rel=1e-12)
    assert ("3.00 s of generation per question here, batch 2, x 1.25, the collect / generation ratio "
            "collect_cost_cpu.json measured at T = 512") in hf["wall_basis"]
    assert engine_estimates(CollectSample(**{**SAMPLE.__dict__, "thought_tokens": 150.0}), 10, bench)[0][
        "wall_s"] == pytest.approx(3.0 * 10 * 1.5, rel=1e-12)  # nearest to 150 is T = 128


def test_estimates_without_a_measured_ratio_say_so(tmp_path):
    bench = benchmark(tmp_path, [{"T": 512, "ratio_cpu": 1.25}])
    hf, vllm = engine_estimates(SAMPLE, 1000, bench)
    assert hf["wall_s"] == pytest.approx(3750.0, rel=1e-12) and vllm["wall_s"] is None
    assert vllm["wall_basis"] == "no vllm_ratio_cpu in collect_cost_cpu.json to scale this machine's generation time by"
    assert format_cost(vllm).startswith("1000 questions in a time not known (vllm engine; no vllm_ratio_cpu in ")
    missing = engine_estimates(SAMPLE, 1000, str(tmp_path / "absent.json"))
    assert [e["wall_s"] for e in missing] == [None, None]


def test_format_cost_prints_the_accounting(tmp_path):
    hf, _ = engine_estimates(SAMPLE, 1000, benchmark(tmp_path, [{"T": 512, "ratio_cpu": 1.25}]))
    line = format_cost(hf)
    assert line.startswith("1000 questions in about 62 min (hf engine; 3.00 s of generation per question here, batch 2, "
                           "x 1.25, ")
    assert ("thoughts of 400 tokens; in all about 420,000 tokens generated, 50,000 prefilled, 956,000 answer tokens; "
            "per question 420 generated, 50 prefilled, 50 forced exits of 19.0 tokens, 6 no-think answer tokens, "
            f"about {(5000 + 51 * 6912) / 1e3:.0f} kB on disk") in line
    measured = dict.fromkeys(COST_KEYS, 0) | {"questions": 3, "wall_s": 7.4, "engine": "hf"}
    assert format_cost(measured).startswith("3 questions in 7 s (hf engine): in all 0 tokens generated")


def test_doctor_prints_a_cost_line_per_engine_from_its_labelled_sample():
    tok = make_tokenizer()
    model = make_scripted("works", tok, think_words=12)
    items = [Item(f"q{i}", f"the answer is {i}", str(i)) for i in range(2)]
    ex = examine(model, tok, items, load_checker(None), DoctorConfig(samples=2, max_new_tokens=40, every=4,
                                                                    collect_n=300))
    lines = {c.name: c.result for c in ex.checks if c.name.startswith("collect cost")}
    assert list(lines) == ["collect cost, hf", "collect cost, vllm"]
    exits = sum(r["kind"] != KIND_PROMPT for r in ex.records)  # the sample's labelled checkpoints
    thought = sum(r["thought_len"] for r in ex.records if r["kind"] == KIND_PROMPT) / 2
    assert exits > 4 and thought >= 12
    for estimate in ex.estimates:
        assert lines[f"collect cost, {estimate['engine']}"] == format_cost(estimate)
        assert estimate["forced_exits"] == 300 * exits / 2 and estimate["thought_tokens"] == thought
        assert estimate["wall_s"] is None or estimate["wall_s"] > 0
    hf = ex.estimates[0]
    assert hf["wall_s"] > 0 and lines["collect cost, hf"].startswith("300 questions in about ")
    assert f"thoughts of {thought:.0f} tokens" in lines["collect cost, hf"]


def test_collect_ends_with_its_own_accounting(tmp_path):
    tok = make_tokenizer()
    lines = []
    cfg = CollectConfig(every=2, batch_size=4, max_new_tokens=24, max_answer_tokens=8)
    items = [Item(f"q{i}", f"what is {i}", str(i)) for i in range(4)]
    summary = collect(make_scripted("works", tok), tok, items, tmp_path, load_checker(None), cfg, progress=False,
                      log=lines.append)
    cost = summary["cost"]
    assert lines[-1] == f"collect, cost: {format_cost(cost)}"
    assert cost["engine"] == "hf" and cost["thought_tokens"] == summary["health"]["mean_thought_len"] == 6.0
    assert lines[-1].startswith("collect, cost: 4 questions in ") and "(hf engine): thoughts of 6 tokens; in all " in lines[-1]


def test_shipped_benchmarks_give_both_engines_a_wall_time():
    # doctor's default files: the hf engine's ratio and vLLM's, each from its own benchmark run
    hf, vllm = engine_estimates(SAMPLE, 1000, COST_BENCHMARK)
    assert "collect_cost_cpu.json" in hf["wall_basis"] and hf["wall_s"] is not None
    assert "collect_cost_vllm_cpu.json" in vllm["wall_basis"] and vllm["wall_s"] is not None


def test_measured_ratio_reads_the_nearest_row_across_files(tmp_path):
    a = benchmark(tmp_path, [{"T": 128, "ratio_cpu": 1.5}])
    b = tmp_path / "other.json"
    b.write_text(json.dumps({"rows": [{"T": 512, "vllm_ratio_cpu": 0.9}, {"T": 2048, "vllm_ratio_cpu": 0.7}]}))
    assert measured_ratio([a, str(b)], 600.0, "vllm_ratio_cpu") == (0.9, 512, "other.json")
    assert measured_ratio([a, str(b)], 600.0, "ratio_cpu") == (1.5, 128, "collect_cost_cpu.json")
    assert measured_ratio([a], 600.0, "vllm_ratio_cpu") is None
