"""Calibrating under sampling: sampled collections (seeded per batch, resumable, boundary-only checkpoints),
several collections trained into one probe, and one Learn-then-Test walk per decoding mode whose
earliest stop sets the rung."""

import json

import pytest
import torch

from adaptive_think.cli import main
from adaptive_think.training.calibrate import NEVER, calibrate
from adaptive_think.training.collect import CollectConfig, collect
from adaptive_think.training.items import Item, bundled_items, load_checker
from adaptive_think.training.shards import load_collection, load_collections
from adaptive_think.training.train_config import TrainConfig
from adaptive_think.training.train import train_probe
from pipeline_helpers import checker, interrupted_collect
from tiny import make_scripted, make_tokenizer

SAMPLED = {"do_sample": True, "temperature": 0.7, "top_p": 0.95}
CFG = dict(every=3, batch_size=4, max_new_tokens=12, max_answer_tokens=4, shard_questions=4, fail_fast=False)


@pytest.fixture(scope="module")
def setup(pipeline_setup):
    tok, model, items = pipeline_setup
    return tok, model, items[:16]


def _outputs(folder):
    _, records, _ = load_collection(folder)
    return [(r["qid"], r["pos"], r["label"], r["thought_len"], r["nothink_correct"]) for r in records]


def test_config_refuses_what_it_cannot_use():
    with pytest.raises(ValueError, match="not sampling settings"):
        CollectConfig(sampling={"do_sample": True, "temprature": 0.6})
    with pytest.raises(ValueError, match="without do_sample=True"):
        CollectConfig(sampling={"temperature": 0.6})
    with pytest.raises(ValueError, match="0 for step boundaries only"):
        CollectConfig(every=-1)
    assert CollectConfig().decoding == "greedy" and CollectConfig(sampling=SAMPLED).decoding == "sampled"


def test_sampled_collection_is_seeded_resumable_and_differs_from_greedy(setup, tmp_path, monkeypatch):
    tok, model, items = setup
    cfg = CollectConfig(sampling=SAMPLED, sampling_seed=5, **CFG)
    collect(model, tok, items, tmp_path / "a", checker, cfg, progress=False)
    # an interrupted run, resumed, draws exactly what the uninterrupted one drew
    interrupted_collect(monkeypatch, model, tok, items, tmp_path / "b", checker, cfg, progress=False)
    torch.manual_seed(123)  # the global generator's state before the run must not matter
    collect(model, tok, items, tmp_path / "b", checker, cfg, progress=False)
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")
    # another seed samples other thoughts; greedy is another collection again
    collect(model, tok, items, tmp_path / "c", checker, CollectConfig(sampling=SAMPLED, sampling_seed=6, **CFG),
            progress=False)
    collect(model, tok, items, tmp_path / "g", checker, CollectConfig(**CFG), progress=False)
    assert _outputs(tmp_path / "a") != _outputs(tmp_path / "c")
    assert _outputs(tmp_path / "a") != _outputs(tmp_path / "g")
    # resuming with other decoding settings is refused, naming them
    with pytest.raises(ValueError, match=r"other settings \(\['sampling'\]\)"):
        collect(model, tok, items, tmp_path / "g", checker, cfg.__class__(sampling=SAMPLED, **CFG), progress=False)


def test_every_zero_keeps_step_boundaries_and_the_last_token_only(tmp_path):
    tok = make_tokenizer()
    model = make_scripted("works", tok, think_words=14)  # "wait check again ok . \n ..." then the answer
    questions = [Item(f"q{i}", f"what is {i}", str(i)) for i in range(4)]
    cfg = dict(CFG, max_new_tokens=30, max_answer_tokens=8)
    for every, folder in ((0, "b"), (1, "all")):
        collect(model, tok, questions, tmp_path / folder, load_checker(None), CollectConfig(**dict(cfg, every=every)),
                progress=False)
    every_token = [r for r in load_collection(tmp_path / "all")[1] if r["kind"] == 1]
    kept = [r for r in load_collection(tmp_path / "b")[1] if r["kind"] == 1]
    want = [r for r in every_token if r["boundary"] or r["pos"] == r["thought_len"]]
    assert len(want) < len(every_token) and kept == want


def test_old_collections_resume_as_greedy(setup, tmp_path):
    tok, model, items = setup
    collect(model, tok, items[:4], tmp_path, checker, CollectConfig(**CFG), progress=False)
    index = json.loads((tmp_path / "index-r0.json").read_text())
    for k in ("sampling", "sampling_seed"):  # as written before these settings existed
        del index["settings"][k]
    (tmp_path / "index-r0.json").write_text(json.dumps(index))
    assert collect(model, tok, items[:8], tmp_path, checker, CollectConfig(**CFG), progress=False)["questions"] == 8
    _, _, settings = load_collections([tmp_path])
    assert settings["collections"][0]["decoding"] == "greedy"


def test_collections_merge_tag_their_decoding_and_refuse_mismatches(setup, tmp_path):
    tok, model, items = setup
    collect(model, tok, items, tmp_path / "g", checker, CollectConfig(**CFG), progress=False)
    collect(model, tok, items, tmp_path / "s", checker, CollectConfig(sampling=SAMPLED, **CFG), progress=False)
    hidden, records, settings = load_collections([tmp_path / "g", tmp_path / "s"])
    assert [c["decoding"] for c in settings["collections"]] == ["greedy", "sampled"]
    assert {r["decoding"] for r in records} == {"greedy", "sampled"}
    assert all(v.shape[0] == len(records) for v in hidden.values())
    # the same questions drawn twice under one decoding would count twice in the calibration
    with pytest.raises(ValueError, match="give each collection its own question seed"):
        load_collections([tmp_path / "g", tmp_path / "g"])
    collect(model, tok, items[:4], tmp_path / "l", checker, CollectConfig(**{**CFG, "layers": [0, 2]}), progress=False)
    with pytest.raises(ValueError, match=r"differs from .* in \['layers'\]"):
        load_collections([tmp_path / "g", tmp_path / "l"])
    # train-probe takes both, and every rung reports each decoding's calibration
    probe = train_probe([tmp_path / "g", tmp_path / "s"], TrainConfig(epochs=20, width=4, efforts=("x:0.4:0.3",),
                                                                     calib_fraction=0.5), log=lambda *_: None)
    cal = probe.ladder[0].calibration
    assert cal["decodings"] == ["greedy", "sampled"] and set(cal["by_decoding"]) == {"greedy", "sampled"}
    assert [c["decoding"] for c in probe.provenance["collections"]] == ["greedy", "sampled"]


def _mode_records(decoding, questions):
    """Records of `questions` [(stop position, score, right?)] under one decoding; never skipped."""
    records, ready = [], []
    for q, (pos, score, ok) in enumerate(questions):
        base = dict(qid=f"q{q}", decoding=decoding, full_correct=True, nothink_correct=False, thought_len=50)
        records.append(dict(base, kind=0, pos=0, label=False, boundary=False))
        ready.append(0.0)
        records.append(dict(base, kind=1, pos=pos, label=ok, boundary=True))
        ready.append(score)
    return records, ready


def test_each_decoding_mode_gets_its_own_test_and_thresholds():
    # greedy: 300 questions, every stop at 10 right, scored 0.8. sampled: the same questions, but 30 of them
    # stop wrong at 0.85 (sampled answers after a forced stop go astray)
    greedy, g_ready = _mode_records("greedy", [(10, 0.8, True)] * 300)
    sampled, s_ready = _mode_records("sampled", [(10, 0.85, False)] * 30 + [(10, 0.8, True)] * 270)
    alone = calibrate(greedy, g_ready, [float("nan")] * len(greedy), [True] * len(greedy), 0.02, 0.1)
    assert alone["ready_threshold"] <= 0.8 and alone["decodings"] == ["greedy"]  # nothing lost: it walks past 0.8
    records, ready = greedy + sampled, g_ready + s_ready
    res = calibrate(records, ready, [float("nan")] * len(records), [True] * len(records), 0.02, 0.1)
    g, s = res["by_decoding"]["greedy"], res["by_decoding"]["sampled"]
    # the greedy pair is what greedy alone gets; the sampled test stops before the wrong stops at 0.85
    assert (g["ready_threshold"], g["skip_threshold"]) == (alone["ready_threshold"], alone["skip_threshold"])
    assert 0.85 < s["ready_threshold"] < NEVER and s["achieved"]["accuracy_lost"] == 0.0
    # the same question id under two decodings is two questions, each counted in its own mode
    assert g["n_questions"] == s["n_questions"] == 300
    assert res["ready_threshold"] == g["ready_threshold"] and res["achieved"] == g["achieved"]


def test_bundled_levels_and_their_ids(capsys, tmp_path):
    some = bundled_items(12, 3, levels=[5, 2])
    assert {it.level for it in some} == {2, 5} and all(it.id.startswith("s3L25-") for it in some)
    assert bundled_items(6, 3)[0].id == "s3-0"
    assert main(["collect", "--model", "bundled", "--questions", "q.jsonl", "--levels", "2", "--out", str(tmp_path)]) != 0
    assert "--levels picks bundled questions" in capsys.readouterr().err


def test_bundled_families_their_categories_and_ids(capsys, tmp_path):
    mixed = bundled_items(12, 3, levels=[4], families=["walk", "long_chain", "walk"])
    assert sorted(it.category for it in mixed) == ["long_chain"] * 6 + ["walk"] * 6
    assert {it.level for it in mixed} == {4} and all(it.id.startswith("s3L4Fwalk+long_chain-") for it in mixed)
    # a family-draw's ids never collide with the default draw's, whatever questions it holds
    assert bundled_items(1, 3, families=["last_digit"])[0].id == "s3Flast_digit-0"
    with pytest.raises(ValueError, match="unknown task family code; --families takes last_digit, walk, long_chain"):
        bundled_items(3, 3, families=["code"])
    assert main(["collect", "--model", "bundled", "--questions", "q.jsonl", "--families", "walk",
                 "--out", str(tmp_path)]) != 0
    assert "--families picks bundled questions" in capsys.readouterr().err
