"""`eval` on a tiny model: every policy family runs, baselines stop at boundaries, trial tokens count."""

import json
import re

import pytest
import torch

from adaptive_think.evaluation.policies import default_policies, parse_policy
from adaptive_think.evaluation.run import Evaluator, evaluate, pareto_check, think_tokens_of
from adaptive_think.markers import resolve_markers
from adaptive_think.probe import Probe
from adaptive_think.probe.items import Item
from tiny import make_model, make_tokenizer
from test_probe_pipeline import R1_TEMPLATE, checker


@pytest.fixture(scope="module")
def ev():
    tok = make_tokenizer()
    tok.chat_template = R1_TEMPLATE
    model = make_model("qwen3", len(tok))
    # a model that writes "." forever: every thought token is a step boundary
    head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tok.convert_tokens_to_ids(".")] = 5.0
    model.lm_head = head
    items = [Item(f"q{i}", f"the answer is {i}", str(i), level=1 + i % 2) for i in range(6)]
    probe = Probe.random_for(model, width=8)
    return Evaluator(model, tok, items, checker, probe=probe, batch_size=3, max_new_tokens=16,
                     pattern=re.compile(r"\."), progress=False)


def test_all_policy_families_run(ev):
    pols = ["full", "none", "budget:4", "marker", "confidence:0.0", "probe", "probe:0.0"]
    res = evaluate(ev, pols, log=lambda *_: None)
    assert list(res) == pols
    for name, v in res.items():
        assert 0 <= v["accuracy"] <= 1 and set(v["per_level"]) == {"1", "2"}
        assert v["forward_tokens_mean"] >= v["think_tokens_mean"]
    assert res["none"]["think_tokens_mean"] == 0 and res["none"]["skip_rate"] == 1.0
    assert res["budget:4"]["think_tokens_mean"] <= 4
    assert res["full"]["think_tokens_mean"] == 16  # a random model never closes its thought
    # confidence 0.0 stops at the first boundary; its trial answers are counted as forward tokens
    conf = res["confidence:0.0"]
    assert conf["think_tokens_mean"] == 1
    assert conf["forward_tokens_mean"] > 16  # one trial answer (close + exit + up to 12 tokens) on top
    assert res["marker"]["think_tokens_mean"] == 1 and res["marker"]["forward_tokens_mean"] == 16
    json.dumps(res)
    assert set(pareto_check(res)) == {"probe_dominates_all", "beaten", "not_beaten"}


def test_policy_specs():
    assert parse_policy("budget:32").value == 32
    for bad, msg in [("budget", "needs a cap"), ("sometimes", "Unknown policy"), ("probe:1.5", r"\[0, 1\]"),
                     ("full:3", "takes no value"), ("budget:x", "not a number")]:
        with pytest.raises(ValueError, match=msg):
            parse_policy(bad)
    assert "probe" in default_policies(100, True) and "probe" not in default_policies(100, False)


def test_think_token_counting():
    tok = make_tokenizer()
    m = resolve_markers(tok)
    ids = tok.encode("<think>so so .</think>\n\nok", add_special_tokens=False)
    assert think_tokens_of(ids, m, False) == (5, True)
    assert think_tokens_of(tok.encode("ok", add_special_tokens=False), m, False) == (0, False)


def test_empty_block_counts_no_thinking():
    tok = make_tokenizer()
    m = resolve_markers(tok)
    ids = tok.encode("<think>\n\n</think>\n\nok", add_special_tokens=False)
    assert think_tokens_of(ids, m, False) == (2, True)
    assert think_tokens_of(ids, m, False, tok) == (0, True)
