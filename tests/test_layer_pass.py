"""`collect --token-states --token-layers auto` on the bundled reasoner: a layer pass over the first questions
(checkpoint states only) chooses the layer train-probe's sweep would, the main collection keeps the thought-token
states of that layer alone, a re-run reads the recorded choice instead of sweeping again, and bad flags fail
before anything loads."""

import json

import pytest

from adaptive_think.cli import main
from adaptive_think.training import layer_pass
from adaptive_think.training.shards import load_collection, open_collection
from adaptive_think.training.splits import question_identity, split_questions
from adaptive_think.training.sweep import Masks, sweep_layers
from adaptive_think.training.train_config import TrainConfig

QUESTIONS, PASS = 12, 8


def collect_auto(out, *more) -> int:
    return main(["collect", "--model", "bundled", "--n", str(QUESTIONS), "--seed", "7", "--out", str(out),
                 "--device", "cpu", "--dtype", "float32", "--every", "4", "--batch-size", "12", "--max-new-tokens",
                 "160", "--token-states", "--token-layers", "auto", "--layer-pass-questions", str(PASS), *more])


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "c"
    assert collect_auto(out) == 0
    return out


def test_the_main_collection_keeps_the_token_states_of_the_layer_the_sweep_chooses(collected):
    choice = json.loads((collected / "layer-pass" / "choice.json").read_text())
    # the sweep, as train-probe runs it, on the layer-pass collection
    states, records, settings = open_collection(collected / "layer-pass")
    cfg = TrainConfig()
    split = split_questions([question_identity(r) for r in records], cfg.seed, cfg.val_fraction, cfg.calib_fraction)
    sweep, best = sweep_layers(states, Masks.of(records, [split[question_identity(r)] for r in records]),
                               settings["layers"], cfg, log=lambda _: None)
    assert len(settings["layers"]) > 1 and all(s["ready_val_auroc"] == s["ready_val_auroc"] for s in sweep)  # no NaN
    assert (choice["layer"], choice["kind"], choice["sweep"]) == (best.layer, best.kind, sweep)
    assert choice["questions"] == PASS == len({r["qid"] for r in records})
    assert settings["token_states"] is False and not any(k.startswith("thought") for k in states)

    hidden, main_records, main_settings = load_collection(collected)
    assert main_settings["token_layers"] == [choice["layer"]]
    assert [k for k in hidden if k.startswith("thought")] == [f"thought_layer{choice['layer']}"]
    assert hidden[f"thought_layer{choice['layer']}"].shape[0] == sum(r.get("thought_states", 0) for r in main_records) > 0
    assert len({r["qid"] for r in main_records}) == QUESTIONS
    assert sorted(k for k in hidden if k.startswith("layer")) == sorted(f"layer{l}" for l in settings["layers"])


def test_a_rerun_reads_the_choice_and_refuses_another_layer(collected, monkeypatch, capsys):
    def no_sweep(*a, **kw):
        raise AssertionError("the layer pass swept again")

    monkeypatch.setattr(layer_pass, "sweep_layers", no_sweep)
    path = collected / "layer-pass" / "choice.json"
    before = path.read_text()
    assert collect_auto(collected) == 0
    assert "as chosen before" in capsys.readouterr().out and path.read_text() == before

    assert collect_auto(collected, "--layer-pass-questions", str(PASS + 1)) == 2  # the last one given wins
    assert f"on {PASS} questions" in (err := capsys.readouterr().err) and f"--layer-pass-questions {PASS}" in err

    choice = json.loads(before)
    other = next(l for l in choice["candidate_layers"] if l != choice["layer"])
    path.write_text(json.dumps(dict(choice, layer=other)))
    try:
        assert collect_auto(collected) == 2
        err = capsys.readouterr().err
        assert f"token states are of layers [{choice['layer']}]" in err and f"chose layer {other}" in err
    finally:
        path.write_text(before)


@pytest.mark.parametrize("flags, says", [
    (["--token-layers", "auto"], "add --token-states"),
    (["--token-states", "--token-layers", "auto", "--layer-pass-questions", "3"], "needs at least 4"),
    (["--token-states", "--token-layers", "auto", "1"], "not both"),
    (["--token-states", "--token-layers", "one"], "give layer numbers"),
    (["--token-states", "--layer-pass-questions", "8"], "add --token-states --token-layers auto"),
])
def test_bad_flags_fail_before_the_model_loads(tmp_path, capsys, flags, says):
    assert main(["collect", "--model", "no-such-model", "--n", "12", "--out", str(tmp_path / "c"), *flags]) == 2
    assert says in capsys.readouterr().err
