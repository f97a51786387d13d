"""Tests of the bundled tiny reasoner: tokenizer, chat template, loading and one greedy answer.

Run `pytest tests/test_bundled.py`; the model files come from scripts/train_reasoner.py.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adaptive_think.bundled import reasoner_path
from adaptive_think.tasks import make_questions, parse_answer
from adaptive_think.tasks.completions import full_completion, truncated_completion


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(reasoner_path())


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(reasoner_path()).eval()


def test_reasoner_path_holds_small_safetensors():
    files = {p.name: p.stat().st_size for p in reasoner_path().iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(files)
    assert sum(files.values()) < 20 * 2**20


def test_special_tokens_are_single_ids(tok):
    for name in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "\n"):
        ids = tok(name, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [name]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_task_texts_round_trip(tok):
    for q in make_questions(30, seed=11):
        for text in (q.question, full_completion(q), truncated_completion(q, 3, at_line_end=False)):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text


def test_chat_template_thinking_on_and_off(tok):
    messages = [{"role": "user", "content": "Compute 3 + 4 from left to right, keeping only the last digit."}]
    on = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    off = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on == f"<|im_start|>user\n{messages[0]['content']}<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + "<think>\n\n</think>\n\n"


def test_generation_config_ids(model, tok):
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert type(model).__name__ == "Qwen3ForCausalLM"


@torch.no_grad()
def test_greedy_answer_with_thinking_parses(model, tok):
    q = make_questions(1, seed=2024, levels=[3])[0]
    prompt = tok.apply_chat_template([{"role": "user", "content": q.question}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=200, do_sample=False)
    text = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.startswith("<think>\n") and "</think>\n\nThe answer is " in text
    assert parse_answer(text) is not None
