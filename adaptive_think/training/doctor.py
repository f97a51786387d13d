"""doctor: will the probe pipeline work on this model as configured? Checks that take seconds, each with its fix.

It resolves the think markers, renders the chat template with thinking on and off, answers a few sample
questions with full thinking (through the controller, whose reports say how each thought ended) and
with thinking skipped (the prompt `collect` uses), and checks what `collect` needs: thoughts that open,
close on their own, answers the checker can read, and some right with full thinking. Then it labels the
checkpoints of the sample thoughts as `collect` does (a forced exit at each, no hidden states kept) and reports
the AUROC of each training-free score (close-margin, entropy) at them: which score separates right from wrong
exits on the user's own questions, and on how many checkpoints that rests. Last, what collecting `collect_n`
questions would cost with each engine (collect's own accounting of the sample, scaled; see `engine_estimates`).

    from adaptive_think.training.doctor import DoctorConfig, examine
    result = examine(model, tokenizer, items, checker, DoctorConfig(samples=4))   # result.checks, result.ready
    adaptive-think doctor --model DIR --questions q.jsonl --checker boxed       # the same, as a table
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adaptive_think.loading import chat_prompt
from adaptive_think.markers import resolve_markers
from adaptive_think.training.collect import COST_KEYS, continuations
from adaptive_think.training.items import Item
from adaptive_think.training.thoughts import no_think_prompt, read_or_none, thought_span

OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"
# collect's time over plain generation of the same thoughts, measured by benchmarks/collect_cost.py per thought length
_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
COST_BENCHMARK = (str(_RESULTS / "collect_cost_cpu.json"), str(_RESULTS / "collect_cost_vllm_cpu.json"))
# tokens per KV block in vLLM: prefix caching reuses whole blocks, so an exit prompt re-prefills its prefix's last,
# partial block (on average half a block) besides its own tokens
VLLM_BLOCK = 16


@dataclass
class DoctorConfig:
    """How the doctor tries the model (the defaults match `collect`'s)."""

    samples: int = 4  # sample questions answered
    max_new_tokens: int = 512  # thought + answer budget with full thinking
    max_answer_tokens: int = 16  # answer budget with thinking skipped
    exit_text: str = "\n\n"  # written after the close marker of a skipped thought
    every: int = 8  # collect's checkpoint interval, for the cost estimate
    collect_n: int = 1000  # questions the cost estimate is for (collect's --n default)
    # files of collect / generation ratios the wall-time estimate rests on (the hf engine's, vLLM's)
    cost_benchmark: tuple = COST_BENCHMARK

    def __post_init__(self):
        for name in ("samples", "max_new_tokens", "max_answer_tokens", "collect_n"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DoctorConfig.{name} must be a positive integer, got {value!r}.")


@dataclass
class Check:
    """One line of the doctor's table; `fix` says what to do when the status is FAIL or warn."""

    name: str
    result: str
    status: str  # ok | warn | FAIL | info
    fix: str = ""


@dataclass
class Examination:
    """What `examine` found: the checks in order, the rendered prompts, one raw output and what was read."""

    checks: list[Check] = field(default_factory=list)
    prompts: dict[str, str] = field(default_factory=dict)  # "thinking on" / "thinking off" -> prompt text
    sample: dict | None = None  # {"question", "answer", "output", "reads", "read", "right"}
    # the sample thoughts' checkpoints labelled by forced exits (collect's records, no states); [] when not run
    records: list[dict] = field(default_factory=list)
    scores: dict = field(default_factory=dict)  # kind -> {"ready_auroc", "checkpoints", "right", "wrong"}
    estimates: list[dict] = field(default_factory=list)  # what collecting collect_n questions costs, per engine

    @property
    def ready(self) -> bool:
        """True when no check fails: `collect` can produce data a probe can be trained on."""
        return not any(c.status == FAIL for c in self.checks)


def _other_checkers(texts: list[tuple[str, str]], current: str | None) -> str:
    """Which built-in checkers read these outputs, and how many they get right."""
    from adaptive_think.tasks.checkers import CHECKERS

    found = []
    for name, checker in CHECKERS.items():
        if name == current:
            continue
        read = sum(checker.read(t) is not None for t, _ in texts)
        right = sum(bool(checker(t, a)) for t, a in texts)
        if read:
            found.append((right, read, name))
    if not found:
        return "no built-in checker reads them either: write your own (--checker package.module:function)"
    found.sort(reverse=True)
    return "; ".join(f"--checker {n} reads {r}/{len(texts)}, {k} right" for k, r, n in found[:3])


def _template(tokenizer, markers, question: str, exit_text: str, ex: Examination) -> None:
    on = chat_prompt(tokenizer, question)
    off = no_think_prompt(tokenizer, question, markers, exit_text)
    ex.prompts = {"thinking on": on, "thinking off": off}
    template = getattr(tokenizer, "chat_template", None) or ""
    if not template:
        ex.checks.append(Check("chat template", "none: the raw question is the prompt", WARN,
                               "save the model's chat template with its tokenizer (tokenizer_config.json or "
                               "chat_template.jinja) so prompts look like the ones it was trained on"))
    body, _ = thought_span(tokenizer.encode(on, add_special_tokens=False), [], markers)
    where = (f"the prompt opens the thought (ends inside {markers.open_text!r})" if body is not None
             else f"the model must write {markers.open_text!r} itself")
    ex.checks.append(Check("thinking on", where, INFO))
    switch = "enable_thinking" in str(template)
    if off == chat_prompt(tokenizer, question, enable_thinking=False):
        ex.checks.append(Check("thinking off", "the template's enable_thinking=False prompt ends in a closed think block", OK))
    else:
        why = "has no enable_thinking switch" if not switch else "ignores enable_thinking=False"
        ex.checks.append(Check("thinking off", f"the template {why}; collect appends an empty think block", INFO))


@dataclass
class CollectSample:
    """What collect's own code measured on doctor's sample questions, with what the estimates of other engines need.

    cost: collect's counts over the sample (COST_KEYS totals, hf engine, the route this model takes); the rest are
    per question: thought length, generated tokens without batch padding (thought + answer), thinking-on and
    no-think prompt tokens, generation seconds here (at doctor's batch of `questions`), bytes of the records' JSON;
    row_bytes: one checkpoint row of states (candidate layers x hidden size x 2, fp16).
    """

    cost: dict
    questions: int
    thought_tokens: float
    own_tokens: float
    prompt_tokens: float
    nothink_prompt_tokens: float
    seconds: float
    record_bytes: float
    row_bytes: int


def measured_ratio(paths, thought: float, key: str) -> tuple[float, int, str] | None:
    """(ratio, T, file name) from the row of the benchmark files `paths` (one path or several) whose thought length
    T is nearest `thought` (log scale) among rows that hold `key`; None when no file holds the key."""
    rows = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        try:
            rows += [(r, Path(path).name) for r in json.loads(Path(path).read_text())["rows"] if key in r]
        except (OSError, ValueError, KeyError):
            continue
    if not rows:
        return None
    row, name = min(rows, key=lambda rn: abs(math.log(rn[0]["T"] / max(thought, 1.0))))
    return float(row[key]), int(row["T"]), name


def engine_estimates(sample: CollectSample, n: int, benchmark) -> list[dict]:
    # benchmark: one benchmark file or several (COST_BENCHMARK)
    """collect's cost accounting (format_cost) for `n` questions, per engine, scaled from the sample.

    hf: the sample's own counts (decode positions of the batch, prompts, forced exits on the thought's cache or
    re-prefilled, no-think answers) x n / questions; wall time: the sample's generation seconds per question x n x
    the collect / generation ratio `benchmark` measured at the nearest thought length (`ratio_cpu`).
    vllm: each sequence decodes to its own end (no batch padding); prefill: both prompts, one teacher-forced pass
    over prompt + thought for the states, and per forced exit the half block prefix caching cannot reuse; the
    forced and answer tokens as on hf. Wall time from `vllm_ratio_cpu` (`collect --engine vllm`'s time over the same
    row's plain hf generate(), so it scales the same measured generation time) when the benchmark holds one.
    """
    q = sample.questions
    per = {k: sample.cost[k] / q for k in COST_KEYS}
    bytes_q = sample.record_bytes + (1 + per["forced_exits"]) * sample.row_bytes
    shared = dict(questions=n, estimated=True, thought_tokens=sample.thought_tokens, bytes_per_question=bytes_q,
                  **{k: per[k] * n for k in ("forced_exits", "exit_tokens", "nothink_tokens")})
    vllm_prefill = (2 * sample.prompt_tokens + sample.nothink_prompt_tokens + sample.thought_tokens
                    + per["forced_exits"] * (VLLM_BLOCK - 1) / 2)
    out = []
    for engine, key, generated, prefill in (("hf", "ratio_cpu", per["generated_tokens"], per["prefill_tokens"]),
                                            ("vllm", "vllm_ratio_cpu", sample.own_tokens, vllm_prefill)):
        found = measured_ratio(benchmark, sample.thought_tokens, key)
        if found is None:
            names = " or ".join(Path(p).name for p in ([benchmark] if isinstance(benchmark, (str, Path)) else benchmark))
            wall, basis = None, f"no {key} in {names} to scale this machine's generation time by"
        else:
            ratio, t, name = found
            wall = sample.seconds * n * ratio
            basis = (f"{sample.seconds:.2f} s of generation per question here, batch {q}, x {ratio:.2f}, the collect / "
                     f"generation ratio {name} measured at T = {t}; collect's larger batches take "
                     "less per question")
        out.append(dict(shared, engine=engine, generated_tokens=generated * n, prefill_tokens=prefill * n,
                        wall_s=wall, wall_basis=basis))
    return out


def format_auroc(score: dict) -> str:
    """One training-free score's line: its AUROC at the labelled checkpoints, or why there is none."""
    n, right, wrong = score["checkpoints"], score["right"], score["wrong"]
    if n == 0:
        return "n/a (no checkpoints labelled)"
    if right == 0 or wrong == 0:
        return f"n/a (all {'wrong' if right == 0 else 'right'}) at {n} checkpoints"
    return f"AUROC {score['ready_auroc']:.3f} at {n} checkpoints ({right} right, {wrong} wrong forced exits)"


def _score_checks(model, tokenizer, markers, items, checker, cfg: DoctorConfig, ex: Examination) -> dict:
    """Label the sample thoughts' checkpoints by forced exits (collect's own code, no states) and add one line per
    training-free score: does it rank the right exits above the wrong ones here? Returns collect's counts of it."""
    from adaptive_think.controller import boundary_mask
    from adaptive_think.training.calibrate_score import score_aurocs
    from adaptive_think.training.collect import CollectConfig, collect_batch
    from adaptive_think.training.health import KIND_PROMPT

    ccfg = CollectConfig(every=cfg.every, batch_size=len(items), max_new_tokens=cfg.max_new_tokens,
                         max_answer_tokens=cfg.max_answer_tokens, exit_text=cfg.exit_text, states=False)
    boundary = boundary_mask(tokenizer, int(model.get_output_embeddings().weight.shape[0]))
    cost = dict.fromkeys(COST_KEYS, 0)
    ex.records, _, _ = collect_batch(model, tokenizer, markers, items, checker, ccfg, [], boundary, cost)
    labels = [bool(r["label"]) for r in ex.records if r["kind"] != KIND_PROMPT and r["label"] is not None]
    for kind, a in score_aurocs(ex.records).items():
        ex.scores[kind] = {"ready_auroc": a["ready_auroc"], "checkpoints": a["checkpoints"],
                           "right": sum(labels), "wrong": len(labels) - sum(labels)}
        ex.checks.append(Check(f"score {kind}", format_auroc(ex.scores[kind]), INFO))
    return cost


def _cost_checks(model, cfg: DoctorConfig, ex: Examination, cost: dict, gens, prompt_tokens: float,
                 nothink_prompt_tokens: float, seconds: float) -> None:
    """One line per engine: what collecting cfg.collect_n questions would cost (engine_estimates)."""
    from adaptive_think.probe.probe import model_fingerprint
    from adaptive_think.training.collect import CollectConfig, format_cost
    from adaptive_think.training.health import summarise

    shape = model_fingerprint(model)
    layers = len(CollectConfig().resolved_layers(shape["num_hidden_layers"]))
    n = len(gens)
    sample = CollectSample(cost=cost, questions=n, thought_tokens=summarise(ex.records)["mean_thought_len"],
                           own_tokens=sum(map(len, gens)) / n, prompt_tokens=prompt_tokens,
                           nothink_prompt_tokens=nothink_prompt_tokens, seconds=seconds,
                           record_bytes=len(json.dumps(ex.records)) / n, row_bytes=layers * shape["hidden_size"] * 2)
    ex.estimates = engine_estimates(sample, cfg.collect_n, cfg.cost_benchmark)
    for estimate in ex.estimates:
        ex.checks.append(Check(f"collect cost, {estimate['engine']}", format_cost(estimate), INFO))


@torch.no_grad()
def examine(model, tokenizer, items: list[Item], checker, cfg: DoctorConfig | None = None,
            think_tokens: tuple[str, str] | None = None, checker_name: str | None = None) -> Examination:
    """Run the checks on the first `cfg.samples` of `items`; see the module docstring."""
    from adaptive_think import AdaptiveThinker, ThinkConfig

    cfg = cfg or DoctorConfig()
    items = items[: cfg.samples]
    if not items:
        raise ValueError("doctor needs at least one sample question.")
    max_new_tokens, max_answer_tokens, exit_text = cfg.max_new_tokens, cfg.max_answer_tokens, cfg.exit_text
    ex = Examination()
    try:
        markers = resolve_markers(tokenizer, think_tokens)
    except ValueError as err:
        ex.checks.append(Check("think markers", "not found", FAIL, str(err)))
        return ex
    ids = (list(markers.open_ids), list(markers.close_ids))
    ex.checks.append(Check("think markers", f"{markers.open_text!r} {ids[0]} ... {markers.close_text!r} {ids[1]} "
                                            f"({markers.source})", OK))
    _template(tokenizer, markers, items[0].question, exit_text, ex)

    # full thinking, through the controller (policy full never intervenes)
    thinker = AdaptiveThinker(model, tokenizer, think_tokens=think_tokens)
    prompts = [chat_prompt(tokenizer, it.question) for it in items]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    t0 = time.perf_counter()
    out = thinker.generate(**batch, think=ThinkConfig(policy="full"), max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
    generate_s = time.perf_counter() - t0
    width = batch["input_ids"].shape[1]
    gens = [[t for t, m in zip(row, mask) if m] for row, mask in
            zip(out[:, width:].tolist(), (out[:, width:] != tokenizer.pad_token_id).tolist())]
    reports = thinker.last_reports
    full_texts = [tokenizer.decode(g, skip_special_tokens=False) for g in gens]

    # thinking skipped: the prompt collect labels the skip head with
    off = [tokenizer.encode(no_think_prompt(tokenizer, it.question, markers, exit_text), add_special_tokens=False)
           for it in items]
    no_think_texts = [markers.close_text + tokenizer.decode(g, skip_special_tokens=False)
                      for g in continuations(model, tokenizer, off, max_answer_tokens, len(items))]

    n = len(items)
    # the controller's reports: a row that never opened a block ends `natural` with no block
    opened = [r.blocks > 0 for r in reports]
    closed = [o and r.ended_by == "natural" for o, r in zip(opened, reports)]
    lengths = [r.think_tokens for o, r in zip(opened, reports) if o]
    if not any(opened):
        ex.checks.append(Check("opens a thought", f"0/{n}", FAIL,
                               f"the model never wrote {markers.open_text!r}: pass the markers it really thinks "
                               "between (--think-tokens OPEN CLOSE), or use a chat template that starts the thought "
                               f"(a prompt ending in {markers.open_text!r}); a model that is not a reasoner cannot "
                               "be probed"))
    else:
        ex.checks.append(Check("opens a thought", f"{sum(opened)}/{n}", OK if all(opened) else WARN,
                               "" if all(opened) else "rows that never think give no thought checkpoints"))
        status = FAIL if not any(closed) else OK if sum(closed) == sum(opened) else WARN
        ex.checks.append(Check(
            "closes it on its own", f"{sum(closed)}/{sum(opened)}; thoughts {sum(lengths) / len(lengths):.0f} tokens "
                                    f"on average, longest {max(lengths)}", status,
            "" if status == OK else f"thoughts ran past --max-new-tokens {max_new_tokens}: raise it (a thought that "
                                    "never closes has no answer to label)"))


    answers = [(t, it.answer) for t, it, c in zip(full_texts, items, closed) if c]
    answers += [(t, it.answer) for t, it in zip(no_think_texts, items)]
    parsed = [read_or_none(checker, t) for t, _ in answers]
    name = checker_name or getattr(checker, "name", None) or getattr(checker, "__name__", "checker")
    if parsed and parsed[0] is None:
        ex.checks.append(Check("checker reads answers", f"{name}: cannot say (it only answers right / wrong)", INFO))
    elif not any(parsed):
        ex.checks.append(Check("checker reads answers", f"{name}: 0/{len(parsed)}", FAIL,
                               "the model answers in another format than the checker reads: "
                               + _other_checkers(answers, getattr(checker, "name", None))))
    else:
        ex.checks.append(Check("checker reads answers", f"{name}: {sum(parsed)}/{len(parsed)}",
                               OK if all(parsed) else WARN, "" if all(parsed) else "unread answers count as wrong"))
    full_ok = [c and bool(checker(t, it.answer)) for t, it, c in zip(full_texts, items, closed)]
    nothink_ok = [bool(checker(t, it.answer)) for t, it in zip(no_think_texts, items)]
    earlier = any(c.status == FAIL for c in ex.checks)
    ex.checks.append(Check("accuracy, full thinking", f"{sum(full_ok)}/{n}", OK if any(full_ok) else FAIL,
                           "" if any(full_ok) else "follows from the failing checks above" if earlier else
                           "no sample right with full thinking: check the reference answers, the checker and "
                           "--max-new-tokens (every label would be 'wrong')"))
    ex.checks.append(Check("accuracy, no thinking", f"{sum(nothink_ok)}/{n}", INFO))
    if any(closed):
        cost = _score_checks(model, tokenizer, markers, items, checker, cfg, ex)
        _cost_checks(model, cfg, ex, cost, gens, batch["attention_mask"].sum().item() / n,
                     sum(map(len, off)) / n, generate_s / n)
    read = getattr(checker, "read", None)
    ex.sample = {"question": items[0].question, "answer": items[0].answer, "output": full_texts[0],
                 "reads": read is not None, "read": read(full_texts[0]) if read else None, "right": full_ok[0]}
    return ex
