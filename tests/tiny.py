"""Tiny tokenizers, models and a scripted "reasoner" for the tests: built from configs, no download."""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

WORDS = ["the", "answer", "is", "so", "wait", "check", "again", "ok", "yes", "no", "x", "y", "z", "think", "reason"]
WORDS += [str(i) for i in range(20)]
PUNCT = [".", ",", "<", ">", "/", "[", "]", ":", " ", "\n"]
SPECIALS = ["<pad>", "<eos>", "<think>", "</think>"]

QWEN_STYLE_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:\n{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def make_tokenizer(think_special: bool = True) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: words, digits, punctuation, space and newline are single tokens."""
    specials = SPECIALS if think_special else SPECIALS[:2]
    vocab = {t: i for i, t in enumerate(specials + WORDS + PUNCT + ["<unk>"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
        additional_special_tokens=specials[2:],
    )
    fast.chat_template = QWEN_STYLE_TEMPLATE
    fast.padding_side = "left"
    return fast


ARCHS = {
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 8}),
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {}),
    "gemma": (GemmaConfig, GemmaForCausalLM, {"head_dim": 8}),
}


def make_model(arch: str, vocab_size: int, seed: int = 0, layers: int = 3):
    """A randomly initialised tiny causal LM of the given architecture, in eval mode."""
    config_cls, model_cls, extra = ARCHS[arch]
    config = config_cls(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False, **extra,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return model


class ScriptedReasoner(LogitsProcessor):
    """Makes any model behave like a reasoner: opens a thought (unless the prompt did), writes
    `think_len[i]` words, closes it, writes an answer, then eos. It reads the generated text each step,
    so it reacts to tokens the controller forced, as a real model would.
    """

    def __init__(self, prompt_len: int, think_len: list[int], open_ids, close_ids, eos_id: int, word_ids,
                 answer_ids, opens_itself: bool = True):
        self.prompt_len = prompt_len
        self.think_len = think_len
        self.open_ids, self.close_ids = list(open_ids), list(close_ids)
        self.eos_id, self.word_ids, self.answer_ids = eos_id, list(word_ids), list(answer_ids)
        self.opens_itself = opens_itself

    @staticmethod
    def _find(seq, sub, start=0):
        for i in range(start, len(seq) - len(sub) + 1):
            if seq[i : i + len(sub)] == sub:
                return i
        return -1

    def next_token(self, row: int, gen: list[int]) -> int:
        if self.opens_itself:
            o = self._find(gen, self.open_ids)
            if o < 0:
                return self.open_ids[len(gen)] if len(gen) < len(self.open_ids) else self.eos_id
            body_start = o + len(self.open_ids)
        else:
            body_start = 0
        c = self._find(gen, self.close_ids, body_start)
        if c < 0:
            written = len(gen) - body_start
            n = self.think_len[row]
            if written < n:
                return self.word_ids[(row + written) % len(self.word_ids)]
            return self.close_ids[min(written - n, len(self.close_ids) - 1)]
        after = len(gen) - (c + len(self.close_ids))
        return self.answer_ids[after] if after < len(self.answer_ids) else self.eos_id

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, -1e4)
        for row, ids in enumerate(input_ids.tolist()):
            out[row, self.next_token(row, ids[self.prompt_len :])] = 0.0
        return out


class ScriptedLM(Qwen3ForCausalLM):
    """A tiny Qwen3 whose next token follows a script of the text so far, whatever its weights say, so
    tests get a model that never thinks, one that thinks but answers in another format, or one that
    works, through every generate() path (hidden states stay real). The answer is the first number in
    the prompt when the thought ran at least `min_think` words, else that number + 1.

    behaviour: "no-think" (answers "the answer is N" at once), "other-format" (thinks, then "so N"),
    "works" (thinks, then "the answer is N"), "never-closes" (thinks forever).
    """

    behaviour = "works"
    think_words = 6
    min_think = 2

    def forward(self, input_ids=None, attention_mask=None, logits_to_keep=0, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep,
                              **kwargs)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        queries = input_ids.shape[1]
        before = cache.get_seq_length() - queries if cache is not None else 0
        if before == 0:  # a new cache: a new generation, whose token ids travel with its cache
            self._slots = [[] for _ in range(input_ids.shape[0])]
            if cache is not None:  # follow the cache when rows leave it (collect's forced exits drop finished rows)
                cache.scripted_ids, select = self._slots, cache.batch_select_indices
                cache.batch_select_indices = lambda idx: (
                    setattr(cache, "scripted_ids", [cache.scripted_ids[i] for i in idx.tolist()]), select(idx))
        elif cache is not None:  # a cache kept from an earlier generation (collect's forced exits)
            self._slots = cache.scripted_ids
        for row, ids in enumerate(input_ids.tolist()):  # the cache may have been cropped since the last call
            self._slots[row][:] = self._slots[row][:before] + ids
        kept = (range(queries)[-logits_to_keep:] if isinstance(logits_to_keep, int) and logits_to_keep
                else range(queries) if isinstance(logits_to_keep, int) else logits_to_keep.tolist())
        logits = torch.full((input_ids.shape[0], len(kept), out.logits.shape[-1]), -1e4, dtype=out.logits.dtype,
                            device=out.logits.device)
        for row, slots in enumerate(self._slots):
            for n, q in enumerate(kept):
                if attention_mask is not None and attention_mask.dim() == 4:  # a custom mask says what q sees
                    m = attention_mask[row, 0, q]
                    seq = [slots[i] for i in (m if m.dtype == torch.bool else m == 0).nonzero()[:, 0].tolist()]
                else:
                    seq = slots[: before + q + 1]
                logits[row, n, self.next_token(seq)] = 0.0
        out.logits = logits
        return out

    def next_token(self, seq: list[int]) -> int:
        s = self.script
        numbers = [t for t in seq if t in s["number_ids"]]
        answer = s["number_ids"][numbers[0]] if numbers else 0
        opens = [i for i, t in enumerate(seq) if t == s["open"]]
        closes = [i for i, t in enumerate(seq) if t == s["close"]]
        if not opens and self.behaviour == "no-think" or closes and (not opens or closes[-1] > opens[-1]):
            if opens and closes:  # the answer depends on how long the thought ran
                thought = sum(1 for t in seq[opens[-1] : closes[-1]] if t in s["word_ids"][:4])
                answer = answer if thought >= self.min_think else answer + 1
            start = closes[-1] + 1 if closes else s["prompt_end"](seq)
            while start < len(seq) and seq[start] == s["newline"]:  # the exit text after the close marker
                start += 1
            fmt = s["answer_other" if self.behaviour == "other-format" else "answer_is"](answer % 20)
            written = len(seq) - start
            return fmt[written] if written < len(fmt) else s["eos"]
        if not opens:
            return s["open"]
        written = len(seq) - opens[-1] - 1
        if self.behaviour == "never-closes" or written < self.think_words:
            return s["word_ids"][written % len(s["word_ids"])]
        return s["close"]


def make_scripted(behaviour: str, tok, think_words: int = 6, seed: int = 0) -> ScriptedLM:
    """A `ScriptedLM` for the word-level tokenizer of `make_tokenizer()`."""
    config = Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        tie_word_embeddings=False, head_dim=8,
    )
    torch.manual_seed(seed)
    model = ScriptedLM(config).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
    vocab = tok.get_vocab()
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    assistant = enc("assistant:\n")
    model.behaviour, model.think_words = behaviour, think_words
    model.script = {
        "open": vocab["<think>"], "close": vocab["</think>"], "eos": tok.eos_token_id,
        "number_ids": {vocab[str(i)]: i for i in range(20)},
        "word_ids": [vocab[w] for w in ("wait", "check", "again", "ok", ".", "\n")],  # the first 4 count as words
        "newline": vocab["\n"],
        "answer_is": lambda n: enc(f"the answer is {n}."),
        "answer_other": lambda n: enc(f"so {n}"),
        # a direct answer starts right after the template's "assistant:\n"
        "prompt_end": lambda seq: max(i + len(assistant) for i in range(len(seq)) if seq[i : i + len(assistant)] == assistant),
    }
    return model


def make_chain_model(tok, next_of: dict[int, int], layers: int = 2) -> Qwen3ForCausalLM:
    """A tiny Qwen3 whose greedy next token is `next_of[current token]`, by its weights alone (no Python in the
    forward, so every engine and CUDA-graph capture runs it): one-hot embeddings, attention and MLP outputs
    zeroed (the residual stream carries the embedding), lm_head row next_of[t] reads coordinate t. Tokens
    missing from next_of lead to eos. The hidden state of any layer is the current token's one-hot embedding.
    """
    vocab = len(tok)
    width = 16 * ((vocab + 15) // 16)  # one coordinate per token
    config = Qwen3Config(
        vocab_size=vocab, hidden_size=width, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=width // 4, max_position_embeddings=512, pad_token_id=0,
        eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab] = torch.eye(vocab)
        model.lm_head.weight.zero_()
        for t in range(vocab):
            model.lm_head.weight[next_of.get(t, tok.eos_token_id), t] = 1.0
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, tok.eos_token_id
    return model
