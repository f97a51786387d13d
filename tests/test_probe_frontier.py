"""scripts/probe_frontier.py: regenerated thought states are the states that read each thought token."""

import importlib.util
from pathlib import Path

import torch

from adaptive_think.engines.layer_hook import decoder_layers
from adaptive_think.loading import chat_prompt, load_model_and_tokenizer
from adaptive_think.training.items import bundled_items

_SPEC = importlib.util.spec_from_file_location(
    "probe_frontier", Path(__file__).resolve().parents[1] / "scripts" / "probe_frontier.py")
frontier = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(frontier)


@torch.no_grad()
def test_thought_states_are_the_states_that_read_each_thought_token():
    items = bundled_items(3, seed=5, levels=[2])
    states = frontier.thought_states("bundled", items, layer=3, batch_size=2, max_new_tokens=200)
    assert set(states) == {it.id for it in items}
    model, tok = load_model_and_tokenizer("bundled", device="cpu")
    it = items[1]
    prompt = tok.encode(chat_prompt(tok, it.question), add_special_tokens=False)
    gen = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=200, do_sample=False,
                         pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
    from adaptive_think.markers import resolve_markers
    from adaptive_think.training.thoughts import thought_span
    body, close = thought_span(prompt, gen, resolve_markers(tok))
    assert states[it.id].shape == (close - body, model.config.hidden_size)
    grabbed = {}
    hook = decoder_layers(model)[3].register_forward_hook(lambda m, a, o: grabbed.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    try:
        for j in (0, 5, close - body - 1):  # the state after reading thought token j, one sequence alone
            model(input_ids=torch.tensor([prompt + gen[: body + j + 1]]))
            torch.testing.assert_close(states[it.id][j], grabbed["h"][0, -1].float(), rtol=1e-4, atol=1e-4)
    finally:
        hook.remove()
