"""Load a local model folder (or the bundled reasoner) and build prompts with its chat template."""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(model: str) -> Path:
    """`bundled` / `bundled-v1` -> a shipped reasoner; otherwise a local folder that must exist (no hub downloads)."""
    from adaptive_think.bundled import is_bundled, reasoner_path

    if is_bundled(model):
        return reasoner_path(model)
    path = Path(model).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"Model folder {str(path)!r} does not exist. Pass a local folder saved with save_pretrained "
            "(config.json, weights, tokenizer files), or `bundled` for the shipped tiny reasoner (`bundled-v1`: the "
            "one-family one)."
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} has no config.json; it is not a saved Hugging Face model folder.")
    return path


def load_model_and_tokenizer(model: str, device: str = "auto", dtype: str = "auto", device_map: str | None = None):
    """(model in eval mode, tokenizer with left padding) from a local folder or `bundled`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}.")
    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    kwargs = {"dtype": DTYPES[dtype]}
    if device_map:
        kwargs["device_map"] = device_map
    lm = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    if not device_map:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        lm = lm.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return lm, tokenizer


def chat_prompt(tokenizer, question: str, enable_thinking: bool = True) -> str:
    """The generation prompt for one user question (the raw question when there is no chat template)."""
    if not getattr(tokenizer, "chat_template", None):
        return question
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False,
        enable_thinking=enable_thinking,
    )
