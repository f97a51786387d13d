"""Controller semantics (docs/design.md, "The controller") on a scripted reasoner: budget, skip, natural close,
prompts that open the block, multi-token markers, exit text, streamer, stopping criteria, reports."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import StoppingCriteria, StoppingCriteriaList

from adaptive_think import AdaptiveThinker, ThinkConfig
from tiny import ScriptedReasoner, make_model, make_tokenizer

TOK = make_tokenizer()
MODEL = make_model("qwen3", len(TOK))
MARKERS = {"single": None, "multi": ("<reason>", "</reason>")}


def ids(text):
    return TOK.encode(text, add_special_tokens=False)


def run(think, think_len, prompt="the answer is", marker="single", opens_itself=True, max_new_tokens=60, **kw):
    thinker = AdaptiveThinker(MODEL, TOK, think_tokens=MARKERS[marker])
    m = thinker.markers
    prompts = [prompt] * len(think_len)
    if not opens_itself:
        prompts = [p + m.open_text + "\n" for p in prompts]
    batch = TOK(prompts, return_tensors="pt", padding=True)
    script = ScriptedReasoner(batch["input_ids"].shape[1], think_len, m.open_ids, m.close_ids, TOK.eos_token_id,
                              ids("so wait check again ok x y"), ids(" the answer is 7"), opens_itself=opens_itself)
    out = thinker.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, think=think,
                           logits_processor=[script], **kw)
    gen = out[:, batch["input_ids"].shape[1]:].tolist()
    return thinker, m, gen


def find(seq, sub, start=0):
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == list(sub):
            return i
    return -1


def count(seq, sub):
    return sum(1 for i in range(len(seq) - len(sub) + 1) if seq[i:i + len(sub)] == list(sub))


def thought(gen, m, opens_itself=True):
    """(tokens between the markers, index after the close marker) of one generated row."""
    start = find(gen, m.open_ids) + len(m.open_ids) if opens_itself else 0
    end = find(gen, m.close_ids, start)
    return gen[start:end], end + len(m.close_ids)


def test_full_lets_the_model_think_and_close_naturally():
    thinker, m, gen = run(ThinkConfig(), [5, 9, 0])
    for row, n in zip(gen, [5, 9, 0]):
        body, _ = thought(row, m)
        assert len(body) == n
    assert [(r.think_tokens, r.ended_by) for r in thinker.last_reports] == [(5, "natural"), (9, "natural"), (0, "natural")]
    # the natural close happened at the generated index of the close marker's token
    assert thinker.last_reports[0].decision_step == 1 + 5


def test_budget_cuts_with_the_exit_text_once():
    cfg = ThinkConfig(policy="budget", max_think_tokens=4, exit_text="\n\n")
    thinker, m, gen = run(cfg, [10, 2])
    cut, short = gen
    body, after = thought(cut, m)
    assert len(body) == 4
    assert cut[after:after + 2] == ids("\n\n")
    assert count(cut, m.close_ids) == 1
    r0, r1 = thinker.last_reports
    assert (r0.think_tokens, r0.ended_by, r0.decision_step) == (4, "budget", 1 + 4)
    assert (r1.think_tokens, r1.ended_by) == (2, "natural")
    # the model answers after the forced exit and is never re-opened
    assert TOK.decode(cut).endswith("answer is 7<eos>") and count(cut, m.open_ids) == 1


def test_none_skips_every_row_from_prompt():
    thinker, m, gen = run(ThinkConfig(policy="none", exit_text="\n\n"), [6, 3])
    # the template's empty block, "<think>\n\n</think>", then the exit text
    block = list(m.open_ids) + ids("\n\n") + list(m.close_ids) + ids("\n\n")
    for row in gen:
        assert row[: len(block)] == block
    assert all(r.ended_by == "skipped" and r.think_tokens == 0 and r.decision_step == 0 for r in thinker.last_reports)


def test_none_when_prompt_already_opened_the_block():
    thinker, m, gen = run(ThinkConfig(policy="none"), [6, 3], opens_itself=False)
    for row in gen:
        assert row[: len(m.close_ids)] == list(m.close_ids)
        assert find(row, m.open_ids) == -1
    assert all(r.ended_by == "skipped" for r in thinker.last_reports)


def test_prompt_ending_inside_block_counts_from_first_token():
    cfg = ThinkConfig(policy="budget", max_think_tokens=3)
    thinker, m, gen = run(cfg, [8, 1], opens_itself=False)
    body, _ = thought(gen[0], m, opens_itself=False)
    assert len(body) == 3
    assert [(r.think_tokens, r.ended_by) for r in thinker.last_reports] == [(3, "budget"), (1, "natural")]


def test_template_with_thinking_disabled_is_left_alone():
    prompt = TOK.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                     tokenize=False, enable_thinking=False)
    thinker = AdaptiveThinker(MODEL, TOK)
    batch = TOK([prompt], return_tensors="pt")
    out = thinker.generate(**batch, max_new_tokens=4, do_sample=False, think=ThinkConfig(policy="none"))
    ref = MODEL.generate(**batch, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, ref)
    assert thinker.last_reports[0].ended_by == "skipped" and thinker.last_reports[0].decision_step == -1


def test_budget_longer_than_max_new_tokens_reports_unfinished():
    cfg = ThinkConfig(policy="budget", max_think_tokens=50)
    thinker, m, gen = run(cfg, [40], max_new_tokens=10)
    assert thinker.last_reports[0].ended_by == "unfinished"
    assert thinker.last_reports[0].think_tokens == 10 - len(m.open_ids)


def test_budget_zero_closes_at_once():
    thinker, m, gen = run(ThinkConfig(policy="budget", max_think_tokens=0), [5])
    body, _ = thought(gen[0], m)
    assert body == [] and thinker.last_reports[0].ended_by == "budget"


def test_streamer_sees_forced_tokens():
    class Collect:
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.reshape(-1).tolist())

        def end(self):
            pass

    streamer = Collect()
    cfg = ThinkConfig(policy="budget", max_think_tokens=2, exit_text="\n\n")
    _, m, gen = run(cfg, [9], streamer=streamer)
    streamed = [t for chunk in streamer.chunks[1:] for t in chunk]  # first put is the prompt
    assert streamed == gen[0][: len(streamed)] and len(streamed) >= len(gen[0]) - gen[0].count(TOK.pad_token_id)
    assert find(streamed, list(m.close_ids) + ids("\n\n")) >= 0


def test_user_stopping_criteria_still_apply():
    class StopAfter(StoppingCriteria):
        def __init__(self, n):
            self.n, self.calls = n, 0

        def __call__(self, input_ids, scores, **kw):
            self.calls += 1
            return torch.full((input_ids.shape[0],), self.calls >= self.n, dtype=torch.bool)

    _, _, gen = run(ThinkConfig(policy="budget", max_think_tokens=3), [9], stopping_criteria=StoppingCriteriaList([StopAfter(4)]))
    assert len(gen[0]) == 4


@pytest.mark.parametrize("arg,value", [("num_beams", 2), ("assistant_model", MODEL)])
def test_unsupported_arguments_are_named(arg, value):
    batch = TOK(["x"], return_tensors="pt")
    with pytest.raises(ValueError, match=arg):
        AdaptiveThinker(MODEL, TOK).generate(**batch, max_new_tokens=3, **{arg: value})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    budget=st.integers(0, 12),
    think_len=st.lists(st.integers(0, 20), min_size=1, max_size=5),
    marker=st.sampled_from(["single", "multi"]),
    exit_text=st.sampled_from(["", "\n\n", " so : "]),
    opens_itself=st.booleans(),
)
def test_budget_property(budget, think_len, marker, exit_text, opens_itself):
    cfg = ThinkConfig(policy="budget", max_think_tokens=budget, exit_text=exit_text)
    thinker, m, gen = run(cfg, think_len, marker=marker, opens_itself=opens_itself, max_new_tokens=50)
    exit_ids = ids(exit_text) if exit_text else []
    for row, n, rep in zip(gen, think_len, thinker.last_reports):
        body, after = thought(row, m, opens_itself)
        assert len(body) <= budget
        assert rep.think_tokens == len(body) == min(n, budget)
        # the model's own close completes before the count (its partial marker included) reaches the cap
        if n + len(m.close_ids) - 1 < budget:
            assert rep.ended_by == "natural"
        else:
            assert rep.ended_by == "budget"
            assert row[after:after + len(exit_ids)] == exit_ids
            assert count(row, list(m.close_ids) + exit_ids) == 1
        assert count(row, m.close_ids) == 1
