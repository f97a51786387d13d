"""The probe pipeline on a tiny model: collect (shards, resume), train (layer sweep), calibrate, the
probe file (round trip, mismatched model, corrupt files), JSONL questions, the probe policy."""

import dataclasses
import json
from collections import Counter, defaultdict

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.probe import Probe
from adaptive_think.training.calibrate import calibrate
from adaptive_think.training.splits import assign_parts, question_identity
from adaptive_think.training.collect import CollectConfig, collect
from adaptive_think.training.items import Item, bundled_items, load_checker, load_jsonl, question_hash
from adaptive_think.training.metrics import auroc, binom_cdf
from adaptive_think.training.shards import load_collection, load_collections
from adaptive_think.training.train_config import TrainConfig
from adaptive_think.training.train import fit_head, train_probe
from adaptive_think.training.splits import split_questions
from pipeline_helpers import CFG, checker, interrupted_collect
from tiny import make_model


def test_collect_resumes_after_interruption(pipeline_setup, tmp_path, monkeypatch):
    tok, model, items = pipeline_setup
    interrupted_collect(monkeypatch, model, tok, items, tmp_path, checker, CFG, progress=False)
    index = json.loads((tmp_path / "index-r0.json").read_text())
    assert len(index["done"]) == 12 and len(index["shards"]) == 2
    summary = collect(model, tok, items, tmp_path, checker, CFG, progress=False)
    assert summary["questions"] == 24
    hidden, records, settings = load_collection(tmp_path)
    prompts = [r["qid"] for r in records if r["kind"] == 0]
    assert sorted(prompts) == sorted(it.id for it in items)  # no duplicates, no losses
    assert all(v.shape[0] == len(records) for v in hidden.values())
    assert settings["layers"] == [1, 2]
    # a resumed run with other settings is refused rather than mixed in
    with pytest.raises(ValueError, match="other settings"):
        collect(model, tok, items, tmp_path, checker, CollectConfig(every=5, fail_fast=False), progress=False)


def test_collected_hidden_state_matches_the_online_hook(pipeline_setup, tmp_path):
    tok, model, items = pipeline_setup
    collect(model, tok, items[:2], tmp_path, checker, CFG, progress=False)
    hidden, records, settings = load_collection(tmp_path)
    # the prompt record's layer-1 state equals a plain forward's last position there (entry 0 = embeddings)
    ids = tok(tok.apply_chat_template([{"role": "user", "content": items[0].question}], add_generation_prompt=True,
                                      tokenize=False), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ref = model(**ids, output_hidden_states=True).hidden_states[2][0, -1]
    row = next(i for i, r in enumerate(records) if r["qid"] == items[0].id and r["kind"] == 0)
    torch.testing.assert_close(hidden["layer1"][row], ref.half().float(), rtol=0, atol=0)


def test_train_calibrate_save_and_use(pipeline_setup, tmp_path):
    tok, model, items = pipeline_setup
    collect(model, tok, items, tmp_path / "data", checker, CFG, progress=False)
    cfg = TrainConfig(seed=3, epochs=40, width=8, epsilon=0.3, delta=0.2)
    probe = train_probe(tmp_path / "data", cfg, log=lambda *_: None)
    again = train_probe(tmp_path / "data", cfg, log=lambda *_: None)
    for k in probe.weights:  # deterministic from the seed
        torch.testing.assert_close(probe.weights[k], again.weights[k], rtol=0, atol=0)
    sweep = probe.provenance["layer_sweep"]
    assert {s["layer"] for s in sweep} == {1, 2} and {s["kind"] for s in sweep} == {"linear", "mlp"}
    assert probe.calibration["epsilon"] == 0.3 and "achieved" in probe.calibration
    probe.save_pretrained(tmp_path / "probe")
    loaded = Probe.from_pretrained(tmp_path / "probe")
    h = torch.randn(5, model.config.hidden_size)
    for a, b in zip(probe.score(h), loaded.score(h)):
        torch.testing.assert_close(a, b)
    thinker = AdaptiveThinker(model, tok, probe=tmp_path / "probe")
    batch = tok([tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                         tokenize=False)], return_tensors="pt", add_special_tokens=False)
    thinker.generate(**batch, max_new_tokens=10, think=ThinkConfig(policy="probe", threshold=0.0,
                                                                   stop_at_boundary=False, allow_skip=False))
    assert thinker.last_reports[0].ended_by == "probe"


def test_split_keeps_every_copy_of_a_question_in_one_part():
    """A question is its text, not its id: drawn under two seeds, or asked again under another id, every copy lands
    in one part; a calibration-only copy of a training or validation question is dropped, never calibrated on."""
    first, second = bundled_items(120, seed=1), bundled_items(120, seed=2)
    again = [Item(f"line{i + 1}", f"  {it.question} ", it.answer) for i, it in enumerate(first[:40])]  # ids of a JSONL file
    assert len({it.question for it in second} & {it.question for it in first}) > 0  # the two draws share questions
    sources = [first, second + again, first[60:90] + bundled_items(20, seed=3)]  # the last is calibration-only
    records = [dict(qid=it.id, qhash=question_hash(it.question), source=s) for s, items in enumerate(sources)
               for it in items]
    split = split_questions([question_identity(r) for r in records if r["source"] < 2], seed=1, val=0.2, calib=0.3)
    part = assign_parts(records, 2, split)
    parts_of = defaultdict(set)
    for r, p in zip(records, part):
        if r["source"] < 2:
            parts_of[r["qhash"]].add(p)
    assert all(len(ps) == 1 for ps in parts_of.values())
    trained = {h for h, ps in parts_of.items() if ps & {"train", "val"}}
    for r, p in zip(records, part):
        if r["source"] == 2:
            assert p == ("dropped" if r["qhash"] in trained else "calib"), r["qid"]
    # the fractions are of distinct questions, whatever the number of copies
    sizes = Counter(next(iter(ps)) for ps in parts_of.values())
    n = len(parts_of)
    assert sizes == {"val": round(0.2 * n), "calib": round(0.3 * n), "train": n - round(0.2 * n) - round(0.3 * n)}
    assert split == split_questions([question_identity(r) for r in reversed(records) if r["source"] < 2], 1, 0.2, 0.3)


@pytest.mark.parametrize("neg_weight", [1.0, 4.0])
def test_negative_weight_moves_the_optimum(neg_weight):
    # features carry no information, half the labels are positive: weighted BCE's optimum is p = 1 / (1 + w)
    x = torch.zeros(400, 3)
    y = torch.arange(400) % 2 == 0
    cfg = TrainConfig(epochs=1500, lr=1e-2, weight_decay=0.0)
    head, _ = fit_head(x, y, x[:100], y[:100], "linear", cfg, neg_weight)
    with torch.no_grad():
        p = torch.sigmoid(head(x[:1])).item()
    assert p == pytest.approx(1 / (1 + neg_weight), abs=0.01)


def test_negative_weight_must_be_positive():
    with pytest.raises(ValueError, match="neg_weight"):
        TrainConfig(neg_weight=0.0).rungs()


def test_calibration_guarantee_logic():
    # 400 questions, full thinking right; the probe's score is high exactly where stopping is right
    records = []
    for q in range(400):
        records.append(dict(qid=q, kind=0, pos=0, label=False, boundary=False, full_correct=True,
                            nothink_correct=False, thought_len=50))
        for pos, ok in ((10, q % 4 == 0), (30, True)):
            records.append(dict(qid=q, kind=1, pos=pos, label=ok, boundary=True, full_correct=True,
                                nothink_correct=False, thought_len=50))
    ready = [0.0 if r["kind"] == 0 else (0.9 if r["label"] else 0.4) for r in records]
    skip = [0.1 if r["kind"] == 0 else 0.0 for r in records]
    res = calibrate(records, ready, skip, [True] * len(records), epsilon=0.05, delta=0.1)
    assert 0.4 < res["ready_threshold"] <= 0.9  # stops only where right
    assert res["skip_threshold"] > 0.1  # never skips: skipping loses every question
    assert res["achieved"]["accuracy_lost"] == 0.0
    assert res["achieved"]["think_tokens_saved"] > 0.4


def test_metrics():
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])) == 1.0
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([0, 1])) == 0.5
    assert abs(binom_cdf(0, 100, 0.01) - 0.99**100) < 1e-12
    assert abs(binom_cdf(3, 10, 0.5) - 176 / 1024) < 1e-12


def test_probe_file_errors(pipeline_setup, tmp_path):
    tok, model, _ = pipeline_setup
    probe = Probe.random_for(model, width=4)
    probe.save_pretrained(tmp_path / "p")
    other = make_model("llama", len(tok))
    assert other.config.hidden_size == model.config.hidden_size  # same hidden size, other architecture
    with pytest.raises(ValueError, match="architecture"):
        Probe.from_pretrained(tmp_path / "p").check_model(other)
    with pytest.raises(ValueError, match="hidden_size"):
        Probe.random_for(make_model("qwen3", len(tok))).check_model(
            type(model)(type(model.config)(**{**model.config.to_dict(), "hidden_size": 64, "head_dim": 16})))
    (tmp_path / "p" / "probe.safetensors").write_bytes((tmp_path / "p" / "probe.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        Probe.from_pretrained(tmp_path / "p")
    probe.save_pretrained(tmp_path / "q")
    (tmp_path / "q" / "probe.json").write_text('{"format_version": 1, "layer": ')
    with pytest.raises(ValueError, match="corrupt or truncated"):
        Probe.from_pretrained(tmp_path / "q")
    with pytest.raises(FileNotFoundError, match="probe.json"):
        Probe.from_pretrained(tmp_path / "nothing")


def test_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"question": "2+2?", "answer": "4"}\n\n{"question": "3+3?"}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:3: .*\"answer\""):
        load_jsonl(p)
    p.write_text('{"question": "2+2?", "answer": 4}\n{oops}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:2: not valid JSON"):
        load_jsonl(p)
    p.write_text('{"question": "2+2?", "answer": 4, "id": "a"}\n{"question": "1", "answer": 1, "id": "a"}\n')
    with pytest.raises(ValueError, match="duplicate id"):
        load_jsonl(p)
    p.write_text('{"question": "2+2?", "answer": 4}\n')
    assert load_jsonl(p)[0].answer == "4"
    with pytest.raises(ValueError, match="module:function|package.module:function"):
        load_checker("nocolon")
    assert load_checker("json:dumps") is json.dumps


def test_ranks_split_questions_and_merge(pipeline_setup, tmp_path):
    tok, model, items = pipeline_setup
    for rank in (0, 1):
        collect(model, tok, items[:8], tmp_path, checker, CFG, rank=rank, world=2, progress=False)
    _, records, _ = load_collection(tmp_path)
    prompts = sorted(r["qid"] for r in records if r["kind"] == 0)
    assert prompts == sorted(it.id for it in items[:8])


def test_token_states_are_the_checkpoint_states_of_every_thought_token(pipeline_setup, tmp_path):
    tok, model, items = pipeline_setup
    cfg = dataclasses.replace(CFG, token_states=True)
    a, b = tmp_path / "a", tmp_path / "b"
    collect(model, tok, items[:8], a, checker, cfg, progress=False)  # two shards each
    collect(model, tok, items[8:16], b, checker, cfg, progress=False)
    hidden, records, _ = load_collections([a, b])
    assert hidden["thought_layer1"].shape[0] == sum(r.get("thought_states", 0) for r in records) > 0
    start = {r["qid"]: (r["thought_start"], r["thought_states"]) for r in records if r["kind"] == 0}
    checked = 0
    for i, r in enumerate(records):
        if r["kind"] != 1:
            continue
        first, n = start[r["qid"]]
        assert r["pos"] <= n  # every checkpoint's token has its state kept
        for layer in (1, 2):  # the checkpoint row is the thought row of the token it has just read
            assert torch.equal(hidden[f"thought_layer{layer}"][first + r["pos"] - 1].float(), hidden[f"layer{layer}"][i])
        checked += 1
    assert checked > 20
    with pytest.raises(ValueError, match="token_states"):  # a resumed run must keep the setting
        collect(model, tok, items[:10], a, checker, CFG, progress=False)
