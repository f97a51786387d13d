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
