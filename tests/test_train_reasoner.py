"""Tests of scripts/train_reasoner.py's v2 recipe on a tiny model: batches, and resume = uninterrupted run.

Run `pytest tests/test_train_reasoner.py` (about a minute on two shared cores).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from safetensors.torch import load_file

_SPEC = importlib.util.spec_from_file_location("train_reasoner", Path(__file__).resolve().parents[1] / "scripts/train_reasoner.py")
train_reasoner = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(train_reasoner)

TINY = ["--recipe", "v2", "--hidden", "32", "--heads", "2", "--layers", "1", "--batch-tokens", "700",
        "--steps", "3", "--warmup", "1", "--log-every", "1"]


def test_v2_batches_are_a_function_of_seed_and_step_and_fit_the_token_budget():
    args = train_reasoner.parse_args(TINY + ["--out", "unused"])
    tok = train_reasoner.build_tokenizer(2)
    a, b = train_reasoner.make_batch(tok, args, 5), train_reasoner.make_batch(tok, args, 5)
    assert all((a[k] == b[k]).all() for k in a)
    assert not (train_reasoner.make_batch(tok, args, 6)["input_ids"].shape == a["input_ids"].shape
                and (train_reasoner.make_batch(tok, args, 6)["input_ids"] == a["input_ids"]).all())
    for step in range(12):
        ids = train_reasoner.make_batch(tok, args, step)["input_ids"]  # [B, T]
        assert ids.numel() <= 700 or ids.shape[0] == 1


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    train_reasoner.main(TINY + ["--out", str(tmp_path / "straight"), "--ckpt-minutes", "1000"])
    # --stop-after-minutes 0 checkpoints after the first step and exits; --resume finishes the run
    train_reasoner.main(TINY + ["--out", str(tmp_path / "split"), "--stop-after-minutes", "0"])
    assert (tmp_path / "split" / train_reasoner.CHECKPOINT).is_file()
    train_reasoner.main(TINY + ["--out", str(tmp_path / "split"), "--resume"])
    straight, split = load_file(tmp_path / "straight/model.safetensors"), load_file(tmp_path / "split/model.safetensors")
    assert straight.keys() == split.keys() and all((straight[k] == split[k]).all() for k in straight)
    assert not (tmp_path / "split" / train_reasoner.CHECKPOINT).exists()


def test_init_from_starts_at_a_finished_models_weights(tmp_path):
    train_reasoner.main(TINY + ["--out", str(tmp_path / "first")])
    # lr 0: the continued run never moves, so its weights are exactly the ones it started from
    train_reasoner.main(TINY + ["--out", str(tmp_path / "more"), "--init-from", str(tmp_path / "first"), "--lr", "0"])
    first, more = load_file(tmp_path / "first/model.safetensors"), load_file(tmp_path / "more/model.safetensors")
    assert first.keys() == more.keys() and all((first[k] == more[k]).all() for k in first)
    with pytest.raises(SystemExit, match="its model differs from this recipe's"):
        train_reasoner.main(TINY + ["--hidden", "64", "--out", str(tmp_path / "wide"), "--init-from",
                                    str(tmp_path / "first")])


@pytest.mark.parametrize("family", ["long_chain", "walk"])
def test_a_lookup_drill_recalls_every_line_of_its_question_in_shuffled_rounds(family):
    import random

    from adaptive_think.tasks.families import make_family_questions

    tok = train_reasoner.build_tokenizer(2)
    q = make_family_questions(1, 11, families=[family], levels=[4])[0]
    ids, labels = train_reasoner.drill_example(tok, q, random.Random(0))
    text = tok.decode(ids)
    assert text.startswith(q.question) and tok.unk_token_id not in ids
    # Pieces encoded one by one give the ids of the whole text: training sees what inference would.
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    lines = text[len(q.question) + 1 :].split("\n")
    if family == "long_chain":
        truth = set(q.question.split("\n")[1:])
        recalled = lines
    else:
        truth = {f"{d} to {a}" for d, a in enumerate(train_reasoner.walk.parse_question(q.question)[0])}
        recalled = [line.split(": ", 1)[1] for line in lines]
    # Every line is right, every round holds each of the question's lines once, and the order is shuffled.
    rounds = [recalled[i : i + len(truth)] for i in range(0, len(recalled), len(truth))]
    assert len(rounds) >= 3 and all(set(r) == truth and len(r) == len(truth) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1
    # Only the looked-up value is trained: one token a line.
    trained = [tok.decode([i]) for i, lab in zip(ids, labels) if lab != train_reasoner.IGNORE]
    assert trained == [" " + line.rsplit(" ", 1)[1] if family == "walk" else line[1:] for line in recalled]


def test_drills_are_drawn_only_when_on_so_older_runs_replay_their_batches():
    tok = train_reasoner.build_tokenizer(2)
    off = train_reasoner.parse_args(TINY + ["--out", "unused"])
    on = train_reasoner.parse_args(TINY + ["--out", "unused", "--p-drill", "1"])
    assert "p_drill" not in train_reasoner._settings(off) and train_reasoner._settings(on)["p_drill"] == 1
    batch = train_reasoner.make_batch(tok, on, 2)
    assert not (batch["labels"][:, :20] != train_reasoner.IGNORE).any()  # a drill starts with its untrained question
    assert "<think>" not in tok.decode(batch["input_ids"][0])


def test_level_weights_shift_one_familys_levels_and_leave_unweighted_runs_unchanged():
    import random
    from collections import Counter

    off = train_reasoner.parse_args(TINY + ["--out", "unused"])
    on = train_reasoner.parse_args(TINY + ["--out", "unused", "--level-weight", "long_chain:4=5"])
    assert on.level_weights == {"long_chain": [1.0, 1.0, 1.0, 5.0, 1.0, 1.0]}
    assert "level_weights" not in train_reasoner._settings(off)
    assert train_reasoner._settings(on)["level_weights"] == on.level_weights
    rng = random.Random(0)
    weighted = Counter(train_reasoner.draw_level(rng, "long_chain", on) for _ in range(2000))
    assert 0.40 < weighted[4] / 2000 < 0.60  # 5 / 10 of the weight
    other = Counter(train_reasoner.draw_level(rng, "walk", on) for _ in range(2000))
    assert other[4] / 2000 < 0.25  # walk keeps its uniform draw
    # With no weights the draw is the old rng.randint, so earlier runs' batches replay exactly.
    a, b = random.Random(7), random.Random(7)
    assert [train_reasoner.draw_level(a, "long_chain", off) for _ in range(50)] == [b.randint(1, 6) for _ in range(50)]


@pytest.mark.parametrize("spec", ["long_chain:4", "long_chain=4", "chain:4=2", "long_chain:7=2", "walk:2=0"])
def test_a_malformed_level_weight_is_refused_with_its_reason(spec, capsys):
    with pytest.raises(SystemExit):
        train_reasoner.parse_args(TINY + ["--out", "unused", "--level-weight", spec])
    assert "--level-weight" in capsys.readouterr().err


def test_in_order_stages_list_tables_by_label_and_record_it_in_their_settings():
    import re

    tok = train_reasoner.build_tokenizer(2)
    drawn = train_reasoner.parse_args(TINY + ["--out", "unused", "--p-drill", "0.5"])
    listed = train_reasoner.parse_args(TINY + ["--out", "unused", "--p-drill", "0.5", "--in-order"])
    assert "in_order" not in train_reasoner._settings(drawn) and train_reasoner._settings(listed)["in_order"]

    def listings(args):  # the labels of every long_chain question in 8 batches, as listed
        texts = [tok.decode(row) for step in range(8) for row in train_reasoner.make_batch(tok, args, step)["input_ids"]]
        return ["".join(re.findall(r"\n([a-z]) [-+*] \d", t.split("the last digit:")[1].split("<|im_end|>")[0]))
                for t in texts if t.startswith("<|im_start|>user") and "the last digit:" in t]  # not drills

    listed_orders, drawn_orders = listings(listed), listings(drawn)
    assert listed_orders and all(o == "".join(sorted(o)) for o in listed_orders)
    assert drawn_orders and not any(o == "".join(sorted(o)) for o in drawn_orders)
    with pytest.raises(SystemExit):
        train_reasoner.parse_args(["--recipe", "v1", "--out", "unused", "--in-order"])
