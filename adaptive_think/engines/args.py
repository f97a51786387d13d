"""generate() arguments: which ones each engine refuses and why, HF's precedence, and the eos ids.

One table for both engines: the hf engine runs HF's own loop, so it refuses only what writes several
tokens per step or keeps several hypotheses per row (the per-row controller cannot steer those); the
graph engine runs its own captured loop and refuses, besides, every feature that loop does not have.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

BOTH, GRAPH = ("hf", "graph"), ("graph",)
# name -> (why, engines that refuse it, values that mean "feature off" and so are accepted)
UNSUPPORTED: dict[str, tuple[str, tuple[str, ...], tuple]] = {
    "num_beams": ("beam search keeps several hypotheses per row, which the per-row controller cannot steer", BOTH,
                  (1, None)),
    "num_beam_groups": ("beam search keeps several hypotheses per row, which the per-row controller cannot steer",
                        BOTH, (1, None)),
    "assistant_model": ("assisted (speculative) decoding writes several tokens per step past the controller", BOTH,
                        (None,)),
    "prompt_lookup_num_tokens": ("prompt-lookup decoding writes several tokens per step past the controller", BOTH,
                                 (None,)),
    "custom_generate": ("a custom generation loop bypasses the controller", BOTH, (None,)),
    "streamer": ("it streams from inside HF's loop", GRAPH, (None,)),
    "logits_processor": ("the captured step has no place for arbitrary Python processors", GRAPH, (None,)),
    "stopping_criteria": ("the captured step has no place for arbitrary Python criteria", GRAPH, (None,)),
    "prefix_allowed_tokens_fn": ("it is a Python callback per step", GRAPH, (None,)),
    "num_return_sequences": ("it expands the batch inside HF's loop", GRAPH, (1, None)),
    "output_scores": ("it returns per-step scores", GRAPH, (False, None)),
    "output_logits": ("it returns per-step logits", GRAPH, (False, None)),
    "output_attentions": ("it returns per-step attentions", GRAPH, (False, None)),
    "output_hidden_states": ("it returns per-step hidden states", GRAPH, (False, None)),
    "return_dict_in_generate": ("the graph engine returns the token tensor only", GRAPH, (False, None)),
    "synced_gpus": ("it is for multi-GPU sharded generation", GRAPH, (False, None)),
    "negative_prompt_ids": ("classifier-free guidance runs a second forward", GRAPH, (None,)),
}
_HF_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "max_length": 20}


def _neutral(name: str, value) -> bool:
    if name in ("streamer", "logits_processor", "stopping_criteria") and not value:
        return True  # None or an empty list
    neutral = UNSUPPORTED[name][2]
    if value is None:
        return None in neutral
    return not torch.is_tensor(value) and any(v is not None and value == v for v in neutral)


def refusal(engine: str, name: str, why: str) -> ValueError:
    """The error for a setting `engine` cannot honour; the graph engine points to the hf engine."""
    if engine == "graph":
        return ValueError(f'generate_graph does not support {name} ({why}); use engine="hf" for it.')
    return ValueError(f"{name} is not supported with adaptive thinking: {why}. Leave it unset (or at its default).")


def check_arguments(engine: str, kwargs: dict, gen_cfg=None, known: tuple[str, ...] = ()) -> None:
    """Raise a clear ValueError for a generate() argument (or generation_config field) `engine` refuses.

    known: the names the engine takes besides the table's (the graph engine refuses any other name).
    """
    for name, value in kwargs.items():
        if name in UNSUPPORTED:
            why, engines, _ = UNSUPPORTED[name]
            if engine in engines and not _neutral(name, value):
                raise refusal(engine, f"{name}={value!r}", why)
        elif engine == "graph" and name not in known:
            raise refusal(engine, f"the argument {name!r}", "it is not one the graph engine knows")
    for name, (why, engines, _) in UNSUPPORTED.items():
        value = getattr(gen_cfg, name, None)
        if engine in engines and name not in kwargs and not _neutral(name, value):
            raise refusal(engine, f"generation_config.{name}={value!r}", why)


UNSET = object()  # a keyword not given at all (HF: a keyword given as None overrides the generation_config)


def resolve(name: str, value, gen_cfg, model=None):
    """HF's precedence: the argument (a given None wins; UNSET or None means not given for the others here),
    else the call's generation_config, else the model's, else generate()'s global default."""
    if value is not None and value is not UNSET:
        return value
    for cfg in (gen_cfg, getattr(model, "generation_config", None)):
        if getattr(cfg, name, None) is not None:
            return getattr(cfg, name)
    try:
        return GenerationConfig._get_default_generation_params().get(name, _HF_DEFAULTS.get(name))
    except AttributeError:  # older 5.x
        return _HF_DEFAULTS.get(name)


def token_ids(value) -> tuple[int, ...]:
    """None, an int, a list or a tensor of token ids -> a tuple of ints."""
    if value is None:
        return ()
    if torch.is_tensor(value):
        value = value.tolist()
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def eos_token_ids(model, kwargs: dict | None = None, tokenizer=None) -> tuple[int, ...]:
    """The eos ids a generate(**kwargs) call of `model` stops at, by HF's precedence: `eos_token_id` when given
    (None: no eos), else the call's or the model's generation_config; else, only when nothing names any and a
    `tokenizer` is given, the tokenizer's eos."""
    kwargs = kwargs or {}
    if "eos_token_id" in kwargs and kwargs["eos_token_id"] is not UNSET:
        return token_ids(kwargs["eos_token_id"])
    eos = token_ids(resolve("eos_token_id", None, kwargs.get("generation_config"), model))
    if not eos and tokenizer is not None:
        eos = token_ids(getattr(tokenizer, "eos_token_id", None))
    return eos
