"""What the probe-pipeline tests share: an R1-style chat template for the tiny tokenizer, a checker that both
answers pass on a random model, a small collection config, and a collect that is killed part-way."""

import pytest

from adaptive_think.training import collect as collect_mod
from adaptive_think.training.collect import CollectConfig, collect

R1_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}{% endif %}"
)


def checker(text, answer):
    # deterministic stand-in for "the answer is right": both classes occur on a random model
    return ("answer" in text) or ("so" in text)


# random weights never close a thought: tests on this config check the plumbing, not the data's health
CFG = CollectConfig(every=3, batch_size=6, max_new_tokens=12, max_answer_tokens=4, shard_questions=6, fail_fast=False)


def interrupted_collect(monkeypatch, *args, on_batch: int = 3, **kwargs) -> None:
    """collect(*args, **kwargs), killed (KeyboardInterrupt) as its `on_batch`-th batch starts."""
    real, calls = collect_mod.collect_batch, {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == on_batch:
            raise KeyboardInterrupt
        return real(*a, **kw)

    with monkeypatch.context() as m:
        m.setattr(collect_mod, "collect_batch", flaky)
        with pytest.raises(KeyboardInterrupt):
            collect(*args, **kwargs)
