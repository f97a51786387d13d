"""Hand-written tests of the controller's edge cases.

Each test pins one behaviour that a realistic single bug in the controller (torch reference, Triton
kernel, `controller.py`, `hf.py`, `config.py`) would break, checked on its own rather than only through a
kernel-vs-reference comparison. Two harnesses:

- `drive(...)` runs a `ThinkController` directly, the way an engine does (begin, one step per generated
  token, finish, reports), with a scripted token stream and a probe whose heads read chosen hidden
  coordinates (ready = sigmoid(h[0]), skip = sigmoid(h[1])), so every score is the one the test picks;
- `AdaptiveThinker.generate` on a tiny random model steered by a scripted logits processor, for what only
  shows end to end (prompt scanning, max_new_tokens, sampling warpers, output_scores).
"""

import math
from dataclasses import replace

import pytest
import torch
from transformers import LogitsProcessor

from adaptive_think import AdaptiveThinker, ThinkConfig
from adaptive_think.controller import ThinkController
from adaptive_think.markers import ThinkMarkers
from adaptive_think.probe import Probe
from adaptive_think.probe.probe import model_fingerprint
from tiny import ScriptedReasoner, make_model, make_tokenizer

# ----------------------------------------------------------------------------------------------------
# direct driving: toy token ids, scores chosen through the hidden state

V, D = 32, 4
EOS, OPEN, CLOSE, CLOSE_B, EXIT = 1, 2, 3, 4, 5
WORD, OTHER = 10, 11  # ordinary thinking tokens (never boundaries)
IMPLS = ["torch", pytest.param("triton", marks=pytest.mark.kernels)]


def reading_probe() -> Probe:
    """Linear heads reading one hidden coordinate each: ready = sigmoid(h[0]), skip = sigmoid(h[1])."""
    w = {"mean": torch.zeros(D), "inv_std": torch.ones(D)}
    for i, head in enumerate(("ready", "skip")):
        w.update({f"{head}_w1": torch.eye(D)[i : i + 1].clone(), f"{head}_b1": torch.zeros(1),
                  f"{head}_w2": torch.ones(1), f"{head}_b2": torch.zeros(1)})
    return Probe(layer=0, kind="linear", weights=w, fingerprint={})


def logit(p: float) -> float:
    return 0.0 if p == 0.5 else math.log(p / (1.0 - p))  # sigmoid(0.0) is exactly 0.5


def hidden(ready: float, skip: float = 0.01) -> torch.Tensor:
    """[1, D] hidden state the reading probe scores as (ready, skip)."""
    h = torch.zeros(1, D)
    h[0, 0], h[0, 1] = logit(ready), logit(skip)
    return h


def controller(config: ThinkConfig, close=(CLOSE,), threshold=0.5, skip_threshold=0.5, impl="torch"):
    """A one-row controller on the toy ids; a stop or skip writes the close marker then EXIT."""
    markers = ThinkMarkers("<o>", "</o>", (OPEN,), tuple(close), "explicit")
    probe = reading_probe() if config.policy == "probe" else None
    changes = {"exit_text": "<exit>"}
    if config.policy == "probe":
        changes.update(threshold=threshold, skip_threshold=skip_threshold)
    return ThinkController(markers, replace(config, **changes), encode={"<exit>": [EXIT]}.__getitem__, eos_ids=(EOS,),
                           probe=probe, vocab_size=V, device="cpu", impl=impl)


def drive(ctl, proposals, scores=None, prompt=(WORD, OPEN)):
    """Run ctl like an engine on one row: at step t the model proposes proposals[t] unless the controller
    forces a token. scores[t] = (ready, skip) seen at step t (probe policy). The default prompt ends inside
    an open thought (R1-style). Returns (forced tokens per step, written tokens, the row's report)."""
    ctl.begin(torch.tensor([list(prompt)]))
    last = torch.tensor([prompt[-1]])
    forced_seen, written = [], []
    for t, proposal in enumerate(proposals):
        h = hidden(*scores[t]) if scores is not None else None
        forced = int(ctl.step(last, h)[0])
        tok = forced if forced >= 0 else proposal
        forced_seen.append(forced)
        written.append(tok)
        last = torch.tensor([tok])
    ctl.finish(last)
    return forced_seen, written, ctl.reports()[0]


# ----------------------------------------------------------------------------------------------------
# min_think_tokens, hysteresis, the threshold comparison


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("minimum", [1, 3, 7])
def test_min_think_tokens_alone_delays_the_first_stop_to_exactly_that_count(minimum, impl):
    cfg = ThinkConfig(policy="probe", min_think_tokens=minimum, patience=1, stop_at_boundary=False, allow_skip=False)
    n = 12
    forced, written, rep = drive(controller(cfg, impl=impl), [WORD] * n, scores=[(0.9, 0.01)] * n)
    # step t observes the t-th thinking token: the stop is decided at step `minimum` and forces the close there
    assert forced[:minimum] == [-1] * minimum
    assert forced[minimum : minimum + 3] == [CLOSE, EXIT, -1]
    assert (rep.think_tokens, rep.ended_by, rep.decision_step) == (minimum, "probe", minimum)
    assert written[:minimum] == [WORD] * minimum


@pytest.mark.parametrize("impl", IMPLS)
def test_patience_two_never_stops_on_a_score_alternating_around_the_threshold(impl):
    cfg = ThinkConfig(policy="probe", patience=2, stop_at_boundary=False, allow_skip=False)
    n = 24
    scores = [(0.6 if t % 2 else 0.4, 0.01) for t in range(n)]
    forced, _, rep = drive(controller(cfg, impl=impl), [WORD] * n, scores=scores)
    assert forced == [-1] * n
    assert (rep.ended_by, rep.think_tokens, rep.decision_step) == ("unfinished", n, -1)


@pytest.mark.parametrize("impl", IMPLS)
def test_patience_two_stops_on_the_second_consecutive_pass(impl):
    """The counterpart of the alternating test: two passes in a row do stop, at the second one."""
    cfg = ThinkConfig(policy="probe", patience=2, stop_at_boundary=False, allow_skip=False)
    scores = [(0.4, 0.01), (0.6, 0.01), (0.4, 0.01), (0.6, 0.01), (0.6, 0.01), (0.4, 0.01), (0.4, 0.01)]
    forced, _, rep = drive(controller(cfg, impl=impl), [WORD] * len(scores), scores=scores)
    assert forced == [-1, -1, -1, -1, CLOSE, EXIT, -1]
    assert (rep.ended_by, rep.decision_step, rep.think_tokens) == ("probe", 4, 4)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_score_equal_to_the_threshold_passes(impl):
    """Calibration counts score >= threshold as a stop; the controller must draw the line at the same place."""
    cfg = ThinkConfig(policy="probe", stop_at_boundary=False, allow_skip=False)
    forced, _, rep = drive(controller(cfg, threshold=0.5, impl=impl), [WORD] * 4, scores=[(0.4, 0.01)] * 2 + [(0.5, 0.01)] * 2)
    assert forced == [-1, -1, CLOSE, EXIT]
    assert (rep.ended_by, rep.decision_step) == ("probe", 2)


@pytest.mark.parametrize("impl", IMPLS)
def test_smoothing_weighs_the_newest_score_by_alpha(impl):
    """EMA with weight 0.25 on the newest ready score (asymmetric: a swapped weight shows), from 0 at the block's
    start; the stop comes at the first step whose smoothed score reaches the threshold."""
    alpha, threshold = 0.25, 0.6
    cfg = ThinkConfig(policy="probe", smoothing=alpha, patience=1, stop_at_boundary=False, allow_skip=False)
    ready = [0.5, 0.9, 0.2, 0.95, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99]
    ctl = controller(cfg, threshold=threshold, impl=impl)
    ctl.begin(torch.tensor([[WORD, OPEN]]))  # the prompt opens the block: every step reads a thought
    ema, stop = 0.0, None
    for t, r in enumerate(ready):
        forced = int(ctl.step(torch.tensor([OPEN if t == 0 else WORD]), hidden(r))[0])
        ema = alpha * r + (1 - alpha) * ema
        assert float(ctl.state.ema[0]) == pytest.approx(ema, rel=1e-6), f"step {t}"
        if forced >= 0:
            stop = t
            break
    by_hand = [0.0]
    for r in ready:
        by_hand.append(alpha * r + (1 - alpha) * by_hand[-1])
    assert stop == next(t for t, e in enumerate(by_hand[1:]) if e >= threshold) and stop >= 4


# ----------------------------------------------------------------------------------------------------
# the skip decision


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("opens_in_prompt", [True, False], ids=["prompt-opens", "model-opens"])
def test_skip_score_that_rises_after_the_prompt_never_skips(opens_in_prompt, impl):
    cfg = ThinkConfig(policy="probe", stop_at_boundary=False)
    n = 10
    # below the skip threshold at the end of the prompt, far above it at every later step; ready never passes
    scores = [(0.01, 0.2)] + [(0.01, 0.99)] * (n - 1)
    prompt = (WORD, OPEN) if opens_in_prompt else (WORD, OTHER)
    proposals = [WORD] * n if opens_in_prompt else [OPEN] + [WORD] * (n - 1)
    forced, written, rep = drive(controller(cfg, skip_threshold=0.5, impl=impl), proposals, scores=scores, prompt=prompt)
    assert forced == [-1] * n and written == proposals
    assert rep.ended_by == "unfinished" and rep.decision_step == -1


@pytest.mark.parametrize("impl", IMPLS)
def test_skip_score_above_its_threshold_at_the_prompt_skips(impl):
    """The counterpart: the same stream with the high skip score at the end of the prompt skips at once."""
    cfg = ThinkConfig(policy="probe", stop_at_boundary=False)
    forced, _, rep = drive(controller(cfg, skip_threshold=0.5, impl=impl), [WORD] * 4, scores=[(0.01, 0.99)] * 4)
    assert forced == [CLOSE, EXIT, -1, -1]
    assert (rep.ended_by, rep.decision_step, rep.think_tokens) == ("skipped", 0, 0)


# ----------------------------------------------------------------------------------------------------
# multi-token close marker interrupted


@pytest.mark.parametrize("impl", IMPLS)
def test_interrupted_two_token_close_marker_leaves_the_row_thinking(impl):
    ctl = controller(ThinkConfig(), close=(CLOSE, CLOSE_B), impl=impl)
    stream = [WORD, CLOSE, WORD, CLOSE_B, WORD, WORD]  # A, x, B is not the marker A, B
    forced, _, rep = drive(ctl, stream + [WORD])
    assert forced == [-1] * 7
    assert (rep.ended_by, rep.decision_step, rep.think_tokens) == ("unfinished", -1, 7)
    # the same row with the marker written whole closes naturally at its last token
    ctl = controller(ThinkConfig(), close=(CLOSE, CLOSE_B), impl=impl)
    _, _, rep = drive(ctl, [WORD, CLOSE, WORD, CLOSE, CLOSE_B, WORD, WORD])
    assert (rep.ended_by, rep.decision_step, rep.think_tokens) == ("natural", 4, 3)


@pytest.mark.parametrize("impl", IMPLS)
def test_interrupted_close_marker_does_not_end_a_capped_thought_early(impl):
    """Under a budget, the A, x, B row is cut by the budget at its 6th thinking token, not closed by the fake marker."""
    ctl = controller(ThinkConfig(policy="budget", max_think_tokens=6), close=(CLOSE, CLOSE_B), impl=impl)
    forced, _, rep = drive(ctl, [WORD, CLOSE, WORD, CLOSE_B, WORD, WORD, WORD, WORD, WORD, WORD])
    assert forced[5:10] == [-1, CLOSE, CLOSE_B, EXIT, -1]
    assert (rep.ended_by, rep.decision_step, rep.think_tokens) == ("budget", 6, 6)


# ----------------------------------------------------------------------------------------------------
# budget and probe on the same step


@pytest.mark.parametrize("impl", IMPLS)
def test_budget_and_probe_firing_on_the_same_step_report_budget(impl):
    # the probe is ready from the start but held back by min_think_tokens until the budget step itself
    cfg = ThinkConfig(policy="probe", max_think_tokens=4, min_think_tokens=4, stop_at_boundary=False, allow_skip=False)
    forced, _, rep = drive(controller(cfg, impl=impl), [WORD] * 8, scores=[(0.9, 0.01)] * 8)
    assert forced[:7] == [-1] * 4 + [CLOSE, EXIT, -1]
    assert (rep.ended_by, rep.decision_step, rep.think_tokens) == ("budget", 4, 4)
    # one token earlier the probe alone fires and is reported as the probe
    cfg = ThinkConfig(policy="probe", max_think_tokens=4, min_think_tokens=3, stop_at_boundary=False, allow_skip=False)
    _, _, rep = drive(controller(cfg, impl=impl), [WORD] * 8, scores=[(0.9, 0.01)] * 8)
    assert (rep.ended_by, rep.decision_step, rep.think_tokens) == ("probe", 3, 3)


# ----------------------------------------------------------------------------------------------------
# end to end through AdaptiveThinker.generate on a tiny model

TOK = make_tokenizer()
MODEL = make_model("qwen3", len(TOK))
WORD_IDS = TOK.encode("so wait check again ok x y", add_special_tokens=False)
ANSWER_IDS = TOK.encode(" the answer is 7", add_special_tokens=False)


def ids(text):
    return TOK.encode(text, add_special_tokens=False)


def scripted_generate(thinker, prompts, think, think_len, max_new_tokens=40, engine="hf", **kw):
    """Generate with the scripted reasoner (it opens its own thought); returns the generated ids per row."""
    m = thinker.markers
    batch = TOK(prompts, return_tensors="pt", padding=True)
    script = ScriptedReasoner(batch["input_ids"].shape[1], think_len, m.open_ids, m.close_ids, TOK.eos_token_id,
                              WORD_IDS, ANSWER_IDS)
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False, think=think, engine=engine, **kw)
    if engine == "hf":
        out = thinker.generate(**batch, logits_processor=[script], **kw)
    else:  # the graph engine takes no logits processors: the scripted choice is the model's own greedy choice
        out = thinker.generate(**batch, **kw)
    return out[:, batch["input_ids"].shape[1] :].tolist()


def few_shot_prompt(tail_tokens: int) -> str:
    """A prompt holding a finished thought whose close marker has `tail_tokens` tokens after it."""
    done = "x : 2 , 2\n<think> so 4 </think> the answer is 4\n"
    filler = ["x", " ", "ok", ":", " ", "y", " ", "check", " ", "z", "\n"]  # one token each, never merging
    text = done + "".join((filler * 4)[: tail_tokens - len(ids(done[done.index("</think>") + len("</think>") :]))])
    tail = ids(text)
    close = ids("</think>")[0]
    assert len(tail) - 1 - max(i for i, t in enumerate(tail) if t == close) == tail_tokens
    return text


@pytest.mark.parametrize("tail", [9, 30])
def test_few_shot_prompt_with_a_finished_thought_starts_in_prompt_and_the_budget_cuts(tail):
    thinker = AdaptiveThinker(MODEL, TOK)
    cfg = ThinkConfig(policy="budget", max_think_tokens=4, exit_text="\n\n")
    gen = scripted_generate(thinker, [few_shot_prompt(tail)], cfg, [10])[0]
    m = thinker.markers
    o = gen.index(m.open_ids[0])
    c = gen.index(m.close_ids[0])
    assert o == 0 and c == 1 + 4  # the model opened a new thought and the budget cut it after 4 tokens
    assert gen[c + 1 : c + 3] == ids("\n\n")
    rep = thinker.last_reports[0]
    # one block: the prompt's finished thought is not the row's (a row started as closed would count two)
    assert (rep.think_tokens, rep.ended_by, rep.decision_step, rep.blocks) == (4, "budget", 1 + 4, 1)


def test_few_shot_prompt_ending_inside_a_new_thought_counts_from_the_first_token():
    """A finished earlier block does not hide a block the prompt itself opens at its end (R1-style)."""
    thinker = AdaptiveThinker(MODEL, TOK)
    prompt = few_shot_prompt(12) + "<think>\n"
    batch = TOK([prompt], return_tensors="pt")
    m = thinker.markers
    script = ScriptedReasoner(batch["input_ids"].shape[1], [9], m.open_ids, m.close_ids, TOK.eos_token_id, WORD_IDS,
                              ANSWER_IDS, opens_itself=False)
    out = thinker.generate(**batch, max_new_tokens=20, do_sample=False, logits_processor=[script],
                           think=ThinkConfig(policy="budget", max_think_tokens=3))
    gen = out[0, batch["input_ids"].shape[1] :].tolist()
    assert gen.index(m.close_ids[0]) == 3
    assert (thinker.last_reports[0].ended_by, thinker.last_reports[0].think_tokens) == ("budget", 3)


@pytest.mark.parametrize("budget", [1, 5])
def test_generation_ending_on_the_budget_th_thinking_token_reports_unfinished(budget):
    thinker = AdaptiveThinker(MODEL, TOK)
    cfg = ThinkConfig(policy="budget", max_think_tokens=budget)
    # the open marker, then exactly `budget` thinking tokens: max_new_tokens runs out before the cap acts
    gen = scripted_generate(thinker, ["the answer is"], cfg, [20], max_new_tokens=1 + budget)[0]
    assert gen == list(thinker.markers.open_ids) + [WORD_IDS[i] for i in range(budget)]
    rep = thinker.last_reports[0]
    assert (rep.think_tokens, rep.ended_by, rep.decision_step) == (budget, "unfinished", -1)
    # one more token and the cap writes the close marker
    gen = scripted_generate(thinker, ["the answer is"], cfg, [20], max_new_tokens=2 + budget)[0]
    assert gen[-1] == thinker.markers.close_ids[0]
    assert (thinker.last_reports[0].ended_by, thinker.last_reports[0].decision_step) == ("budget", 1 + budget)


@pytest.mark.parametrize("engine", ["hf", "graph"])
def test_both_engines_report_unfinished_when_tokens_run_out_on_the_budget_th_thinking_token(engine):
    """The same on the model's own tokens, through each engine's own end-of-generation path."""
    thinker = AdaptiveThinker(MODEL, TOK)
    batch = TOK(["the answer is <think>\n", "x so <think>\n"], return_tensors="pt", padding=True)  # R1-style
    budget = 5
    out = thinker.generate(**batch, think=ThinkConfig(policy="budget", max_think_tokens=budget), engine=engine,
                           max_new_tokens=budget, do_sample=False)
    gen = out[:, batch["input_ids"].shape[1] :]
    m = thinker.markers
    assert not torch.isin(gen, torch.tensor(m.close_ids + (TOK.eos_token_id,))).any()  # the random model never closes
    assert [(r.think_tokens, r.ended_by, r.decision_step) for r in thinker.last_reports] == [
        (budget, "unfinished", -1)] * 2
    out = thinker.generate(**batch, think=ThinkConfig(policy="budget", max_think_tokens=budget), engine=engine,
                           max_new_tokens=budget + 1, do_sample=False)
    assert (out[:, -1] == m.close_ids[0]).all()
    assert [(r.ended_by, r.decision_step) for r in thinker.last_reports] == [("budget", budget)] * 2


def constant_probe(ready: float, skip: float) -> Probe:
    """A linear probe for MODEL that scores (ready, skip) whatever the hidden state."""
    d = MODEL.config.hidden_size
    w = {"mean": torch.zeros(d), "inv_std": torch.ones(d)}
    for head, p in (("ready", ready), ("skip", skip)):
        w.update({f"{head}_w1": torch.zeros(1, d), f"{head}_b1": torch.zeros(1), f"{head}_w2": torch.ones(1),
                  f"{head}_b2": torch.tensor([logit(p)])})
    return Probe(layer=1, kind="linear", weights=w, fingerprint=model_fingerprint(MODEL))


@pytest.mark.parametrize("engine", ["hf", "graph"])
def test_allow_skip_false_never_skips_even_at_skip_threshold_zero(engine):
    thinker = AdaptiveThinker(MODEL, TOK, probe=constant_probe(ready=0.01, skip=0.99))
    prompts = ["the answer is <think>\n", "x so <think>\n"]  # R1-style: the random model thinks from the start
    no_skip = ThinkConfig(policy="probe", skip_threshold=0.0, allow_skip=False, stop_at_boundary=False)
    batch = TOK(prompts, return_tensors="pt", padding=True)
    out = thinker.generate(**batch, think=no_skip, engine=engine, max_new_tokens=6, do_sample=False)
    ref = MODEL.generate(**batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, ref)  # nothing forced
    assert all(r.ended_by != "skipped" and r.decision_step == -1 for r in thinker.last_reports)
    # the counterpart: the same config with skipping allowed skips every row at step 0
    thinker.generate(**batch, think=ThinkConfig(policy="probe", skip_threshold=0.0, stop_at_boundary=False),
                     engine=engine, max_new_tokens=6, do_sample=False)
    assert all(r.ended_by == "skipped" and r.decision_step == 0 for r in thinker.last_reports)


class BanMarkers(LogitsProcessor):
    """The model itself never writes the think markers or eos (so only the controller can close a thought)."""

    def __init__(self, banned):
        self.banned = list(banned)

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.banned] = float("-inf")
        return scores


@pytest.mark.parametrize("seed", [0, 1])
def test_budget_cut_survives_extreme_sampling_temperature_and_scores_show_one_finite_logit(seed):
    thinker = AdaptiveThinker(MODEL, TOK)
    m = thinker.markers
    prompts = ["the answer is <think>\n", "x so <think>\n", "check 3 <think>\n"]
    batch = TOK(prompts, return_tensors="pt", padding=True)
    plen = batch["input_ids"].shape[1]
    cfg = ThinkConfig(policy="budget", max_think_tokens=3, exit_text=" so :")
    exit_ids = ids(" so :")
    torch.manual_seed(seed)
    out = thinker.generate(**batch, think=cfg, max_new_tokens=10, do_sample=True, temperature=1e5, top_k=0,
                           logits_processor=[BanMarkers(m.open_ids + m.close_ids + (TOK.eos_token_id,))],
                           return_dict_in_generate=True, output_scores=True)
    gen = out.sequences[:, plen:]
    forced_span = list(m.close_ids) + exit_ids  # written at generated steps 3 .. 3 + len - 1
    for row in range(len(prompts)):
        assert gen[row, 3 : 3 + len(forced_span)].tolist() == forced_span
        assert (thinker.last_reports[row].ended_by, thinker.last_reports[row].think_tokens) == ("budget", 3)
    scores = torch.stack(out.scores, 1)  # [B, steps, V] after every processor and warper
    finite = torch.isfinite(scores).sum(-1)  # [B, steps]
    for step in range(3, 3 + len(forced_span)):
        assert (finite[:, step] == 1).all(), f"forced step {step} keeps {finite[:, step].tolist()} finite logits"
        assert torch.equal(scores[:, step].argmax(-1), gen[:, step])
    # free steps keep the model's whole (non-banned) distribution: the temperature really flattened it
    assert (finite[:, :3] == len(TOK) - 3).all()
