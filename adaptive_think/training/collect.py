"""collect: label every checkpoint of each full thought by forcing an exit there (docs/design.md, "The probe").

For each question: generate the full thought (greedy, or sampled with `sampling`), record the hidden states of the candidate
layers at the prompt's end and at checkpoints (every k thought tokens and at step boundaries), force
the exit (close marker + exit text) at each checkpoint and decode the answer to label it, and answer
once with thinking skipped for the skip head. Output: append-only shards (see shards.py); an
interrupted run resumes where it stopped. One writer per rank and folder (a lock file, see files.py).

After the first batch and at the end it prints the collection's health (health.py) and, unless
`fail_fast=False`, stops with the likely cause when no thought opened, no answer was parsed, or full
thinking got nothing right, instead of spending the rest of the run.

    adaptive-think collect --model bundled --n 600 --seed 11 --out runs/collect
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor

from adaptive_think.config import decoding_of
from adaptive_think.controller import boundary_mask
from adaptive_think.controller.logit_score import checkpoint_scores
from adaptive_think.engines.args import eos_token_ids
from adaptive_think.engines.layer_hook import LayerCapture
from adaptive_think.files import exclusive_lock
from adaptive_think.loading import chat_prompt
from adaptive_think.markers import ThinkMarkers, resolve_markers
from adaptive_think.training.branches import Branch, branch_answers, shared_route_refusal, until_eos
from adaptive_think.training.health import DOCTOR, KIND_PROMPT, KIND_THOUGHT, diagnose, format_summary, summarise
from adaptive_think.training.items import Item, question_hash
from adaptive_think.probe.probe import model_fingerprint
from adaptive_think.training.shards import (THOUGHT_PREFIX, clean_orphans, lock_path, rank_records, read_index, write_index,
                                         write_shard)
from adaptive_think.training.thoughts import no_think_prompt, read_or_none, thought_span

OUTPUT_TAIL_CHARS = 400
# what collect counts (tokens per run): decode positions of the thoughts, prompt (and re-prefilled exit) tokens,
# forced exits, tokens fed or decoded after them (forced + answer), no-think answer tokens
COST_KEYS = ("generated_tokens", "prefill_tokens", "forced_exits", "exit_tokens", "nothink_tokens")


class CollectionUnusable(ValueError):
    """Collected data that no probe can be trained on; `key` is "no_thought" | "no_parse" | "none_right"."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass
class CollectConfig:
    """Settings of one collection run (recorded in the index; a resumed run must match)."""

    layers: list[int] | None = None  # candidate layers; None: up to 6 spread over the upper two thirds
    every: int = 8  # a checkpoint every k thought tokens, besides step boundaries; 0: step boundaries only
    batch_size: int = 32
    max_new_tokens: int = 512  # thought + answer budget of the full generation
    max_answer_tokens: int = 16  # tokens decoded after a forced exit
    exit_text: str = "\n\n"
    shard_questions: int = 64  # questions per shard
    # generate() kwargs of every generation, e.g. {"do_sample": True, "temperature": 0.6, "top_p": 0.95}; {}: greedy
    sampling: dict = field(default_factory=dict)
    sampling_seed: int = 0
    # keep every thought token's state too (tensors `thought_layer{l}`; a question's prompt record counts its rows
    # in `thought_states`): what a head with memory over the whole thought trains on; about 3x the disk
    token_states: bool = False
    # False: store no hidden states at all (the cheap collection a training-free score file calibrates on;
    # every record still carries its logit scores, see _StepRecorder)
    states: bool = True
    # with token_states: keep the thought-token states of these candidate layers only (None: all of them); e.g. the
    # layer a first collection's `train-probe` chose, so the disk grows with T x D of one layer, not L of them
    token_layers: list[int] | None = None
    # with token_states: keep the state of every S-th thought token only, those that have read S, 2S, 3S, ... thought
    # tokens (the prompt record's `thought_states` counts the kept rows, `thought_stride` says S when S > 1); the
    # checkpoint rows (`layer{l}`) still hold every checkpoint's state, and memory.py merges the two
    token_stride: int = 1
    fail_fast: bool = True  # stop after the first batch when the data cannot train a probe (not a setting of the data)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"every={self.every}: give a checkpoint interval >= 1, or 0 for step boundaries only.")
        unknown = set(self.sampling) - {"do_sample", "temperature", "top_p", "top_k", "min_p"}
        if unknown:
            raise ValueError(f"sampling={self.sampling}: {sorted(unknown)} are not sampling settings "
                             "(do_sample, temperature, top_p, top_k, min_p).")
        if self.token_states and not self.states:
            raise ValueError("token_states=True keeps every thought token's state, states=False keeps none: choose one.")
        if self.token_layers is not None and not self.token_states:
            raise ValueError(f"token_layers={self.token_layers} picks the layers of the token states; it needs "
                             "token_states=True (--token-states).")
        if isinstance(self.token_stride, bool) or not (isinstance(self.token_stride, int) and self.token_stride >= 1):
            raise ValueError(f"token_stride={self.token_stride!r}: keep every S-th thought token's state with a whole "
                             "number S >= 1 (--token-stride; 1 keeps every token).")
        if self.token_stride != 1 and not self.token_states:
            raise ValueError(f"token_stride={self.token_stride} thins the thought-token states; it needs "
                             "token_states=True (--token-states).")
        if self.sampling and not self.sampling.get("do_sample"):
            raise ValueError(f"sampling={self.sampling} sets sampling parameters without do_sample=True.")

    @property
    def decoding(self) -> str:
        """"sampled" or "greedy": which calibration this collection's labels can serve."""
        return decoding_of(self.sampling)

    def resolved_layers(self, n_layers: int) -> list[int]:
        if self.layers:
            bad = [l for l in self.layers if not 0 <= l < n_layers]
            if bad:
                raise ValueError(f"layers {bad} do not exist in a model of {n_layers} layers (0..{n_layers - 1}).")
            return sorted(set(self.layers))
        lo = n_layers // 3
        count = min(6, n_layers - lo)
        return sorted({lo + round(i * (n_layers - 1 - lo) / max(count - 1, 1)) for i in range(count)})


def derived_seed(cfg: CollectConfig, key: str) -> int:
    """A 64-bit seed from the run's sampling seed and `key` (a question id, ...): the same on every resume."""
    digest = hashlib.sha256(f"{cfg.sampling_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _seed_batch(cfg: CollectConfig, first_id: str) -> None:
    """Seed torch's generator for one batch from the run's seed and the batch's first question (resumable)."""
    if cfg.sampling:
        torch.manual_seed(derived_seed(cfg, first_id))


class _StepRecorder(LogitsProcessor):
    """Keeps, per decode step, the candidate layers' hidden states at the last position ([B, L, D], unless
    `states` is False) and the training-free scores of the step's logits ([B, 2]: close-margin, entropy score)."""

    def __init__(self, model, layers: list[int], close_id: int, states: bool = True):
        self.steps: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []
        self.close_id = close_id
        # every layer's state lands on one device (device_map="auto" spreads the layers over GPUs)
        self.capture = LayerCapture(model, layers, device=model.device) if states else None

    def __call__(self, input_ids, scores):
        if self.capture is not None:
            self.steps.append(self.capture.stacked().to("cpu", torch.float16))
        self.scores.append(torch.stack(list(checkpoint_scores(scores, self.close_id).values()), -1).cpu())
        return scores

    def remove(self):
        if self.capture is not None:
            self.capture.remove()


def _logit_fields(scores: torch.Tensor) -> dict:
    """A record's training-free scores from one step's [2] (close-margin, entropy score): what the controller would
    read from the same logits at that step (controller/logit_score.py)."""
    cm, ent = scores.tolist()
    return {"close_margin": cm, "entropy_score": ent}


@torch.no_grad()
def continuations(model, tokenizer, sequences: list[list[int]], max_new_tokens: int, batch_size: int,
                  sampling: dict | None = None) -> list[list[int]]:
    """Continuations of token sequences (left-padded batches), each up to and including its first eos: greedy,
    or under `sampling` (generate() kwargs)."""
    decode = dict(sampling) if sampling else {"do_sample": False}
    eos = set(eos_token_ids(model))
    out = []
    pad = tokenizer.pad_token_id
    for i in range(0, len(sequences), batch_size):
        chunk = sequences[i : i + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in chunk], device=model.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in chunk], device=model.device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad,
                             **decode)
        out.extend(until_eos(g, eos) for g in gen[:, width:].tolist())
    return out


def exit_answers(model, tokenizer, cache, prompts: list[list[int]], width: int, gen: list[list[int]],
                 cuts: list[tuple[int, int]], forced: list[int], cfg: CollectConfig,
                 cost: dict | None = None) -> list[list[int]]:
    """The answer after each forced exit `(row, gi)`: prompt + gen[row][: gi + 1] + forced, then up to
    max_answer_tokens decoded. On the generation's own cache (`cache`, rows left-padded to `width`) when
    branches.py can reproduce generate() for this model; else by re-prefilling each exit through generate()."""
    if shared_route_refusal(model, cache, cfg.sampling) is None:
        pads = [width - len(p) for p in prompts]
        return branch_answers(model, cache, pads, [Branch(b, width + gi) for b, gi in cuts], forced,
                              cfg.max_answer_tokens, eos_token_ids(model), tokenizer.pad_token_id, cfg.sampling)
    del cache  # the re-prefill path builds its own caches
    sequences = [prompts[b] + gen[b][: gi + 1] + forced for b, gi in cuts]
    if cost is not None:
        cost["prefill_tokens"] += sum(map(len, sequences)) - len(forced) * len(sequences)  # forced: exit tokens
    return continuations(model, tokenizer, sequences, cfg.max_answer_tokens, cfg.batch_size * 4, cfg.sampling)


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def _without_padding(ids: list[int], pad: int | None) -> list[int]:
    """A generation without the pads that fill a finished row to the batch's length (they depend on the batch)."""
    end = len(ids)
    while pad is not None and end and ids[end - 1] == pad:
        end -= 1
    return ids[:end]


def batch_prompts(tokenizer, markers: ThinkMarkers, items: list[Item], cfg: CollectConfig):
    """(thinking prompts, no-think prompts, forced exit tokens) of one batch, as token ids: what both engines feed."""
    exit_ids = tuple(tokenizer.encode(cfg.exit_text, add_special_tokens=False)) if cfg.exit_text else ()
    prompts = [tokenizer.encode(chat_prompt(tokenizer, it.question), add_special_tokens=False) for it in items]
    no_think = [tokenizer.encode(no_think_prompt(tokenizer, it.question, markers, cfg.exit_text), add_special_tokens=False)
                for it in items]
    return prompts, no_think, list(markers.close_ids) + list(exit_ids)


@dataclass
class BatchPlan:
    """What one batch records, decided from its generations alone (no states yet): the records (scores and exit
    labels still to fill), the decode step whose state and logits each record keeps, the steps whose states
    `--token-states` keeps, and the forced exits to decode. A step t is the forward that read the t-th fed
    token: the prompt's last token at t = 0, generated token t - 1 after."""

    records: list[dict]
    picks: list[tuple[int, int]]  # (row, step) of each record, in record order
    spans: list[tuple[int, range]]  # (row, steps) of each question's kept thought-token states
    exits: list[tuple[int, int, int]]  # (record index, row, generated index of the last token before the exit)

    def steps_needed(self, rows: int) -> list[int]:
        """Per row, how many leading decode steps the records read (an engine computes no state past them)."""
        need = [0] * rows
        for b, t in self.picks:
            need[b] = max(need[b], t + 1)
        for b, steps in self.spans:
            if len(steps):
                need[b] = max(need[b], steps[-1] + 1)
        return need


def plan_batch(tokenizer, markers: ThinkMarkers, items: list[Item], checker, cfg: CollectConfig,
               prompts: list[list[int]], gen: list[list[int]], no_think_out: list[list[int]],
               boundary: torch.Tensor) -> BatchPlan:
    """The records of one batch from its generations: gen [B][T] (each row padded to the batch's T decode steps
    as generate() pads finished rows) and the no-think answers."""
    records, picks, spans, exits = [], [], [], []
    for b, it in enumerate(items):
        g = gen[b]
        body, close = thought_span(prompts[b], g, markers)
        full_text = _decode(tokenizer, _without_padding(g, tokenizer.pad_token_id))
        full_ok = close >= 0 and bool(checker(full_text, it.answer))
        thought_len = (close - body) if close >= 0 else (len(g) - body if body is not None else 0)
        nothink_text = markers.close_text + _decode(tokenizer, no_think_out[b])
        nothink_ok = bool(checker(nothink_text, it.answer))
        base = dict(qid=it.id, qhash=question_hash(it.question), level=it.level, full_correct=full_ok,
                    nothink_correct=nothink_ok, thought_len=thought_len, closed=close >= 0, opened=body is not None,
                    full_parsed=read_or_none(checker, full_text) if close >= 0 else None,
                    nothink_parsed=read_or_none(checker, nothink_text),
                    **({"category": it.category} if it.category else {}))  # what --strata category reads
        # the end of the raw output, for diagnosing a checker that reads nothing
        records.append(dict(base, kind=KIND_PROMPT, pos=0, label=nothink_ok, boundary=False,
                            output_tail=full_text[-OUTPUT_TAIL_CHARS:]))
        picks.append((b, 0))
        if body is None:
            continue
        if cfg.token_states:  # the state that has just read thought token j (step body + j + 1), every S-th j
            n, s = max(0, min(thought_len, len(g) - 1 - body)), cfg.token_stride
            kept = range(body + s, body + 1 + n, s)  # the states that have read s, 2s, ... <= n thought tokens
            records[-1]["thought_states"] = len(kept)
            if s > 1:
                records[-1]["thought_stride"] = s
            spans.append((b, kept))
        # the last generated token was never fed back, so it has no hidden state
        for j in range(min(thought_len, len(g) - 1 - body)):
            gi = body + j  # generated index of the j-th thought token
            is_b = bool(boundary[g[gi]]) if g[gi] < boundary.numel() else False
            periodic = cfg.every > 0 and (j + 1) % cfg.every == 0
            if not (periodic or is_b or j == thought_len - 1):  # the last one: exit = natural close
                continue
            records.append(dict(base, kind=KIND_THOUGHT, pos=j + 1, label=None, boundary=is_b))
            picks.append((b, gi + 1))  # step gi + 1 sees token gi as its last
            exits.append((len(records) - 1, b, gi))
    return BatchPlan(records, picks, spans, exits)


def finish_batch(plan: BatchPlan, tokenizer, markers: ThinkMarkers, items: list[Item], checker, cfg: CollectConfig,
                 layers: list[int], states: list[torch.Tensor], scores: list[torch.Tensor], answers: list[list[int]]):
    """(records, hidden [N, L, D], thought states [M, L, D] or None) of a planned batch, given per row its decode
    steps' states [n_b, L, D] and logit scores [n_b, 2] (at least `plan.steps_needed` of them) and the exits'
    answer tokens."""
    records = plan.records
    for rec, (b, t) in zip(records, plan.picks):
        rec.update(_logit_fields(scores[b][t]))
    answer_of = {it.id: it.answer for it in items}
    for (ri, _, _), ans in zip(plan.exits, answers):
        text = markers.close_text + cfg.exit_text + _decode(tokenizer, ans)
        records[ri]["label"] = bool(checker(text, answer_of[records[ri]["qid"]]))
    width = states[0].shape[-1] if states else 0
    empty = torch.zeros(0, len(layers), width, dtype=torch.float16)
    rows = [states[b][t] for b, t in plan.picks]
    thought_rows = [states[b][steps.start : steps.stop : steps.step] for b, steps in plan.spans]
    thought = torch.cat(thought_rows) if thought_rows else empty
    return records, (torch.stack(rows) if rows else empty), (thought if cfg.token_states else None)


def count_batch(cost: dict | None, plan: BatchPlan, forced: list[int], answers: list[list[int]],
                no_think_out: list[list[int]], generated: int, prefilled: int) -> None:
    """Add one batch's token counts to `cost` (COST_KEYS): `generated` decode positions, `prefilled` prompt tokens
    the engine computed (what it reused from a cache not counted)."""
    if cost is None:
        return
    cost["generated_tokens"] += generated
    cost["prefill_tokens"] += prefilled
    cost["nothink_tokens"] += sum(map(len, no_think_out))
    cost["forced_exits"] += len(plan.exits)
    cost["exit_tokens"] += sum(len(forced) + len(a) for a in answers)


@torch.no_grad()
def collect_batch(model, tokenizer, markers: ThinkMarkers, items: list[Item], checker, cfg: CollectConfig,
                  layers: list[int], boundary: torch.Tensor, cost: dict | None = None):
    """Records and hidden states [N, L, D] for one batch of questions; adds its token counts to `cost` (COST_KEYS)."""
    pad = tokenizer.pad_token_id
    prompts, no_think, forced = batch_prompts(tokenizer, markers, items, cfg)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    decode = dict(cfg.sampling) if cfg.sampling else {"do_sample": False}
    _seed_batch(cfg, items[0].id)
    recorder = _StepRecorder(model, layers, markers.close_ids[0], cfg.states)
    try:  # the generation's cache is kept: every forced exit decodes on it (branches.py)
        out = model.generate(input_ids=ids, attention_mask=mask.to(model.device), max_new_tokens=cfg.max_new_tokens,
                             logits_processor=[recorder], pad_token_id=pad, return_dict_in_generate=True, **decode)
    finally:
        recorder.remove()
    step_scores = torch.stack(recorder.scores, 1)  # [B, T, 2]: close-margin, entropy score of each step's logits
    # without states, a [B, T, L, 0] stand-in keeps the indexing below
    steps = (torch.stack(recorder.steps, 1) if cfg.states
             else torch.zeros(*step_scores.shape[:2], len(layers), 0, dtype=torch.float16))  # [B, T, L, D]
    gen = out.sequences[:, width:].tolist()
    cache = out["cache"] if "cache" in out else out["past_key_values"]  # the field's name before transformers 5.2x
    del out

    no_think_out = continuations(model, tokenizer, no_think, cfg.max_answer_tokens, cfg.batch_size, cfg.sampling)
    plan = plan_batch(tokenizer, markers, items, checker, cfg, prompts, gen, no_think_out, boundary)
    answers = exit_answers(model, tokenizer, cache, prompts, width, gen, [e[1:] for e in plan.exits], forced, cfg, cost)
    count_batch(cost, plan, forced, answers, no_think_out, generated=len(items) * steps.shape[1],  # finished rows too
                prefilled=sum(map(len, prompts)) + sum(map(len, no_think)))
    return finish_batch(plan, tokenizer, markers, items, checker, cfg, layers, list(steps), list(step_scores), answers)


def collect(model, tokenizer, items: list[Item], out, checker: Callable[[str, str], bool],
            cfg: CollectConfig | None = None, think_tokens=None, rank: int = 0, world: int = 1,
            progress: bool = True, doctor: str = DOCTOR, log: Callable[[str], None] | None = None,
            batch_fn: Callable | None = None, engine: str = "hf") -> dict:
    """Collect labelled checkpoints for `items` into folder `out`, resuming a previous run there.

    With world > 1 (several processes, see scripts/collect_probe_data.py), this process takes every
    world-th question from `rank` on and writes its own shards and index; a second process on the same
    rank and folder fails at once. Prints the collection's health after the first batch and at the end
    (`log`, default: a line under the progress bar); raises `CollectionUnusable`, naming `doctor` (the
    command to run), when the data cannot train a probe. Returns a summary dict.

    batch_fn: what collects one batch, with `collect_batch`'s arguments and results (None: `collect_batch`, the hf
    engine; collect_vllm.py passes its own); engine: its name, for the cost line.
    """
    cfg = cfg or CollectConfig()
    log = log or tqdm.write
    if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
        raise ValueError(f"rank {rank!r} / world size {world!r}: need 0 <= rank < world.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(lock_path(out, rank), f"collection rank {rank} in {out}"):
        return _collect_locked(model, tokenizer, items, out, checker, cfg, think_tokens, rank, world, progress,
                               doctor, log, batch_fn, engine)


def _check(summary: dict, head: str, markers: ThinkMarkers, cfg: CollectConfig, doctor: str, sample: str | None):
    cause = diagnose(summary, (markers.open_text, markers.close_text), cfg.max_new_tokens)
    if cause is None:
        return
    key, why = cause
    shown = f"\n  the end of one raw output: {sample!r}" if sample else ""
    raise CollectionUnusable(key, f"{head}: {why}.{shown}\n  Check the model, template, markers and "
                                  f"checker in seconds with: {doctor}\n  (--no-fail-fast collects anyway.)")


def _collect_locked(model, tokenizer, items, out: Path, checker, cfg: CollectConfig, think_tokens, rank: int,
                    world: int, progress: bool, doctor: str, log, batch_fn=None, engine: str = "hf") -> dict:
    clean_orphans(out, rank)
    markers = resolve_markers(tokenizer, think_tokens)
    n_layers = model_fingerprint(model)["num_hidden_layers"]
    layers = cfg.resolved_layers(n_layers)
    if cfg.token_layers is not None and not set(cfg.token_layers) <= set(layers):
        raise ValueError(f"token layers {sorted(set(cfg.token_layers) - set(layers))} are not among the candidate "
                         f"layers {layers}; pick from those (or add them with --layers).")
    settings = dict(asdict(cfg), layers=layers, fingerprint=model_fingerprint(model),
                    markers=[markers.open_text, markers.close_text], world=world)
    del settings["fail_fast"]  # how to react to bad data, not a property of the data
    index = read_index(out, rank)
    if index is not None:  # collections recorded before these settings existed were greedy, without token states
        index["settings"] = {"sampling": {}, "sampling_seed": 0, "token_states": False, "token_layers": None,
                             "token_stride": 1, "states": True, **index["settings"]}
    if index is None:
        index = {"version": 1, "settings": settings, "shards": [], "done": []}
    elif index["settings"] != settings:
        diff = sorted(k for k in settings if index["settings"].get(k) != settings[k])
        raise ValueError(f"{out} holds a collection made with other settings ({diff}); use another --out to start a "
                         "new one" + (" (or the same number of processes as before)" if "world" in diff else "") + ".")
    mine = items[rank::world]
    done = set(index["done"])
    todo = [it for it in mine if it.id not in done]
    boundary = boundary_mask(tokenizer, int(model.get_output_embeddings().weight.shape[0]))
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="collect (questions)", unit="q",
               disable=not progress)
    who = f"collect (rank {rank}/{world})" if world > 1 else "collect"
    t0 = time.time()
    cost = dict.fromkeys(COST_KEYS, 0)
    pending_recs, pending_hidden, pending_thought, pending_ids = [], [], [], []
    batch_fn = batch_fn or collect_batch  # looked up now: tests wrap the module's collect_batch

    def flush():
        if not pending_ids:
            return
        hidden = torch.cat(pending_hidden)  # [N, L, D]
        tensors = {f"layer{l}": hidden[:, i] for i, l in enumerate(layers)} if cfg.states else {}
        if cfg.token_states:
            thought = torch.cat(pending_thought)  # [sum of thought_states, L, D]
            tensors.update({f"{THOUGHT_PREFIX}{l}": thought[:, i] for i, l in enumerate(layers)
                            if cfg.token_layers is None or l in cfg.token_layers})
        name = write_shard(out, rank, len(index["shards"]), tensors, pending_recs)
        index["shards"].append(name)
        index["done"].extend(pending_ids)
        write_index(out, rank, index)
        pending_recs.clear(), pending_hidden.clear(), pending_thought.clear(), pending_ids.clear()

    for i in range(0, len(todo), cfg.batch_size):
        batch = todo[i : i + cfg.batch_size]
        recs, hidden, thought = batch_fn(model, tokenizer, markers, batch, checker, cfg, layers, boundary, cost)
        if i == 0:  # a resumed run judges this batch together with what it collected before
            first = summarise(rank_records(out, index) + recs)
            log(f"{who}, first batch: {format_summary(first)}")
            if cfg.fail_fast:  # before writing anything: a fixed re-run must not resume from bad labels
                _check(first, f"collect stopped after its first {first['questions']} questions", markers, cfg,
                       doctor, next(r["output_tail"] for r in recs if r["kind"] == KIND_PROMPT))
        pending_recs.extend(recs), pending_hidden.append(hidden), pending_ids.extend(it.id for it in batch)
        if thought is not None:
            pending_thought.append(thought)
        bar.update(len(batch))
        if len(pending_ids) >= cfg.shard_questions:
            flush()
    flush()
    bar.close()
    records = rank_records(out, index)
    health = summarise(records)
    log(f"{who}, all collected: {format_summary(health)}")
    if cfg.fail_fast:
        sample = next((r.get("output_tail") for r in records if r["kind"] == KIND_PROMPT), None)
        _check(health, f"collect finished ({health['questions']} questions in {out}), but no probe can be trained on them",
               markers, cfg, doctor, sample)
    cost = dict(cost, engine=engine, questions=len(todo), wall_s=round(time.time() - t0, 1),
                thought_tokens=health["mean_thought_len"],
                bytes_per_question=round(sum((out / f"{n}{ext}").stat().st_size for n in index["shards"]
                                             for ext in (".safetensors", ".json")) / max(len(index["done"]), 1)))
    log(f"{who}, cost: {format_cost(cost)}")
    return {"questions": len(index["done"]), "shards": len(index["shards"]), "layers": layers,
            "seconds": cost["wall_s"], "out": str(out), "health": health, "cost": cost}


def _duration(seconds: float) -> str:
    return (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200
            else f"{seconds / 3600:.1f} h")


def format_cost(cost: dict) -> str:
    """One line of what collecting costs: collect's own counts at its end, or doctor's estimate (`estimated`).

    cost: COST_KEYS (totals over the run), questions, wall_s (None: not known), and optionally engine, estimated,
    wall_basis (what the wall time rests on), thought_tokens (mean thought length), bytes_per_question. Answer
    tokens are the tokens fed or decoded after the forced exits (close marker, exit text, answer) plus the no-think
    answers.
    """
    q = max(cost["questions"], 1)
    about = "about " if cost.get("estimated") else ""
    wall = "a time not known" if cost.get("wall_s") is None else about + _duration(cost["wall_s"])
    notes = [n for n in (cost.get("engine") and f"{cost['engine']} engine", cost.get("wall_basis")) if n]
    answer = cost["exit_tokens"] + cost["nothink_tokens"]
    line = f"{cost['questions']} questions in {wall}" + (f" ({'; '.join(notes)})" if notes else "") + ": "
    if cost.get("thought_tokens") is not None:
        line += f"thoughts of {cost['thought_tokens']:.0f} tokens; "
    line += (f"in all {about}{cost['generated_tokens']:,.0f} tokens generated, {cost['prefill_tokens']:,.0f} "
             f"prefilled, {answer:,.0f} answer tokens; per question {cost['generated_tokens'] / q:.0f} generated, "
             f"{cost['prefill_tokens'] / q:.0f} prefilled, {cost['forced_exits'] / q:.0f} forced exits of "
             f"{cost['exit_tokens'] / max(cost['forced_exits'], 1):.1f} tokens, {cost['nothink_tokens'] / q:.0f} "
             "no-think answer tokens")
    if cost.get("bytes_per_question") is not None:
        line += f", {about}{cost['bytes_per_question'] / 1e3:.0f} kB on disk"
    return line
