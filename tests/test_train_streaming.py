"""train-probe streams hidden states from the shards within a memory budget: the budget bounds what is held
and changes nothing in the probe; chunked gradients give the full-batch heads up to fp32 summation order; stored
rows read back exactly, across shards, within the budget."""

import pytest
import torch

from adaptive_think.training.budget import MemoryBudget
from adaptive_think.training.heads import fit_head
from adaptive_think.training.memory import ThoughtSet, fit_memory_head, memory_batches
from adaptive_think.training.rows import Rows, column_stats, working_bytes
from adaptive_think.training.shards import THOUGHT_PREFIX, load_collection, open_collection, write_shard
from adaptive_think.training.train import train_probe
from adaptive_think.training.train_config import TrainConfig


@pytest.fixture(scope="module")
def token_collection(tmp_path_factory):
    """32 bundled questions collected with every thought token's state, in shards of 8 questions."""
    from adaptive_think.loading import load_model_and_tokenizer
    from adaptive_think.training.collect import CollectConfig, collect
    from adaptive_think.training.items import bundled_items, load_checker

    folder = tmp_path_factory.mktemp("tok") / "c"
    model, tok = load_model_and_tokenizer("bundled", device="cpu")
    collect(model, tok, bundled_items(32, seed=3), folder, load_checker(None),
            CollectConfig(every=4, batch_size=16, shard_questions=8, token_states=True), progress=False)
    return folder


# small chunks, so that every sum runs over many of them
CFG = TrainConfig(memory=2, epochs=6, width=8, efforts=("high:0.2", "low:0.4"), calib_fraction=0.3, chunk_rows=64)


def train(folder, cfg=CFG, budget=None):
    return train_probe(folder, cfg, log=lambda *a: None, budget=budget)


@pytest.fixture(scope="module")
def unlimited(token_collection):
    """The probe of CFG trained without a memory limit."""
    return train(token_collection)


def assert_same_probe(a, b, exact: bool, atol: float = 0.0):
    assert a.layer == b.layer
    for k in ("ready_kind", "skip_kind"):
        assert a.provenance["chosen"][k] == b.provenance["chosen"][k]
    assert [(r.name, r.ready_threshold, r.skip_threshold, r.by_decoding) for r in a.ladder] == \
           [(r.name, r.ready_threshold, r.skip_threshold, r.by_decoding) for r in b.ladder]
    assert a.weights.keys() == b.weights.keys()
    for k in a.weights:
        if exact:
            assert torch.equal(a.weights[k], b.weights[k]), k
        else:
            torch.testing.assert_close(a.weights[k], b.weights[k], rtol=0, atol=atol)


@pytest.mark.slow
def test_budget_bounds_what_is_held_and_changes_nothing(token_collection, unlimited):
    states, _, _ = open_collection(token_collection)
    thought_bytes = min(v.nbytes() for k, v in states.items() if k.startswith(THOUGHT_PREFIX))
    big = unlimited
    # half of one layer's thought-token states: those of the memory head are read from the shards batch by batch
    limit = thought_bytes // 2
    small = train(token_collection, budget=MemoryBudget(limit))
    assert_same_probe(big, small, exact=True)  # the same chunks in the same order: bit for bit
    assert small.provenance["hidden_state_peak_bytes"] <= limit
    # without a limit, the chosen layer's thought states were held whole (the budget sees what is held)
    assert big.provenance["hidden_state_peak_bytes"] >= thought_bytes


def max_difference(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


# Gradients summed over chunks differ from one full-batch sum in the order of fp32 additions only: a few ulps
# (weights here are ~0.5, ulp 6e-8), which 100 AdamW steps of lr 3e-3 carry along without amplifying them (seen:
# <= 1e-7). A sum that weighted the chunks wrongly moves them by 1e-2 or more.
TOL = 1e-6


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_chunked_gradients_fit_the_full_batch_head(kind):
    torch.manual_seed(0)
    x, xv = torch.randn(301, 24), torch.randn(57, 24)
    y, yv = (x[:, 0] + 0.5 * torch.randn(301)) > 0, (xv[:, 0] + 0.5 * torch.randn(57)) > 0
    chunked, s1 = fit_head(x, y, xv, yv, kind, TrainConfig(epochs=100, width=8, chunk_rows=16), 4.0)
    full, s2 = fit_head(x, y, xv, yv, kind, TrainConfig(epochs=100, width=8, chunk_rows=10**9), 4.0)
    assert max_difference(chunked, full) <= TOL and s1 == s2


def test_batches_of_thoughts_fit_the_full_batch_memory_head():
    torch.manual_seed(0)
    states, records = {}, []
    for i in range(40):  # thoughts of 5 to 17 tokens, a labelled checkpoint every other token
        n, q = 5 + (i * 7) % 13, ("greedy", f"q{i}")
        states[q] = torch.randn(n, 16)
        records.append({"qid": f"q{i}", "kind": 0, "thought_len": n, "label": False, "pos": 0})
        records += [{"qid": f"q{i}", "kind": 1, "pos": pos, "label": bool(states[q][:pos, 0].max() > 1.5)}
                    for pos in range(1, n + 1, 2)]
    data = ThoughtSet(states, records)
    assert len(memory_batches(data, sorted(states), 20)) > 10  # many batches
    part = {q: "val" if i % 4 == 0 else "train" for i, q in enumerate(states)}
    heads = [fit_memory_head(data, records, part, torch.zeros(16), torch.ones(16), 3,
                             TrainConfig(epochs=100, width=8, memory=3, chunk_rows=rows))[0] for rows in (20, 10**9)]
    assert max_difference(*heads) <= TOL


def test_stored_rows_read_across_shards_within_the_budget(tmp_path):
    torch.manual_seed(0)
    parts = [torch.randn(n, 5) for n in (3, 7, 4)]
    for i, p in enumerate(parts):
        records = [{"qid": f"q{i}-{j}", "kind": 1} for j in range(len(p))]
        write_shard(tmp_path, 0, i, {"layer1": p}, records)
    (tmp_path / "index-r0.json").write_text(
        '{"version": 1, "settings": {"layers": [1]}, "shards": ["shard-r0-00000", "shard-r0-00001", '
        '"shard-r0-00002"], "done": []}')
    whole = torch.cat(parts).half()
    budget = MemoryBudget(2 * 5 * 2)  # two fp16 rows: every read spans two rows at most
    states, _, _ = open_collection(tmp_path, budget)
    rows = torch.tensor([13, 0, 2, 5, 3, 9, 4, 10, 2])  # any order, repeats, every shard boundary
    assert torch.equal(states["layer1"][rows].read(), whole[rows])
    assert torch.equal(states["layer1"][2:11][[0, 8]].read(), whole[[2, 10]])
    assert budget.peak == 2 * 5 * 2 and budget.held == 0
    with states.resident("layer1") as held:
        assert not held  # 14 rows do not fit in two
    assert torch.equal(load_collection(tmp_path)[0]["layer1"], whole.float())
    with pytest.raises(ValueError, match="raise --max-memory"):
        open_collection(tmp_path, MemoryBudget(5))[0]["layer1"][[1]].read()
    with pytest.raises(ValueError, match="positive"):
        MemoryBudget.gigabytes(0)


def test_budget_changes_no_bit_of_a_fitted_head(tmp_path):
    torch.manual_seed(1)
    for i, n in enumerate((50, 70, 40)):  # three shards of checkpoint rows
        write_shard(tmp_path, 0, i, {"layer1": torch.randn(n, 6)}, [{"qid": f"q{i}-{j}", "kind": 1} for j in range(n)])
    (tmp_path / "index-r0.json").write_text(
        '{"version": 1, "settings": {"layers": [1]}, "shards": ["shard-r0-00000", "shard-r0-00001", '
        '"shard-r0-00002"], "done": []}')
    cfg = TrainConfig(epochs=100, width=8, chunk_rows=16)
    heads = []
    for budget in (MemoryBudget(None), MemoryBudget(working_bytes(16, 6, 8) + 6 * 2 * 3)):
        states, _, _ = open_collection(tmp_path, budget)
        h = states["layer1"]
        y = h[torch.arange(len(h))].float()[:, 0] > 0
        mean, std = column_stats(h, torch.arange(0, 120), 16, budget)
        train, val = (Rows(h, idx, mean, std, y[idx], 16, budget, 8) for idx in (torch.arange(120), torch.arange(120, 160)))
        heads.append(fit_head(train, None, val, None, "mlp", cfg, 4.0)[0])
    assert budget.peak <= budget.limit
    for p, q in zip(heads[0].parameters(), heads[1].parameters()):
        assert torch.equal(p, q)  # read in spans of three rows, or whole: the same chunks, the same bits
