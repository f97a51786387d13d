"""With policy `full` the adaptive generate() is token-identical to model.generate (docs/design.md, "The controller")."""

import pytest
import torch

from adaptive_think import AdaptiveThinker, ThinkConfig
from tiny import ARCHS, make_model, make_tokenizer

PROMPTS = ["the answer is", "check 3 , 4 and 5 again . so", "x"]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_full_policy_is_token_identical_greedy(arch, tok):
    model = make_model(arch, len(tok))
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    assert (batch["attention_mask"][:, 0] == 0).any(), "prompts must be left-padded to test padding"
    ref = model.generate(**batch, max_new_tokens=12, do_sample=False)
    thinker = AdaptiveThinker(model, tok)
    out = thinker.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=12,
                           do_sample=False, think=ThinkConfig(policy="full"))
    assert torch.equal(out, ref)
    assert len(thinker.last_reports) == len(PROMPTS)


def test_full_policy_sampling_same_seed_same_tokens(tok):
    model = make_model("qwen3", len(tok))
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.3, top_k=20, top_p=0.95)
    torch.manual_seed(7)
    ref = model.generate(**batch, **kw)
    thinker = AdaptiveThinker(model, tok)
    torch.manual_seed(7)
    out = thinker.generate(**batch, **kw, think=ThinkConfig())
    torch.manual_seed(7)
    again = thinker.generate(**batch, **kw, think=ThinkConfig())
    assert torch.equal(out, ref) and torch.equal(out, again)


def test_return_dict_and_scores_pass_through(tok):
    model = make_model("llama", len(tok))
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    ref = model.generate(**batch, max_new_tokens=5, return_dict_in_generate=True, output_scores=True)
    out = AdaptiveThinker(model, tok).generate(**batch, max_new_tokens=5, return_dict_in_generate=True,
                                               output_scores=True)
    assert type(out) is type(ref)
    assert torch.equal(out.sequences, ref.sequences)
    assert len(out.scores) == len(ref.scores)
    for a, b in zip(out.scores, ref.scores):
        assert torch.equal(a, b)
