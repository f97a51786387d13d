"""The oracle, the router and answer consistency on hand-made cases where the right result is known."""

from types import SimpleNamespace

import pytest
import torch

from adaptive_think import AdaptiveThinker
from adaptive_think.controller import boundary_mask
from adaptive_think.evaluation.baselines import ConsistencyStop
from adaptive_think.evaluation.oracle import oracle_point, oracle_points
from adaptive_think.evaluation.policies import parse_policy
from adaptive_think.evaluation.run import Evaluator
from adaptive_think.markers import resolve_markers
from adaptive_think.probe import Probe
from adaptive_think.training.items import Item
from adaptive_think.tasks import is_correct, parse_answer
from tiny import ScriptedReasoner, make_model, make_tokenizer


def test_oracle_point_definition():
    cps = [(2, True), (4, False), (6, True)]
    assert oracle_point(True, True, cps, 8) == 6  # right from 6 on; the wrong exit at 4 forbids anything earlier
    assert oracle_point(True, True, [(2, True), (6, True)], 8) == 0  # skip: no-think right and every exit right
    assert oracle_point(True, False, [(2, True), (6, True)], 8) == 2
    assert oracle_point(True, True, [(2, True), (6, False)], 8) == 8  # only the natural close is right
    assert oracle_point(False, True, [(2, True)], 8) == 8  # full thinking is wrong: it keeps the whole thought
    assert oracle_point(True, True, [(8, False)], 8) == 0  # a checkpoint at the close is the full answer itself


class AnswerTable:
    """A stand-in model for forced-exit answers: the answer after a cut thought is looked up by the number
    of thought tokens before the close marker; with thinking disabled it is `no_think`."""

    def __init__(self, tok, table: dict[int, str], no_think: str):
        self.tok, self.table, self.no_think = tok, table, no_think
        self.device = torch.device("cpu")
        self.open_id, self.close_id = tok.convert_tokens_to_ids(["<think>", "</think>"])

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id):
        rows = []
        for ids in input_ids.tolist():
            o, c = len(ids) - 1 - ids[::-1].index(self.open_id), len(ids) - 1 - ids[::-1].index(self.close_id)
            thought = [t for t in ids[o + 1 : c] if t != self.tok.convert_tokens_to_ids("\n")]
            answer = self.no_think if not thought else self.table[c - o - 1]
            rows.append(self.tok.encode(f"the answer is {answer}", add_special_tokens=False) + [1])
        width = max(map(len, rows))
        new = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], 1)


def test_oracle_on_a_hand_made_thought(monkeypatch):
    from adaptive_think.evaluation import oracle

    # the stand-in answers through generate() only: the oracle's re-prefill route (its shared-prefix route is
    # checked against this one on real models in test_eval_shared_prefix.py)
    monkeypatch.setattr(oracle, "prefix_answers", lambda *a, **k: None)
    tok = make_tokenizer()
    markers = resolve_markers(tok)
    thought = tok.encode("so.wait.check.yes.", add_special_tokens=False)  # boundaries after 2, 4, 6, 8 tokens
    gen = tok.convert_tokens_to_ids(["<think>"]) + thought + tok.encode("</think>\n\nthe answer is 3", add_special_tokens=False)
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True,
                                                tokenize=False), add_special_tokens=False)
    items = [Item("a", "q", "3", 1), Item("b", "q", "3", 2), Item("c", "q", "3", 3)]
    rows = [dict(prompt=prompt, gen=gen, correct=True, think=len(thought), level=it.level) for it in items]

    def points(table, no_think):
        ev = SimpleNamespace(model=AnswerTable(tok, table, no_think), tok=tok, markers=markers, items=items[:1],
                             exit_text="\n\n", exit_ids=tok.encode("\n\n", add_special_tokens=False),
                             checker=is_correct, eos={1},
                             boundary=boundary_mask(tok, len(tok)), batch_size=4)
        return oracle_points(ev, rows[:1])[0]

    assert points({2: "3", 4: "5", 6: "3"}, "3") == 6
    assert points({2: "3", 4: "3", 6: "3"}, "3") == 0
    assert points({2: "3", 4: "3", 6: "3"}, "7") == 2
    assert points({2: "5", 4: "5", 6: "5"}, "3") == 8


class TrialTable:
    """A stand-in model for trial answers: the answer after a trial exit is looked up by how many
    thought tokens precede it (output scores included, as the baseline reads them)."""

    def __init__(self, tok, table: dict[int, str], prompt_len: int):
        self.tok, self.table, self.prompt_len = tok, table, prompt_len
        self.generation_config = SimpleNamespace(eos_token_id=1)

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, output_scores, return_dict_in_generate,
                 pad_token_id):
        n_thought = input_ids.shape[1] - self.prompt_len - 1 - 3  # open marker before, close + "\n\n" after
        ans = self.tok.encode(f"the answer is {self.table[n_thought]}", add_special_tokens=False) + [1]
        new = torch.tensor([ans] * input_ids.shape[0])
        scores = [torch.zeros(input_ids.shape[0], len(self.tok)) for _ in ans]
        return SimpleNamespace(sequences=torch.cat([input_ids, new], 1), scores=scores)


@pytest.mark.parametrize("agree,stop_at", [(2, 6), (3, 8)])
def test_consistency_stops_once_trial_answers_agree(agree, stop_at):
    tok = make_tokenizer()
    markers = resolve_markers(tok)
    prompt = tok.encode("q\n", add_special_tokens=False)
    # trial answers at the boundaries after 2, 4, 6, 8 thought tokens: 5, 3, 3, 3 -> agree from the 4th token on
    model = TrialTable(tok, {2: "5", 4: "3", 6: "3", 8: "3"}, len(prompt))
    proc = ConsistencyStop(tok, markers, tok.encode("\n\n", add_special_tokens=False), boundary_mask(tok, len(tok)),
                           len(prompt), [False], agree=agree, parse=parse_answer, model=model, pad_id=0)
    gen = tok.convert_tokens_to_ids(["<think>"])
    thought = tok.encode("so.wait.check.yes.", add_special_tokens=False)
    close = tok.convert_tokens_to_ids("</think>")
    for i, t in enumerate(thought):
        gen = gen + [t]
        out = proc(torch.tensor([prompt + gen]), torch.zeros(1, len(tok)))
        forced = int(out[0].argmax()) if bool(torch.isinf(out[0]).any()) else None
        if forced is not None:
            assert forced == close and i + 1 == stop_at
            per_trial = 3 + len(tok.encode("the answer is 3", add_special_tokens=False)) + 1  # close "\n\n", answer, eos
            assert proc.trial_tokens[0] == (stop_at // 2) * per_trial
            return
    pytest.fail("consistency never stopped")


@pytest.mark.parametrize("skip_bias,ended_by", [(30.0, "skipped"), (-30.0, "natural")])
def test_router_skips_when_the_skip_head_is_sure_and_never_stops_mid_thought(skip_bias, ended_by):
    tok = make_tokenizer()
    model = make_model("qwen3", len(tok))
    probe = Probe.random_for(model, width=4)
    probe.weights["ready_b2"].fill_(30.0)  # the ready head is sure everywhere: only the router ignores it
    probe.weights["skip_b2"].fill_(skip_bias)
    probe.ready_threshold, probe.skip_threshold = 0.5, 0.5
    ev = Evaluator(model, tok, [Item("a", "q", "1")], is_correct, probe=probe, max_new_tokens=24, progress=False)
    think = ev._think_config(parse_policy("router"))
    batch = tok([tok.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True,
                                         tokenize=False)], return_tensors="pt", add_special_tokens=False)
    words = tok.convert_tokens_to_ids(["so", "."])
    script = ScriptedReasoner(batch["input_ids"].shape[1], [12], tok.convert_tokens_to_ids(["<think>"]),
                              tok.convert_tokens_to_ids(["</think>"]), 1, words, tok.encode("ok", add_special_tokens=False))
    thinker = AdaptiveThinker(model, tok, probe=probe)
    thinker.generate(**batch, think=think, max_new_tokens=24, do_sample=False, logits_processor=[script])
    rep = thinker.last_reports[0]
    assert rep.ended_by == ended_by and rep.think_tokens == (0 if ended_by == "skipped" else 12)
    # the same probe with its own thresholds stops at once: the router differs only in never stopping
    from adaptive_think import ThinkConfig

    thinker.generate(**batch, think=ThinkConfig(policy="probe", allow_skip=False, stop_at_boundary=False),
                     max_new_tokens=24, do_sample=False, logits_processor=[script])
    assert thinker.last_reports[0].ended_by == "probe"
