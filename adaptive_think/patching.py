"""`patch` / `unpatch`: make an existing model's own `model.generate` adaptive, and undo it.

The patch sets an attribute on that one model object (no global rebinding), so pipelines and
evaluation harnesses that call `model.generate` get the controller unchanged.

    >>> adaptive_think.patch(model, tokenizer, think=ThinkConfig(policy="budget", max_think_tokens=128))
    >>> model.generate(**inputs)          # adaptive; model._adaptive_thinker.last_reports has the reports
    >>> adaptive_think.unpatch(model)
"""

from __future__ import annotations

import functools
import inspect

from adaptive_think.config import ThinkConfig
from adaptive_think.thinker import AdaptiveThinker


def patch(model, tokenizer, think: ThinkConfig | None = None, think_tokens=None, probe=None) -> AdaptiveThinker:
    """Replace `model.generate` on this model with the adaptive one; returns the thinker behind it."""
    if is_patched(model):
        raise ValueError("This model is already patched by adaptive_think; call adaptive_think.unpatch(model) first.")
    thinker = AdaptiveThinker(model, tokenizer, think_tokens=think_tokens, probe=probe, think=think)
    original = model.generate

    @functools.wraps(original)
    def generate(*args, think: ThinkConfig | None = None, **kwargs):
        return thinker.generate(*args, think=think, **kwargs)

    generate.__signature__ = _with_think(inspect.signature(original))  # introspection shows `think` and `engine`
    model._adaptive_think_original_generate = original
    model._adaptive_thinker = thinker
    model.generate = generate
    return thinker


def _with_think(sig: inspect.Signature) -> inspect.Signature:
    """The wrapped generate's own signature plus the keyword-only `think` and `engine` of the thinker."""
    kw = inspect.Parameter.KEYWORD_ONLY
    ours = [inspect.Parameter("think", kw, default=None, annotation="ThinkConfig | list[ThinkConfig] | None"),
            inspect.Parameter("engine", kw, default="hf", annotation="str")]
    params = [p for p in sig.parameters.values() if p.name not in ("think", "engine")]
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    return sig.replace(parameters=params[:at] + ours + params[at:])


def is_patched(model) -> bool:
    return "_adaptive_thinker" in vars(model)


def unpatch(model) -> None:
    """Give the model back its own generate()."""
    if not is_patched(model):
        raise ValueError("This model is not patched by adaptive_think; nothing to unpatch.")
    del model.generate  # the instance attribute; the class method shows through again
    del model._adaptive_think_original_generate
    del model._adaptive_thinker
