"""Tests of scripts/measure_lookups.py: which tokens count as lookups, and that its error rates are right."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

_SPEC = importlib.util.spec_from_file_location(
    "measure_lookups", Path(__file__).resolve().parents[1] / "scripts/measure_lookups.py")
measure_lookups = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(measure_lookups)

from adaptive_think.bundled.tokenizer import build_tokenizer  # noqa: E402
from adaptive_think.tasks import chain, walk  # noqa: E402
from adaptive_think.tasks.families import make_family_questions  # noqa: E402


class Oracle:
    """Predicts every next token right, except the ones at positions in `wrong` (by token index)."""

    def __init__(self, vocab: int, wrong: set[int] = frozenset()):
        self.vocab, self.wrong = vocab, wrong

    def __call__(self, ids):
        nxt = torch.cat([ids[0, 1:], ids[0, :1]])
        for i in self.wrong:
            nxt[i - 1] = (nxt[i - 1] + 1) % self.vocab
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, self.vocab)[None].float())


@pytest.mark.parametrize("family", [chain.FAMILY, walk.FAMILY])
def test_trace_lookups_are_the_looked_up_tokens_of_every_pass(family):
    tok = build_tokenizer(2)
    q = make_family_questions(1, 3, families=[family], levels=[4])[0]
    ids, labels = measure_lookups.encode_example(tok, q, "full", random.Random(0))
    found = [tok.decode([ids[i]]) for i in measure_lookups.trace_lookups(tok, ids, labels, family)]
    if family == chain.FAMILY:
        _, ops = chain.parse_question(q.question)
        passes = q.thought.count("\na ") + q.thought.startswith("a ")
        assert found == [f" {op} {b}" for op, b in ops] * passes
    else:
        arrows, _, _ = walk.parse_question(q.question)
        lines = [line.split(": ", 1)[1] for line in q.thought.split("\n") if ": " in line]
        assert found == [" " + line.split(" to ")[1][0] for line in lines]
        assert all(line[0].isdigit() and int(line.split(" to ")[1][0]) == arrows[int(line[0])] for line in lines)


def test_error_rates_count_exactly_the_misread_lookups():
    tok = build_tokenizer(2)
    qs = make_family_questions(2, 5, families=[chain.FAMILY], levels=[3])
    perfect = measure_lookups.lookup_errors(Oracle(len(tok)), tok, qs)
    assert perfect["trace"]["wrong"] == perfect["drill"]["wrong"] == 0 and perfect["trace"]["lookups"] > 0
    # One misread lookup in the first trace: found, and nothing else counted.
    ids, labels = measure_lookups.encode_example(tok, qs[0], "full", random.Random(0))
    first = measure_lookups.trace_lookups(tok, ids, labels, chain.FAMILY)[0]
    one = measure_lookups.lookup_errors(Oracle(len(tok), {first}), tok, qs[:1])
    assert one["trace"]["wrong"] == 1 and one["trace"]["error"] == 1 / one["trace"]["lookups"]


@pytest.mark.parametrize("family", [chain.FAMILY, walk.FAMILY])
def test_errors_by_key_split_the_totals_and_blame_the_misread_key(family):
    tok = build_tokenizer(2)
    q = make_family_questions(1, 7, families=[family], levels=[4])[0]
    ids, labels = measure_lookups.encode_example(tok, q, "full", random.Random(0))
    lookups = measure_lookups.trace_lookups(tok, ids, labels, family)
    misread = lookups[2]
    key = measure_lookups.lookup_key(tok, ids, misread, family)
    if family == chain.FAMILY:
        assert key == chain.LABELS[2]  # the first pass reads steps a, b, c, ...
    else:
        assert key == q.thought.split("\n")[2].split(": ")[1].split(" to ")[0]  # the third arrow's digit
    got = measure_lookups.lookup_errors(Oracle(len(tok), {misread}), tok, [q])
    for kind in ("trace", "drill"):
        by_key = got[kind]["by_key"]
        assert sum(r["lookups"] for r in by_key.values()) == got[kind]["lookups"]
        assert sum(r["wrong"] for r in by_key.values()) == got[kind]["wrong"]
    assert {k: r["wrong"] for k, r in got["trace"]["by_key"].items() if r["wrong"]} == {key: 1}
