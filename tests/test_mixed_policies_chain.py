"""One batch, many policies, on a model that behaves like a reasoner: every row of a mixed-policy batch
gets exactly the tokens and report it gets when the same batch (same prompts, same padding) runs with that row's
config on every row (greedy). Complements test_mixed_policies.py (random tiny model, whose thoughts mostly run
into the budget) with natural closes, multi-token closes, later think blocks, stop texts and boundary stops.

The model is a random "chain" LM (tests/tiny.py `make_chain_model`): its greedy next token is a fixed random
function of the current token, by its weights alone, so it thinks for a prompt-dependent number of words,
closes its thought, answers, sometimes opens a second thought, and reacts to every forced token, on any
engine. The probe reads its real hidden states. ENGINES lists the engines the property runs on.
"""

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.probe import Probe
from tiny import make_chain_model, make_tokenizer

ENGINES = ["hf", "graph"]
TOK = make_tokenizer()
VOCAB = TOK.get_vocab()
THINK_WORDS = ["so", "wait", "check", "again", "ok", "yes", "no", "x", "y", "z", ".", ","]
ANSWER_WORDS = [str(i) for i in range(12)] + ["the", "answer", "is"]
MARKERS = {"single": None, "multi": ("<reason>", "</reason>")}
STOP_TEXTS = ["", "ok", "so ok ."]  # 0, 1 and 5 tokens
EXIT_TEXTS = ["", "\n\n", " : "]


def chain(seed: int, marker: str) -> dict[int, int]:
    """A random next-token table: thinking words wander and sometimes close, answers end in eos or (single-token
    markers) sometimes open another thought."""
    rng = random.Random(seed)
    ids = {w: VOCAB[w] for w in THINK_WORDS + ANSWER_WORDS}
    think, answer = [ids[w] for w in THINK_WORDS], [ids[w] for w in ANSWER_WORDS]
    close_start = VOCAB["</think>"] if marker == "single" else VOCAB["<"]
    nxt = {}
    for t in think:
        nxt[t] = close_start if rng.random() < 0.2 else rng.choice(think)
    for t in answer:
        r = rng.random()
        nxt[t] = TOK.eos_token_id if r < 0.2 else VOCAB["<think>"] if (r < 0.3 and marker == "single") else rng.choice(answer)
    if marker == "single":
        nxt[VOCAB["<think>"]] = rng.choice(think)
        nxt[VOCAB["</think>"]] = rng.choice(answer)
    else:  # "<" "/" "reason" ">": the model can close a thought, never open one
        nxt[VOCAB["<"]], nxt[VOCAB["/"]], nxt[VOCAB["reason"]] = VOCAB["/"], VOCAB["reason"], VOCAB[">"]
        nxt[VOCAB[">"]] = rng.choice(answer)
    nxt[VOCAB["\n"]] = nxt[VOCAB[":"]] = nxt[VOCAB[" "]] = rng.choice(answer)
    nxt[VOCAB["think"]] = VOCAB["<think>"]  # a prompt ending in "think": the model opens the thought itself
    return nxt


MODEL = make_chain_model(TOK, {})
PROBE = Probe.random_for(MODEL, layer=1, width=8, seed=0)
PROBE.ready_threshold, PROBE.skip_threshold = 0.5, 0.55


def set_chain(next_of: dict[int, int]) -> None:
    with torch.no_grad():
        MODEL.lm_head.weight.zero_()
        for t in range(len(TOK)):
            MODEL.lm_head.weight[next_of.get(t, TOK.eos_token_id), t] = 1.0


@st.composite
def configs(draw):
    policy = draw(st.sampled_from(["full", "none", "budget", "probe"]))
    exit_text = draw(st.sampled_from(EXIT_TEXTS))
    if policy == "full":
        return ThinkConfig()
    if policy == "none":
        return ThinkConfig(policy="none", exit_text=exit_text)
    stop = draw(st.sampled_from(STOP_TEXTS))
    n_stop = len(TOK.encode(stop, add_special_tokens=False))
    budget = draw(st.integers(n_stop, 10))
    if policy == "budget":
        return ThinkConfig(policy="budget", max_think_tokens=budget, exit_text=exit_text, stop_text=stop)
    cap = draw(st.sampled_from([None, budget]))
    return ThinkConfig(
        policy="probe", max_think_tokens=cap, exit_text=exit_text, stop_text=stop,
        threshold=draw(st.sampled_from([None, 0.3, 0.45, 0.5, 0.55])),
        skip_threshold=draw(st.sampled_from([None, 0.5, 0.9])),
        min_think_tokens=draw(st.integers(0, 3 if cap is None else min(3, cap))),
        patience=draw(st.integers(1, 2)), smoothing=draw(st.sampled_from([1.0, 0.5])),
        stop_at_boundary=draw(st.booleans()), allow_skip=draw(st.booleans()),
    )


def prompt(kind: str, word: str, marker: str) -> str:
    """inside: ends inside an open thought; opens: the model opens one (single-token markers); direct: it answers."""
    open_text = "<think>" if marker == "single" else "<reason>"
    return {"inside": f"the answer is {open_text} {word}", "opens": "check think", "direct": "the answer is 3"}[kind]


def strip(row: torch.Tensor) -> list[int]:
    """A generated row without the pad HF writes after eos (or after a shorter run ends)."""
    out = row.tolist()
    while out and out[-1] == TOK.pad_token_id:
        out.pop()
    return out


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10**6),
    marker=st.sampled_from(["single", "multi"]),
    rows=st.lists(st.tuples(configs(), st.sampled_from(["inside", "opens", "direct"]), st.sampled_from(THINK_WORDS)),
                  min_size=1, max_size=4),
)
def test_each_row_behaves_as_if_alone_in_its_policy(engine, seed, marker, rows):
    set_chain(chain(seed, marker))
    thinker = AdaptiveThinker(MODEL, TOK, think_tokens=MARKERS[marker], probe=PROBE)
    batch = TOK([prompt(kind, word, marker) for _, kind, word in rows], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=24, do_sample=False, engine=engine)
    think = [cfg for cfg, _, _ in rows]
    mixed = thinker.generate(**batch, think=think, **kw)[:, batch["input_ids"].shape[1]:]
    mixed_reports = [r.to_dict() for r in thinker.last_reports]
    for i, cfg in enumerate(think):
        alone = thinker.generate(**batch, think=cfg, **kw)[:, batch["input_ids"].shape[1]:]
        assert strip(mixed[i]) == strip(alone[i]), f"row {i} ({cfg})"
        assert mixed_reports[i] == thinker.last_reports[i].to_dict(), f"row {i} ({cfg})"
        if cfg.max_think_tokens is not None:  # the hard guarantee, stop text and every block included
            assert mixed_reports[i]["think_tokens"] <= cfg.max_think_tokens


def test_stop_text_is_written_before_the_close_and_counted():
    """Budget 6 with a 5-token stop text: one word of the model's own, then "so ok .", close, exit."""
    nxt = chain(0, "single")
    for w in THINK_WORDS:  # a thought that never closes by itself
        nxt[VOCAB[w]] = VOCAB["wait"]
    set_chain(nxt)
    thinker = AdaptiveThinker(MODEL, TOK)
    batch = TOK(["the answer is <think> so"], return_tensors="pt")
    cfg = ThinkConfig(policy="budget", max_think_tokens=6, stop_text="so ok .", exit_text="\n\n")
    out = thinker.generate(**batch, think=cfg, max_new_tokens=14, do_sample=False)[0, batch["input_ids"].shape[1]:]
    enc = lambda text: TOK.encode(text, add_special_tokens=False)  # noqa: E731
    want = [VOCAB["wait"]] + enc("so ok .") + [VOCAB["</think>"]] + enc("\n\n")
    assert out.tolist()[: len(want)] == want
    assert (thinker.last_reports[0].think_tokens, thinker.last_reports[0].ended_by) == (6, "budget")


def test_configs_follow_their_prompt_under_num_return_sequences():
    """HF repeats each prompt num_return_sequences times in place: each copy keeps its prompt's config."""
    set_chain(chain(1, "single"))
    thinker = AdaptiveThinker(MODEL, TOK)
    batch = TOK(["the answer is <think> so", "the answer is <think> wait"], return_tensors="pt", padding=True)
    think = [ThinkConfig(policy="budget", max_think_tokens=1), ThinkConfig(policy="none")]
    thinker.generate(**batch, think=think, max_new_tokens=8, do_sample=True, top_k=1, num_return_sequences=2)
    assert [r.ended_by for r in thinker.last_reports] == ["budget", "budget", "skipped", "skipped"]
    with pytest.raises(ValueError, match="one per row"):
        thinker.generate(**batch, think=think[:1] * 3, max_new_tokens=2)
