"""eval's oracle and its trial-answer baselines on a shared prefix (oracle.py, trials.py, training/branches.py)
equal the routes that re-prefill every exit / run the live processors: token for token, greedy, fp32, on a tiny
random Qwen3 (multi-token markers, a prompt ending inside an open think block, rows of different padding) and on
the bundled reasoner."""

import random
import re
from types import SimpleNamespace

import pytest
import torch

from adaptive_think.controller import boundary_mask
from adaptive_think.engines.args import eos_token_ids
from adaptive_think.evaluation import oracle
from adaptive_think.evaluation.oracle import checkpoint_answers, oracle_points
from adaptive_think.evaluation.policies import parse_policy
from adaptive_think.evaluation.run import Evaluator, evaluate
from adaptive_think.evaluation.trials import PostHocTrials
from adaptive_think.markers import find_subsequence, resolve_markers
from adaptive_think.training.collect import continuations
from adaptive_think.training.items import Item, bundled_items, load_checker
from pipeline_helpers import R1_TEMPLATE
from tiny import make_model, make_tokenizer

MARKERS = ("<think>", "</think>")  # 3 and 4 tokens with the word-level tokenizer's plain vocabulary


def odd_checker(text, answer):  # any change in any answer token is likely to flip it
    return sum(map(ord, text)) % 3 == 0


def both_oracle_routes(ev, rows, monkeypatch):
    """(checkpoint answers, oracle points) on the shared prefix and by re-prefilling every exit; the answers are
    also checked against generate() after each exit built from its owner alone: prompt + thought[:pos] + forced."""
    shared = checkpoint_answers(ev, rows), oracle_points(ev, rows)
    with monkeypatch.context() as m:
        m.setattr(oracle, "prefix_answers", lambda *a, **k: None)
        prefill = checkpoint_answers(ev, rows), oracle_points(ev, rows)
    owners, answers, spans = shared[0]
    forced = list(ev.markers.close_ids) + list(ev.exit_ids)
    exits = [rows[q]["prompt"] + rows[q]["gen"][: spans[q][0] + pos] + forced for q, pos in owners]
    assert answers == continuations(ev.model, ev.tok, exits, 16, 64)
    return shared, prefill


def test_oracle_on_the_shared_prefix_equals_re_prefilling_on_a_random_qwen3(monkeypatch):
    tok = make_tokenizer(think_special=False)
    tok.chat_template = R1_TEMPLATE
    model = make_model("qwen3", len(tok), layers=3)
    model.generation_config.eos_token_id = [1, 9, 31]  # frequent enough that some answers end early
    markers = resolve_markers(tok, MARKERS)
    rng = random.Random(3)
    words = sorted(w for w in tok.get_vocab() if w.isalnum()) + ["."] * 6  # "." is a step boundary
    items, rows = [], []
    for i, q in enumerate(["the answer is 3", "so 4 , 5 and 6 is the answer", "x", "wait 7 8 9 check again ok"]):
        prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                    tokenize=False), add_special_tokens=False)
        assert tok.decode(prompt).rstrip().endswith(MARKERS[0])  # the thought is open in the prompt
        thought = tok.encode(" ".join(rng.choice(words) for _ in range(10 + 7 * i)), add_special_tokens=False)
        gen = thought + tok.encode(MARKERS[1] + "\n\nthe answer is 3", add_special_tokens=False) + [1]
        items.append(Item(f"q{i}", q, "3", level=1 + i % 2))
        rows.append(dict(prompt=prompt, gen=gen, correct=True, think=len(thought), level=1 + i % 2))
    ev = SimpleNamespace(model=model, tok=tok, markers=markers, items=items, exit_text="\n\n",
                         exit_ids=tok.encode("\n\n", add_special_tokens=False), checker=odd_checker,
                         eos=set(eos_token_ids(model)), boundary=boundary_mask(tok, len(tok)), batch_size=3)
    (shared, points), (prefill, points_ref) = both_oracle_routes(ev, rows, monkeypatch)
    assert shared == prefill and points == points_ref
    owners, answers, _ = shared
    assert len(owners) > 20 and len({q for q, _ in owners}) == 4  # every row has exits, in two prefill batches
    lengths = {len(a) for a in answers}
    assert min(lengths) < 16 and 16 in lengths  # answers that end at an eos and answers cut at the budget


@pytest.fixture(scope="module")
def bundled():
    from adaptive_think.loading import load_model_and_tokenizer

    return load_model_and_tokenizer("bundled", "cpu", "float32")


def bundled_evaluator(bundled, n=12, **kw):
    from adaptive_think.tasks import ANSWER_STATED, parse_answer

    model, tok = bundled
    return Evaluator(model, tok, bundled_items(n, seed=31), load_checker(None), batch_size=kw.pop("batch_size", 6),
                     max_new_tokens=kw.pop("max_new_tokens", 200), pattern=ANSWER_STATED, parse=parse_answer,
                     progress=False, **kw)


@pytest.mark.slow
def test_oracle_on_the_shared_prefix_equals_re_prefilling_on_the_bundled_reasoner(bundled, monkeypatch):
    ev = bundled_evaluator(bundled, n=8, max_new_tokens=160, batch_size=4)
    ev.run(parse_policy("full"))
    (shared, points), (prefill, points_ref) = both_oracle_routes(ev, ev.full_rows, monkeypatch)
    assert shared == prefill and points == points_ref
    owners, answers, spans = shared
    assert len(owners) > 60 and all(s is not None for s in spans)
    labels = [ev.checker("</think>\n\n" + ev.tok.decode(a), ev.items[q].answer) for a, (q, _) in zip(answers, owners)]
    assert 0 < sum(labels) < len(labels)  # real labels of both kinds
    assert 0 < sum(points) < sum(r["think"] for r in ev.full_rows)  # the oracle cuts some thinking, not all


def live_and_post_hoc(ev, spec):
    """Per batch: ((generated ids up to eos, trial tokens) of the live processors, the same post hoc)."""
    out = []
    for bi, (chunk, batch) in enumerate(ev._batches()):
        plen = batch["input_ids"].shape[1]
        inside = [find_subsequence(p, ev.markers.open_ids) > find_subsequence(p, ev.markers.close_ids)
                  for p in batch["input_ids"].tolist()]
        proc = ev._processor(spec, plen, inside)
        live = ev.model.generate(**batch, logits_processor=[proc], max_new_tokens=ev.max_new_tokens, **ev.sampling)
        post = ev.posthoc.run(ev._processor(spec, plen, inside), bi, batch, plen, inside)
        assert post is not None, f"batch {bi} fell back to the live route"
        cut = lambda row: row[: next((j + 1 for j, t in enumerate(row) if t in ev.eos), len(row))]  # noqa: E731
        out.append(([cut(r) for r in live[:, plen:].tolist()], proc.trial_tokens, [cut(r) for r in post[0]], post[1]))
    return out


@pytest.mark.parametrize("policy", ["confidence:0.1", "confidence:0.15", "consistency:2", "consistency:3:4"])
def test_trial_baselines_post_hoc_equal_the_live_processors_on_a_random_qwen3(policy):
    tok = make_tokenizer()
    tok.chat_template = R1_TEMPLATE  # every prompt ends inside an open think block
    model = make_model("qwen3", len(tok), layers=2)
    with torch.no_grad():  # boundaries ("." and newline) and the answer's words frequent, eos never in a thought
        model.lm_head.weight[1].fill_(0)
        for w in (".", "\n", "the", "answer", "is", "3"):
            model.lm_head.weight[tok.convert_tokens_to_ids(w)] *= 4
        model.lm_head.weight *= 3  # trial confidences spread over about 0.05-0.2
    items = [Item(f"q{i}", " ".join(["the answer is", str(i), "so x y"][: 1 + i % 3]), str(i % 4)) for i in range(7)]
    ev = Evaluator(model, tok, items, odd_checker, batch_size=4, max_new_tokens=40, progress=False,
                   parse=lambda text: text.split()[-1] if text.split() else None)
    spec = parse_policy(policy)
    stopped = trials = 0
    for live, live_trial, post, post_trial in live_and_post_hoc(ev, spec):
        assert post == live and post_trial == live_trial
        stopped += sum(find_subsequence(g, ev.markers.close_ids) >= 0 for g in live)
        trials += sum(live_trial)
    assert trials > 0 and stopped > 0  # the rule ran and stopped some rows


@pytest.mark.slow
def test_trial_baselines_post_hoc_equal_the_live_processors_on_the_bundled_reasoner(bundled, monkeypatch):
    ev = bundled_evaluator(bundled, n=10, batch_size=5, max_new_tokens=160)
    pols = ["full", "confidence:0.9", "confidence:0.99", "consistency:2", "consistency:3:8"]
    post = evaluate(ev, pols, log=lambda *_: None)
    post_outcomes = dict(ev.outcomes)
    with monkeypatch.context() as m:
        m.setattr(PostHocTrials, "refusal", lambda self: "the live reference")
        ev_live = bundled_evaluator(bundled, n=10, batch_size=5, max_new_tokens=160)
        live = evaluate(ev_live, pols, log=lambda *_: None)
    for name in pols[1:]:
        assert post[name]["trials"] == {"route": "post-hoc"}
        assert live[name]["trials"] == {"route": "live", "why": "the live reference"}
        drop = lambda row: {k: v for k, v in row.items() if k not in ("wall_s", "trials")}  # noqa: E731
        assert drop(post[name]) == drop(live[name])
    assert post_outcomes == ev_live.outcomes
    # the rules stop at different points: the reports differ between policies, not only between routes
    assert len({post[n]["think_tokens_mean"] for n in pols}) >= 4
    assert all(post[n]["think_tokens_mean"] < post["full"]["think_tokens_mean"] for n in pols[1:])


def test_trial_baselines_run_live_under_sampling(bundled):
    ev = bundled_evaluator(bundled, n=4, batch_size=4, max_new_tokens=60, sampling={"do_sample": True, "top_k": 5})
    res = evaluate(ev, ["confidence:0.9"], log=lambda *_: None)
    assert res["confidence:0.9"]["trials"]["route"] == "live"
    assert res["confidence:0.9"]["trials"]["why"].startswith("sampling")


@pytest.mark.parametrize("policy", ["consistency:2:3", "confidence:0.12"])
def test_a_thought_left_open_at_eos_takes_the_live_route(policy, monkeypatch):
    """A row that ends (eos) inside its thought is still checked while the rest of its live batch runs, for as long
    as that batch runs: such batches take the live route, and the report equals the live one."""
    tok = make_tokenizer()
    tok.chat_template = R1_TEMPLATE
    model = make_model("qwen3", len(tok), layers=2, seed=2)  # rows end with eos after 11-27 thought tokens
    with torch.no_grad():
        for w in (".", "\n"):
            model.lm_head.weight[tok.convert_tokens_to_ids(w)] *= 4
        model.lm_head.weight *= 3
    items = [Item(f"q{i}", " ".join(["the answer is", str(i), "so x y"][: 1 + i % 3]), str(i % 4)) for i in range(8)]

    def run(refuse):
        ev = Evaluator(model, tok, items, odd_checker, batch_size=4, max_new_tokens=30, progress=False,
                       parse=lambda text: text.split()[-1] if text.split() else None)
        with monkeypatch.context() as m:
            if refuse:
                m.setattr(PostHocTrials, "refusal", lambda self: "the live reference")
            got = ev.run(parse_policy(policy))
        return ev, {k: v for k, v in got.items() if k not in ("wall_s", "trials")}, got["trials"]

    ev, post, route = run(False)
    _, live, _ = run(True)
    assert route == {"route": "post-hoc", "live_batches": [0, 1]}
    assert post == live and post["forward_tokens_mean"] > 30  # trials counted
