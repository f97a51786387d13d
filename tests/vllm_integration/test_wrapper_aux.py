"""The model wrapper under speculative decoding (adaptive_think/integrations/vllm/models.py), without building
a model: the probe's layer joins the auxiliary layers an EAGLE-3 draft asks for (vLLM keeps them sorted and
without repeats), the runner gets only the draft's aux states, and the tap records every request's last
num_speculative_tokens + 1 tokens with the probe layer's state. The inner model is a stand-in whose aux
state of layer k is the constant k."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here; .ci/run runs these tests in its vLLM venv")

from adaptive_think.integrations.vllm import models  # noqa: E402
from adaptive_think.integrations.vllm.rows import CHANNEL, RowTap  # noqa: E402

pytestmark = pytest.mark.vllm


class Inner:
    def __init__(self):
        self.aux_hidden_state_layers = ()

    def _set_aux_hidden_state_layers(self, layers):  # vLLM's EagleModelMixin rule
        self.aux_hidden_state_layers = tuple(sorted(set(layers)))


class Base:
    """Stands in for a vLLM causal LM: forward returns (hidden, aux states in layer order) when aux layers are set."""

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        hidden = torch.zeros(input_ids.shape[0], 2)
        layers = self.model.aux_hidden_state_layers
        return (hidden, [torch.full((input_ids.shape[0], 2), float(k)) for k in layers]) if layers else hidden

    def compute_logits(self, hidden_states):
        return torch.zeros(hidden_states.shape[0], 5)


class Wrapped(models._TapMixin, Base):
    pass


def _wrapped(probe_layer, width):
    w = object.__new__(Wrapped)  # the mixin's state, without vLLM's model construction
    w.model, w._probe_layer, w._draft_layers = Inner(), probe_layer, None
    w._set_aux_layers()
    w._tap = RowTap(4, 2 if probe_layer is not None else None, torch.float32, "cpu", width=width)
    return w


@pytest.mark.parametrize("draft, probe", [((2, 14, 25), 7), ((25, 2, 14), 13), ((2, 14, 25), None), (None, 7)])
def test_the_probe_layer_joins_the_eagle3_layers(monkeypatch, draft, probe):
    qsl = torch.tensor([0, 3, 4])
    monkeypatch.setattr(models, "_query_start_loc", lambda: qsl)
    w = _wrapped(probe, width=3)
    if draft is not None:
        w.set_aux_hidden_state_layers(draft)  # what vLLM's set_eagle3_aux_hidden_state_layers calls
    expected = set(draft or ()) | ({probe + 1} if probe is not None else set())
    assert w.model.aux_hidden_state_layers == tuple(sorted(expected))
    out = w.forward(torch.arange(4), torch.tensor([10, 11, 12, 5]))
    if draft is None:
        assert torch.is_tensor(out)  # no EAGLE-3 draft: the runner expects the hidden states alone
    else:
        hidden, aux = out
        assert [int(a[0, 0]) for a in aux] == sorted(draft)  # the draft's own layers, in vLLM's order
    w.compute_logits(torch.zeros(4, 2))
    rows = CHANNEL.take_requests(2, 3)
    assert rows.pos.tolist() == [10, 11, 12, 5, 5, 5]
    if probe is not None:
        assert rows.hidden[:, 0].tolist() == [float(probe + 1)] * 6  # the probe layer's state (layer L's output)
