"""Probes with memory (adaptive_think/training/memory.py): the file format, the controller's running maxima (and
counts) against the offline head on a whole thought, the memory through think blocks on both controller_step
implementations, and train-probe --memory end to end."""

import dataclasses

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.controller.state import NO_MEMORY, NS_FLOAT
from adaptive_think.engines.layer_hook import decoder_layers
from adaptive_think.probe import Probe
from adaptive_think.training.memory import MemoryHead, ThoughtSet, checkpoint_scores
from tiny import ScriptedReasoner, make_model, make_tokenizer

TOK = make_tokenizer()
MODEL = make_model("qwen3", len(TOK))
K = 3


def memory_probe(seed=0, counts=0) -> Probe:
    """A random probe whose ready head remembers K features (large weights, so the maxima matter), the last
    `counts` of them counting units."""
    return Probe.random_for(MODEL, layer=1, width=8, seed=seed, memory=K, memory_counts=counts)


def running_memory(probe: Probe, feats: torch.Tensor) -> torch.Tensor:
    """The memory after each of a thought's memory features [T, K], by hand: a maximum, or for a counting unit
    NO_MEMORY plus the sum of the sigmoids so far."""
    out = torch.cummax(feats, 0).values
    for j, c in enumerate(probe.weights.get("memory_sum", torch.zeros(K)).tolist()):
        if c:
            out[:, j] = NO_MEMORY + torch.cumsum(torch.sigmoid(feats[:, j]), 0)
    return out


def by_hand(probe: Probe, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From the probe file's weights alone, for a thought's states [T, D]: its memory features [T, K] and the ready
    score after each state [T] (the memory so far beside the features, one ReLU layer, a sigmoid)."""
    w = probe.weights
    x = (states.float() - w["mean"]) * w["inv_std"]  # [T, D]
    feats = x @ w["memory_w"].t() + w["memory_b"]  # [T, K]
    memory = running_memory(probe, feats)  # [T, K]
    hidden = torch.relu(torch.cat([x, memory], 1) @ w["ready_w1"].t() + w["ready_b1"])  # [T, H]
    return feats, torch.sigmoid(hidden @ w["ready_w2"] + w["ready_b2"])


def test_memory_head_is_causal_and_remembers_the_running_maximum():
    torch.manual_seed(0)
    head = MemoryHead(d=5, k=3, width=4)
    x = torch.randn(2, 7, 5)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    out = head(x, mask)
    later = x.clone()
    later[:, 4:] += 10.0  # changing tokens 4.. leaves the scores of tokens 0..3 alone
    assert torch.equal(head(later, mask)[:, :4], out[:, :4])
    memory = head.features(x[0, :4]).max(0).values
    by_hand = head.fc2(torch.relu(head.fc1(torch.cat([x[0, 3], memory])))).squeeze(-1)
    torch.testing.assert_close(out[0, 3], by_hand)


def test_counting_units_export_to_the_probe_the_controller_runs():
    """A head with counting units scores a thought as the exported probe file does: the count's scale and its
    NO_MEMORY start are folded into ready_w1 / ready_b1 exactly."""
    torch.manual_seed(1)
    head = MemoryHead(d=MODEL.config.hidden_size, k=2, width=6, counts=2)
    with torch.no_grad():
        head.features.bias[2:] += 2.0  # counts that grow by nearly 1 a token: the count matters to the head
    states = torch.randn(12, MODEL.config.hidden_size)
    want = torch.sigmoid(head(states[None], torch.ones(1, 12, dtype=torch.bool)))[0].detach()
    base = Probe.random_for(MODEL, layer=1, width=6, seed=0)
    w = dict(base.weights, mean=torch.zeros(states.shape[1]), inv_std=torch.ones(states.shape[1]), **head.export(6))
    probe = dataclasses.replace(base, weights=w)
    assert probe.memory_size == 4 and probe.memory_counts == 2
    torch.testing.assert_close(probe.score_thought(states), want)
    counts = running_memory(probe, by_hand(probe, states)[0])[:, 2:] - NO_MEMORY
    assert bool((counts[-1] > 6).all())  # the counts ran well past what a maximum of sigmoids could reach
    plain = MemoryHead(d=5, k=3, width=4)
    assert "memory_sum" not in plain.export(4)


def test_format_round_trip_and_errors(tmp_path):
    probe = memory_probe()
    probe.save_pretrained(tmp_path / "p")
    cfg = (tmp_path / "p" / "probe.json").read_text()
    assert '"format_version": 3' in cfg and '"memory_size": 3' in cfg
    loaded = Probe.from_pretrained(tmp_path / "p")
    assert loaded.memory_size == K
    states = torch.randn(6, probe.hidden_size)
    torch.testing.assert_close(loaded.score_thought(states), probe.score_thought(states))
    with pytest.raises(ValueError, match="score_thought"):
        probe.score(states)
    plain = Probe.random_for(MODEL, layer=1, width=8)
    plain.save_pretrained(tmp_path / "q")
    assert '"format_version": 2' in (tmp_path / "q" / "probe.json").read_text()  # readable by older versions
    bad = dict(probe.weights, ready_w1=probe.weights["ready_w1"][:, :-1])
    with pytest.raises(ValueError, match="ready_w1"):
        dataclasses.replace(probe, weights=bad)
    with pytest.raises(ValueError, match="memory_w"):
        dataclasses.replace(probe, weights={k: v for k, v in probe.weights.items() if k != "memory_b"})
    counting = memory_probe(counts=2)
    counting.save_pretrained(tmp_path / "c")
    cfg = (tmp_path / "c" / "probe.json").read_text()
    assert '"format_version": 6' in cfg and '"memory_counts": 2' in cfg  # older readers refuse it
    loaded = Probe.from_pretrained(tmp_path / "c")
    assert loaded.memory_counts == 2
    torch.testing.assert_close(loaded.score_thought(states), by_hand(counting, states)[1])
    assert not torch.allclose(probe.score_thought(states), loaded.score_thought(states))
    with pytest.raises(ValueError, match="memory_sum"):
        dataclasses.replace(counting, weights=dict(counting.weights, memory_sum=torch.tensor([0.0, 0.5, 1.0])))


def _states(prompt_ids: list[int], gen: list[int], layer: int) -> torch.Tensor:
    """The layer's output at every position of prompt + gen, one unpadded sequence."""
    got = {}
    hook = decoder_layers(MODEL)[layer].register_forward_hook(lambda m, a, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            MODEL(input_ids=torch.tensor([prompt_ids + gen]))
    finally:
        hook.remove()
    return got["h"][0]


@pytest.mark.parametrize("counts", [0, 2])
def test_controller_scores_a_thought_as_the_offline_head_does(counts):
    probe = memory_probe(counts=counts)
    thinker = AdaptiveThinker(MODEL, TOK, probe=probe)
    m = thinker.markers
    prompts = ["the answer is", "so wait the answer is maybe"]
    batch = TOK(prompts, return_tensors="pt", padding=True)
    lengths = [9, 5]
    words = TOK.encode("so wait check again ok x y", add_special_tokens=False)
    script = ScriptedReasoner(batch["input_ids"].shape[1], lengths, m.open_ids, m.close_ids, TOK.eos_token_id, words,
                              TOK.encode(" the answer is 7", add_special_tokens=False))
    never = ThinkConfig(policy="probe", threshold=1.0, skip_threshold=1.0, min_think_tokens=10_000, trace=True)
    out = thinker.generate(**batch, max_new_tokens=30, do_sample=False, think=never, logits_processor=[script])
    width = batch["input_ids"].shape[1]
    for row, n in enumerate(lengths):
        prompt = [t for t, a in zip(batch["input_ids"][row].tolist(), batch["attention_mask"][row].tolist()) if a]
        gen = out[row, width:].tolist()
        start = gen.index(m.open_ids[0]) + len(m.open_ids)  # the first thought token's index
        states = _states(prompt, gen, probe.layer)[len(prompt) + start : len(prompt) + start + n]
        want = by_hand(probe, states)[1]
        torch.testing.assert_close(probe.score_thought(states), want)
        scores = thinker.last_reports[row].scores
        got = torch.tensor(scores[start + 1 : start + 1 + n])  # step g + 1 reads generated token g
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        # without its memory the head scores otherwise: the test can tell
        t = probe.tensors()
        from adaptive_think.controller.step import head_scores
        assert not torch.allclose(head_scores(states, t, torch.full((n, K), NO_MEMORY))[0], want, atol=1e-3)


@pytest.mark.parametrize("counts", [0, 2])
@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.kernels)])
def test_memory_restarts_with_each_block(impl, counts):
    probe = memory_probe(counts=counts)
    thinker = AdaptiveThinker(MODEL, TOK, probe=probe, impl=impl)
    m = thinker.markers
    never = ThinkConfig(policy="probe", threshold=1.0, skip_threshold=1.0, min_think_tokens=10_000)
    ctl = thinker.controller(never, {}, with_probe=True)
    assert ctl.memory_size == K
    state = ctl.begin(torch.tensor([TOK.encode("the answer is", add_special_tokens=False)]))
    assert state.floats.shape[0] == NS_FLOAT + K and torch.all(state.memory == NO_MEMORY)
    word = TOK.encode("so", add_special_tokens=False)[0]
    g = torch.Generator().manual_seed(3)

    def feed(tokens):
        """One step per token (the step reads it with a fresh random state); returns those states [n, D]."""
        hs = torch.randn(len(tokens), MODEL.config.hidden_size, generator=g)
        for tok, h in zip(tokens, hs):
            ctl.step(torch.tensor([tok]), h[None])
        return hs

    def expected(hs):
        return running_memory(probe, by_hand(probe, hs)[0])[-1]

    feed([word])  # step 0 reads the prompt's last token: no memory
    assert torch.all(state.memory == NO_MEMORY)
    feed(list(m.open_ids))  # opening the block: still none
    assert torch.all(state.memory == NO_MEMORY)
    first = feed([word, word, word])
    torch.testing.assert_close(state.memory[:, 0], expected(first))
    feed(list(m.close_ids) + [word])  # the close marker and the answer leave the maxima alone
    torch.testing.assert_close(state.memory[:, 0], expected(first))
    feed(list(m.open_ids))  # a second block starts afresh
    assert torch.all(state.memory == NO_MEMORY)
    second = feed([word, word])
    torch.testing.assert_close(state.memory[:, 0], expected(second))


def test_train_probe_with_memory_end_to_end(tmp_path):
    from adaptive_think.loading import load_model_and_tokenizer
    from adaptive_think.training.collect import CollectConfig, collect
    from adaptive_think.training.items import bundled_items, load_checker
    from adaptive_think.training.shards import load_collections
    from adaptive_think.training.train_config import TrainConfig
    from adaptive_think.training.train import train_probe

    model, tok = load_model_and_tokenizer("bundled", device="cpu")
    items = bundled_items(48, seed=3)
    collect(model, tok, items, tmp_path / "c", load_checker(None),
            CollectConfig(every=4, batch_size=16, shard_questions=16, token_states=True), progress=False)
    collect(model, tok, items[:16], tmp_path / "plain", load_checker(None), CollectConfig(batch_size=16),
            progress=False)
    with pytest.raises(ValueError, match="--token-states"):
        train_probe(tmp_path / "plain", TrainConfig(memory=2, epochs=3, efforts=("high:0.2",)), log=lambda *a: None)
    probe = train_probe(tmp_path / "c", TrainConfig(memory=2, epochs=20, efforts=("high:0.2",), calib_fraction=0.3),
                        log=lambda *a: None)
    assert probe.memory_size == 2 and probe.provenance["chosen"]["ready_kind"] == "memory"
    probe.save_pretrained(tmp_path / "p")
    loaded = Probe.from_pretrained(tmp_path / "p")
    # the saved weights score each collected thought as the fitted head scored its checkpoints
    hidden, records, _ = load_collections([tmp_path / "c"])
    data = ThoughtSet.from_collection(hidden, records, loaded.layer)
    q = next(iter(data.states))
    per_token = loaded.score_thought(data.states[q].float())
    at_checkpoints = probe_scores(loaded, data, records)
    for i in data.rows[q]:
        assert abs(per_token[records[i]["pos"] - 1].item() - at_checkpoints[i]) < 1e-5


@pytest.mark.parametrize("layer", [1, 3])
def test_a_head_with_memory_sweeps_only_the_layers_whose_token_states_were_kept(tmp_path, layer):
    from adaptive_think.loading import load_model_and_tokenizer
    from adaptive_think.training.collect import CollectConfig, collect
    from adaptive_think.training.items import bundled_items, load_checker
    from adaptive_think.training.train_config import TrainConfig
    from adaptive_think.training.train import train_probe

    model, tok = load_model_and_tokenizer("bundled", device="cpu")
    collect(model, tok, bundled_items(32, seed=4), tmp_path / "c", load_checker(None),
            CollectConfig(every=4, batch_size=16, token_states=True, token_layers=[layer]), progress=False)
    said = []
    probe = train_probe(tmp_path / "c", TrainConfig(memory=2, epochs=5, efforts=("high:0.2",), calib_fraction=0.3),
                        log=said.append)
    # the checkpoint states of every layer are there, but only `layer` has the thought-token states memory needs
    assert probe.layer == layer and {s["layer"] for s in probe.provenance["layer_sweep"]} == {layer}
    assert any(f"layers [{layer}] only" in line for line in said)


def probe_scores(probe: Probe, data: ThoughtSet, records) -> list[float]:
    """checkpoint_scores through a MemoryHead rebuilt from the probe's weights (what train-probe calibrated on)."""
    w = probe.weights
    d, width = probe.hidden_size, probe.width
    head = MemoryHead(d, probe.memory_size, width)
    with torch.no_grad():
        head.features.weight.copy_(w["memory_w"]), head.features.bias.copy_(w["memory_b"])
        head.fc1.weight.copy_(w["ready_w1"]), head.fc1.bias.copy_(w["ready_b1"])
        head.fc2.weight.copy_(w["ready_w2"][None]), head.fc2.bias.copy_(w["ready_b2"])
    return checkpoint_scores(head, data, records, w["mean"], 1.0 / w["inv_std"])


def _synthetic_thoughts(n_questions: int, d: int = 6):
    """A ThoughtSet of random thoughts (8-15 tokens) whose every fourth token is a labelled checkpoint."""
    from adaptive_think.training.health import KIND_THOUGHT

    g = torch.Generator().manual_seed(0)
    states, records, part = {}, [], {}
    for j in range(n_questions):
        n = 8 + j % 8
        states[("greedy", f"q{j}")] = torch.randn(n, d, generator=g)
        records.append({"qid": f"q{j}", "kind": 0, "pos": 0, "label": False, "thought_len": n})
        records += [{"qid": f"q{j}", "kind": KIND_THOUGHT, "pos": p, "label": bool(torch.rand(1, generator=g) < 0.5)}
                    for p in range(4, n + 1, 4)]
        part[("greedy", f"q{j}")] = "val" if j % 5 == 0 else "train"
    return ThoughtSet(states, records), records, part


def test_memory_head_minibatches_take_one_step_per_batch_and_are_reproducible(monkeypatch):
    from adaptive_think.training.memory import fit_memory_head
    from adaptive_think.training.train_config import TrainConfig

    data, records, part = _synthetic_thoughts(30)  # 24 training thoughts
    mean, std = torch.zeros(6), torch.ones(6)
    steps = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (steps.append(1), real_step(self, *a, **k))[1])

    def fit(**kw):
        steps.clear()
        head, loss = fit_memory_head(data, records, part, mean, std, 2, TrainConfig(memory=2, width=4, epochs=5, **kw))
        return head, loss, len(steps)

    full, _, n_full = fit()
    mini, loss, n_mini = fit(memory_batch=5, memory_epochs=3, memory_lr=1e-2)
    assert n_full == 5 and n_mini == 3 * 5  # ceil(24 / 5) = 5 steps an epoch
    again, loss2, _ = fit(memory_batch=5, memory_epochs=3, memory_lr=1e-2)
    assert loss == loss2 and torch.equal(mini.features.weight, again.features.weight)
    assert not torch.equal(mini.features.weight, full.features.weight)
    counting, _, _ = fit(memory_counts=1, memory_batch=8)
    assert counting.memory_sum.tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="memory_batch"):
        TrainConfig(memory=2, memory_batch=-1).rungs()
