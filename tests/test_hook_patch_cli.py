"""The layer hook equals output_hidden_states; patch/unpatch; the probe slot; the `generate` CLI."""

import json

import pytest
import torch

import adaptive_think
from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.cli import main
from adaptive_think.engines.hf import LayerCapture
from tiny import make_model, make_tokenizer

TOK = make_tokenizer()


@pytest.mark.parametrize("arch,layer", [("qwen3", 0), ("llama", 1), ("gemma", 1)])
def test_hook_equals_output_hidden_states_at_every_step(arch, layer):
    model = make_model(arch, len(TOK))
    batch = TOK(["the answer is", "x y"], return_tensors="pt", padding=True)
    seen = []

    class Spy:
        def __init__(self, capture):
            self.capture = capture

        def __call__(self, input_ids, scores):
            seen.append(self.capture.hidden.clone())
            return scores

    with LayerCapture(model, layer) as capture:
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, logits_processor=[Spy(capture)],
                             return_dict_in_generate=True, output_hidden_states=True)
    assert len(seen) == len(out.hidden_states) == 4
    for got, step_states in zip(seen, out.hidden_states):
        # entry 0 is the embeddings, so layer L's output is entry L + 1
        torch.testing.assert_close(got, step_states[layer + 1][:, -1, :], rtol=0, atol=0)


def test_hook_layer_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        LayerCapture(make_model("qwen3", len(TOK)), 7)


def test_probe_policy_without_probe_is_a_clear_error():
    model = make_model("qwen3", len(TOK))
    batch = TOK(["x"], return_tensors="pt")
    with pytest.raises(ValueError, match="needs a probe"):
        AdaptiveThinker(model, TOK).generate(**batch, max_new_tokens=2, think=ThinkConfig(policy="probe"))


def test_patch_and_unpatch():
    model = make_model("qwen2", len(TOK))
    batch = TOK(["the answer", "x"], return_tensors="pt", padding=True)
    ref = model.generate(**batch, max_new_tokens=6, do_sample=False)
    thinker = adaptive_think.patch(model, TOK, think=ThinkConfig(policy="none"))
    assert adaptive_think.is_patched(model)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    gen = out[:, batch["input_ids"].shape[1]:]
    block = TOK.encode("<think>\n\n</think>", add_special_tokens=False)  # the template's empty block
    assert (gen[:, : len(block)] == torch.tensor(block)).all()
    assert [r.ended_by for r in thinker.last_reports] == ["skipped", "skipped"]
    # a per-call config overrides the patched default
    again = model.generate(**batch, max_new_tokens=6, do_sample=False, think=ThinkConfig())
    assert torch.equal(again, ref)
    with pytest.raises(ValueError, match="already patched"):
        adaptive_think.patch(model, TOK)
    adaptive_think.unpatch(model)
    assert not adaptive_think.is_patched(model)
    assert torch.equal(model.generate(**batch, max_new_tokens=6, do_sample=False), ref)
    with pytest.raises(ValueError, match="not patched"):
        adaptive_think.unpatch(model)


def test_cli_generate_on_a_local_folder(tmp_path, capsys):
    model = make_model("qwen3", len(TOK))
    model.save_pretrained(tmp_path)
    TOK.save_pretrained(tmp_path)
    rc = main(["generate", "--model", str(tmp_path), "--prompt", "the answer", "--policy", "budget",
               "--max-think-tokens", "3", "--max-new-tokens", "8", "--exit-text", "\\n\\n"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert set(report) == {"think_tokens", "ended_by", "decision_step", "blocks", "guard", "guard_score", "group"}
    assert report["guard"] == "off"


@pytest.mark.parametrize("argv,message", [
    (["generate", "--model", "/no/such/folder", "--prompt", "x"], "does not exist"),
    (["generate", "--model", ".", "--prompt", "x", "--policy", "budget"], "needs max_think_tokens"),
])
def test_cli_errors_are_clear(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
