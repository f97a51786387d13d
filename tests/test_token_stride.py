"""`collect --token-states --token-stride S` on the bundled reasoner: the kept rows are the stride-1 collection's
states that have read S, 2S, ... thought tokens, bit for bit; the token-state rows (and bytes) are 1/S of them;
a head with memory trains on the kept states merged with the checkpoint states, and its maximum at a checkpoint
runs over exactly those; bad flags fail with what to do."""

import dataclasses

import pytest
import torch

from adaptive_think.controller.state import NO_MEMORY
from adaptive_think.cli import main
from adaptive_think.training.collect import CollectConfig, collect
from adaptive_think.training.health import KIND_PROMPT, KIND_THOUGHT
from adaptive_think.training.items import bundled_items, load_checker
from adaptive_think.training.memory import MemoryHead, ThoughtSet, checkpoint_scores
from adaptive_think.training.shards import load_collection

CFG = CollectConfig(every=3, batch_size=12, max_new_tokens=160, shard_questions=6, token_states=True)
STRIDES = (1, 4)  # the kept tokens (4, 8, ...) interleave with the checkpoints (3, 6, ...)
LAYER = 3  # one of the bundled reasoner's candidate layers


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    """stride -> (tensors, records, settings, collect's summary) of the same 12 questions."""
    from adaptive_think.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("bundled", "cpu", "float32")
    items = bundled_items(12, seed=7)
    root = tmp_path_factory.mktemp("stride")
    out = {}
    for s in STRIDES:
        summary = collect(model, tok, items, root / f"s{s}", load_checker(None),
                          dataclasses.replace(CFG, token_stride=s), progress=False, log=lambda _: None)
        out[s] = (*load_collection(root / f"s{s}"), summary)
    return out


def per_question(hidden, records, layer=LAYER) -> dict:
    """qid -> that question's thought-token rows [n, D] of `layer`."""
    t = hidden[f"thought_layer{layer}"]
    return {r["qid"]: t[r["thought_start"]: r["thought_start"] + r["thought_states"]] for r in records
            if r["kind"] == KIND_PROMPT and "thought_states" in r}


def test_stride_keeps_the_states_that_read_s_2s_tokens_of_the_stride_1_collection(collections):
    full, records1, settings1, _ = collections[1]
    assert settings1["token_stride"] == 1 and not any("thought_stride" in r for r in records1)
    every = per_question(full, records1)
    for s in STRIDES[1:]:
        hidden, records, settings, _ = collections[s]
        assert settings["token_stride"] == s
        # records differ only in the prompt records' count of kept rows and their stride
        for a, b in zip(records1, records):
            if a["kind"] == KIND_PROMPT:
                assert b["thought_states"] == a["thought_states"] // s and b["thought_stride"] == s
                a = dict(a, thought_states=b["thought_states"], thought_stride=s, thought_start=b["thought_start"])
            assert a == b
        for layer in (LAYER, 1):
            kept = per_question(hidden, records, layer)
            ref = per_question(full, records1, layer)
            for q, rows in kept.items():  # row k has read (k + 1) * s thought tokens
                assert torch.equal(rows, ref[q][s - 1 :: s])
        for k in hidden:  # the checkpoint rows are the same
            if k.startswith("layer"):
                assert torch.equal(hidden[k], full[k])
        assert len(every) == len(per_question(hidden, records)) == 12


def test_token_state_rows_and_bytes_scale_with_one_over_the_stride(collections):
    full, records1, _, summary1 = collections[1]
    lengths = [r["thought_states"] for r in records1 if r["kind"] == KIND_PROMPT]
    token_bytes = {s: sum(v.numel() * 2 for k, v in collections[s][0].items() if k.startswith("thought_layer"))
                   for s in STRIDES}
    for s in STRIDES:
        hidden, _, _, summary = collections[s]
        rows = hidden[f"thought_layer{LAYER}"].shape[0]
        assert rows == sum(n // s for n in lengths)
        assert rows * s <= sum(lengths) < (rows + len(lengths)) * s  # 1/S of the tokens, up to one stride each
        assert token_bytes[s] == rows * token_bytes[1] // sum(lengths)
    # what collect reports on disk shrinks by what the thinned token states save
    saved = (token_bytes[1] - token_bytes[4]) / 12
    assert summary1["cost"]["bytes_per_question"] - collections[4][3]["cost"]["bytes_per_question"] > 0.99 * saved


def test_memory_sequence_of_a_strided_thought_is_its_kept_and_checkpoint_states_in_order(collections):
    full, records1, _, _ = collections[1]
    one = ThoughtSet.from_collection(full, records1, LAYER)
    every = per_question(full, records1)
    for i in (i for q in one.rows.values() for i in q):  # stride 1: every token, as before
        assert one.at[i] == records1[i]["pos"] - 1
    assert all(torch.equal(one.states[q], every[q[1]]) for q in one.states)
    for s in STRIDES[1:]:
        hidden, records, _, _ = collections[s]
        data = ThoughtSet.from_collection(hidden, records, LAYER)
        assert data.states.keys() == one.states.keys() and len(data.states) >= 10  # closed thoughts only
        for q, states in data.states.items():
            n = every[q[1]].shape[0]
            checkpoints = [records[i]["pos"] for i in data.rows[q]]
            positions = sorted(set(range(s, n + 1, s)) | set(checkpoints))
            assert positions[-1] == n and states.shape[0] == len(positions) < n
            assert torch.equal(states, every[q[1]][[p - 1 for p in positions]])
            for i in data.rows[q]:
                assert positions[data.at[i]] == records[i]["pos"]


def test_memory_head_on_a_strided_collection_takes_its_maximum_over_the_kept_states(collections):
    full, records1, _, _ = collections[1]
    every = per_question(full, records1)
    torch.manual_seed(0)
    d = full[f"layer{LAYER}"].shape[1]
    head = MemoryHead(d, 3, 8)
    with torch.no_grad():
        head.fc1.weight.mul_(5.0)  # the maxima move the scores
    mean, std = torch.zeros(d), torch.ones(d)
    s = 4
    hidden, records, _, _ = collections[s]
    data = ThoughtSet.from_collection(hidden, records, LAYER)
    scores = checkpoint_scores(head, data, records, mean, std)
    checked = differs = 0
    with torch.no_grad():
        for q in data.states:
            x = every[q[1]].float()  # [n, D] every token's state, from the stride-1 collection
            feats = head.features(x)  # [n, K]
            for i in data.rows[q]:
                p = records[i]["pos"]
                seen = [t for t in range(1, p + 1) if t % s == 0 or t in
                        {records[j]["pos"] for j in data.rows[q]}]  # kept tokens and checkpoints so far
                memory = feats[[t - 1 for t in seen]].max(0).values.clamp_min(NO_MEMORY)  # memory starts at the floor
                expected = torch.sigmoid(head.fc2(torch.relu(head.fc1(torch.cat([x[p - 1], memory])))))
                assert abs(scores[i] - expected.item()) < 1e-5
                # the every-token maximum (the controller's) differs where a dropped token held a maximum
                full_memory = feats[:p].max(0).values.clamp_min(NO_MEMORY)
                differs += not torch.equal(full_memory, memory)
                checked += 1
    assert checked > 100 and differs > 0


def test_train_probe_fits_a_memory_head_on_a_strided_collection(collections, tmp_path):
    from adaptive_think.probe import Probe
    from adaptive_think.training.scoring import collection_scores
    from adaptive_think.training.train import train_probe
    from adaptive_think.training.train_config import TrainConfig

    folder = collections[4][3]["out"]
    probe = train_probe(folder, TrainConfig(memory=2, epochs=5, efforts=("high:0.2",), calib_fraction=0.3),
                        log=lambda *a: None)
    assert probe.memory_size == 2 and probe.provenance["chosen"]["ready_kind"] == "memory"
    hidden, records, _, _ = collections[4]
    ready, _ = collection_scores(probe, hidden, records)
    data = ThoughtSet.from_collection(hidden, records, probe.layer)
    for q, states in data.states.items():  # each checkpoint scored on its own row of the merged sequence
        per_state = probe.score_thought(states.float())
        for i in data.rows[q]:
            assert ready[i] == per_state[data.at[i]].item()
    assert sum(r == r for r, rec in zip(ready, records) if rec["kind"] == KIND_THOUGHT) > 100


def test_bad_token_stride_fails_with_what_to_do(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"token_stride=0: .* whole number S >= 1 \(--token-stride"):
        CollectConfig(token_states=True, token_stride=0)
    with pytest.raises(ValueError, match=r"token_stride=2 thins .* needs token_states=True \(--token-states\)"):
        CollectConfig(token_stride=2)
    assert main(["collect", "--model", "bundled", "--n", "2", "--out", str(tmp_path / "c"), "--token-stride", "4"]) == 2
    assert "needs token_states=True (--token-states)" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # refused before anything ran


def test_a_resumed_collection_keeps_its_stride(collections):
    from adaptive_think.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("bundled", "cpu", "float32")
    folder = collections[4][3]["out"]
    with pytest.raises(ValueError, match=r"other settings \(\['token_stride'\]\)"):
        collect(model, tok, bundled_items(2, seed=7), folder, load_checker(None), CFG, progress=False)


def test_counting_units_are_refused_on_a_strided_collection(collections):
    from adaptive_think.training.scoring import collection_scores
    from adaptive_think.training.train import train_probe
    from adaptive_think.training.train_config import TrainConfig

    strided, every = collections[4][3]["out"], collections[1][3]["out"]
    cfg = TrainConfig(memory=2, memory_counts=1, epochs=3, efforts=("high:0.2",), calib_fraction=0.3)
    with pytest.raises(ValueError, match="--token-stride 1"):
        train_probe(strided, cfg, log=lambda *a: None)
    probe = train_probe(every, cfg, log=lambda *a: None)  # every token kept: counts train and score
    assert probe.memory_counts == 1
    hidden, records, _, _ = collections[4]
    with pytest.raises(ValueError, match="--token-stride 1"):
        collection_scores(probe, hidden, records)
