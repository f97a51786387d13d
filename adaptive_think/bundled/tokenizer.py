"""Builds the bundled reasoner's word-level tokenizer and its Qwen3-style chat template.

Every word, number 0..99, punctuation mark and newline is one token (a leading space is part of the
token, so decoding is plain concatenation and round-trips exactly). Version 2 (the multi-family reasoner)
writes every digit as its own token, so numbers of any length stay in the vocabulary, merges an operation
with its operand (" - 2") and a digit with the word after it in an arrow (" 5 to"), so that each lookup a
trace makes matches one token, and builds its closed vocabulary from every task family. `<think>`/`</think>` are single-id
added tokens, as in Qwen3. Called by scripts/train_reasoner.py; run `python -m
adaptive_think.bundled.tokenizer OUT_DIR [VERSION]` to write just the tokenizer.
"""

from __future__ import annotations

import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, IM_START, IM_END, THINK, END_THINK, UNK = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "[UNK]",
)
# One token per word / number / symbol, with its leading space; newlines are tokens of their own.
SPLIT = Regex(r" ?[A-Za-z]+| ?\d+| ?[^\sA-Za-z\d]|\n|\s")
# Version 2 merges the pairs every lookup reads, so that a lookup is "find this token, copy the next one":
# an operation with its operand (" - 2") and a digit with the arrow word after it (" 5 to").
SPLIT_V2 = Regex(r" [+*-] \d(?!\d)| ?\d to(?![A-Za-z])| ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]|\n|\s")
# Longest prompt + thought + answer the version-2 reasoner is built for (the long family reaches ~2,100).
MAX_LENGTH = {1: 512, 2: 2560}

# Qwen3's shape: thinking on, the prompt ends at "assistant\n" and the model opens <think> itself;
# enable_thinking=False appends the empty think block, so the model answers directly.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def _corpus(version: int) -> list[str]:
    """Every text the model sees: questions, traces and completions from the task families, plus chat."""
    from adaptive_think.tasks import make_questions
    from adaptive_think.tasks.completions import full_completion
    from adaptive_think.tasks.families import make_family_questions

    texts = ["user", "assistant", "system", "\n"]
    texts += [str(i) for i in range(100)] + [f" {i}" for i in range(100)]
    questions = make_questions(3000, seed=12345) if version == 1 else make_family_questions(3000, seed=12345)
    for q in questions:
        texts += [q.question, full_completion(q)]
    return texts


def build_tokenizer(version: int = 1) -> PreTrainedTokenizerFast:
    """The tokenizer with a closed vocabulary built from the task families (deterministic).

    version 1: the arithmetic-only reasoner's (numbers 0..99 are tokens); 2: the multi-family one's.
    """
    if version not in MAX_LENGTH:
        raise ValueError(f"tokenizer version must be one of {sorted(MAX_LENGTH)}, got {version!r}")
    specials = [PAD, IM_START, IM_END, THINK, END_THINK, UNK]
    splitter = pre_tokenizers.Split(SPLIT if version == 1 else SPLIT_V2, behavior="isolated")
    words: set[str] = set()
    for text in _corpus(version):
        for part in (THINK, END_THINK):
            text = text.replace(part, "\n")
        words.update(piece for piece, _ in splitter.pre_tokenize_str(text))
    vocab = {tok: i for i, tok in enumerate(specials + sorted(words))}

    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = splitter
    core.decoder = decoders.Fuse()
    # Chat markers are special (skipped by decode(skip_special_tokens=True)); think markers are not,
    # as in Qwen3, so decoded text keeps the think block.
    core.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (PAD, IM_START, IM_END, UNK)])
    core.add_tokens([AddedToken(t, normalized=False, special=False) for t in (THINK, END_THINK)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_LENGTH[version],
        padding_side="left",
    )


if __name__ == "__main__":
    tok = build_tokenizer(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    tok.save_pretrained(sys.argv[1] if len(sys.argv) > 1 else "tokenizer_out")
    print(f"vocab {len(tok)}")
