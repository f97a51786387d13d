"""GPU: the hf engine with a probe (the controller's per-step work makes no host sync; HF's own loop does, so only
the processor's steps run under sync checks), and a model spread over two devices (`device_map="auto"`-style):
the probe layer's state reaches the controller on another device, and `collect` stacks layers from both.
Skips without CUDA."""

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.engines import hf
from tiny import make_model, make_tokenizer

pytestmark = pytest.mark.gpu

TOK = make_tokenizer()
PROMPTS = ["the answer is <think>\n", "check 3 , 4 and 5 again . so", "x <think>\n so"]
THINK = ThinkConfig(policy="probe", threshold=0.5, skip_threshold=0.5, min_think_tokens=2, stop_at_boundary=False)


def probe_for(model, layer=1):
    from adaptive_think.probe import Probe

    return Probe.random_for(model, layer=layer, width=16, seed=0)


def batch(device="cuda"):
    return TOK(PROMPTS, return_tensors="pt", padding=True).to(device)


def test_probe_steps_of_the_hf_engine_make_no_host_sync(monkeypatch):
    """Every processor call after the first (which reads the prompt in `begin`) runs under sync errors, and the
    run gives the tokens and reports of the same run without the checks."""
    model = make_model("qwen3", len(TOK)).cuda()
    thinker = AdaptiveThinker(model, TOK, probe=probe_for(model))
    ref = thinker.generate(**batch(), think=THINK, max_new_tokens=14, do_sample=False)
    ref_reports = [r.to_dict() for r in thinker.last_reports]
    call = hf.ThinkLogitsProcessor.__call__
    strict_calls = []

    def strict(self, input_ids, scores):
        if not self._started:
            return call(self, input_ids, scores)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = call(self, input_ids, scores)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        strict_calls.append(1)
        return out

    monkeypatch.setattr(hf.ThinkLogitsProcessor, "__call__", strict)
    out = thinker.generate(**batch(), think=THINK, max_new_tokens=14, do_sample=False)
    assert len(strict_calls) == out.shape[1] - batch()["input_ids"].shape[1] - 1
    assert torch.equal(out, ref)
    assert [r.to_dict() for r in thinker.last_reports] == ref_reports
    assert {r["ended_by"] for r in ref_reports} & {"probe", "skipped"}  # the probe did decide


def _move(x, device):
    if torch.is_tensor(x):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_move(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _move(v, device) for k, v in x.items()}
    return x


def identity_first_layer(seed=0):
    """A tiny model whose layer 0 adds exactly zero (so running it on the GPU changes no bit of the CPU result)."""
    model = make_model("qwen3", len(TOK), seed=seed)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
    return model


def split_over_two_devices(model):
    """Embeddings and layer 0 on the GPU; layers 1.., the final norm and the head on the CPU, with hooks moving
    each module's inputs to its device (what accelerate's dispatch does); logits come back to the GPU."""
    model.cuda()
    cpu = torch.device("cpu")
    for module in list(model.model.layers)[1:] + [model.model.norm, model.lm_head]:
        module.to(cpu)
        module.register_forward_pre_hook(lambda m, args, kw: (_move(args, cpu), _move(kw, cpu)), with_kwargs=True)

    def logits_back(module, args, out):
        out.logits = out.logits.cuda()
        return out

    model.register_forward_hook(logits_back)
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu",
                           "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    return model


def test_a_probe_layer_on_another_device_reaches_the_controller():
    """The probe reads layer 1 (on the CPU); the controller lives on the GPU (model.device). The split run gives
    exactly the all-CPU run's tokens and reports."""
    cpu_model = identity_first_layer()
    ref_thinker = AdaptiveThinker(cpu_model, TOK, probe=probe_for(cpu_model), impl="torch")
    ref = ref_thinker.generate(**batch("cpu"), think=THINK, max_new_tokens=12, do_sample=False)
    two = split_over_two_devices(identity_first_layer())
    assert two.model.layers[1].self_attn.q_proj.weight.device.type == "cpu" and two.device.type == "cuda"
    thinker = AdaptiveThinker(two, TOK, probe=probe_for(two))
    out = thinker.generate(**batch(), think=THINK, max_new_tokens=12, do_sample=False)
    assert torch.equal(out.cpu(), ref)
    assert [r.to_dict() for r in thinker.last_reports] == [r.to_dict() for r in ref_thinker.last_reports]
    with pytest.raises(ValueError, match=r"several devices.*engine=\"hf\""):
        AdaptiveThinker(two, TOK).generate(**batch(), max_new_tokens=4, engine="graph")


def test_collect_stacks_layers_from_two_devices(tmp_path):
    from adaptive_think.training.collect import CollectConfig, collect
    from adaptive_think.training.items import Item
    from adaptive_think.training.shards import load_collection

    questions = ["the answer is <think>\n", "x y <think>\n so"]  # the prompts open a thought: checkpoints follow
    items = [Item(id=f"q{i}", question=q, answer="7") for i, q in enumerate(questions)]
    # fail_fast off: this random model never closes its thought; the test is about the layers, not the data
    cfg = CollectConfig(layers=[0, 2], every=2, batch_size=2, max_new_tokens=8, max_answer_tokens=2, fail_fast=False)
    for name, model in (("cpu", identity_first_layer()), ("two", split_over_two_devices(identity_first_layer()))):
        collect(model, TOK, items, tmp_path / name, lambda text, answer: "7" in text, cfg=cfg, progress=False)
    (ref, ref_records, _), (got, records, _) = (load_collection(tmp_path / n) for n in ("cpu", "two"))
    assert records == ref_records and len(records) > 2
    for key in ("layer0", "layer2"):  # layer 0 came from the GPU, layer 2 from the CPU
        assert torch.equal(got[key], ref[key])
