"""eval: run thinking policies side by side on the same questions and compare them.

Per policy: accuracy, mean thinking tokens, mean forward tokens (everything the model decoded,
trial answers included), skip rate, wall-clock; per difficulty level too. Greedy by default; with
sampling settings every policy decodes under the same settings and the same seed. The `oracle` row is
computed from the full thoughts (oracle.py); under greedy decoding the trial-answer baselines are decided on
each batch's full thought (trials.py). Training-free score policies (`score:KIND:X`, `score-effort:KIND:NAME`)
run through a thinker of their own holding the score file (calibrated, from `score_probes`, or uncalibrated). report.py prints, compares and plots the results.

    adaptive-think eval --model bundled --probe bundled --n 300 --seed 2024 --json runs/eval.json
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from adaptive_think.config import ThinkConfig
from adaptive_think.controller import boundary_mask
from adaptive_think.engines.args import eos_token_ids
from adaptive_think.evaluation.baselines import ConfidenceStop, ConsistencyStop, MarkerStop
from adaptive_think.evaluation.policies import PolicySpec, parse_policy
from adaptive_think.evaluation.report import summarise
from adaptive_think.evaluation.trials import PostHocTrials
from adaptive_think.loading import chat_prompt
from adaptive_think.markers import find_subsequence
from adaptive_think.thinker import AdaptiveThinker


def think_tokens_of(gen: list[int], markers, prompt_inside: bool, tokenizer=None) -> tuple[int, bool]:
    """(thinking tokens between the markers, whether a block was there) of one generated row.

    With a tokenizer, a block holding only whitespace (the empty block of a skip) counts as 0.
    """
    o = -1 if prompt_inside else find_subsequence(gen, markers.open_ids)
    if o < 0 and not prompt_inside:
        return 0, False
    start = 0 if prompt_inside else o + len(markers.open_ids)
    c = find_subsequence(gen, markers.close_ids, start)
    end = c if c >= 0 else len(gen)
    if tokenizer is not None and not tokenizer.decode(gen[start:end], skip_special_tokens=False).strip():
        return 0, True
    return end - start, True


class Evaluator:
    """Holds the model, tokenizer and questions; `run(spec)` evaluates one policy."""

    def __init__(self, model, tokenizer, items, checker, probe=None, batch_size: int = 16, max_new_tokens: int = 400,
                 exit_text: str = "\n\n", engine: str = "hf", pattern=None, progress: bool = True,
                 sampling: dict | None = None, sampling_seed: int = 0, parse=None, score_probes: dict | None = None):
        self.model, self.tok, self.items, self.checker = model, tokenizer, items, checker
        self.score_probes = dict(score_probes or {})  # kind -> calibrated score file (score-effort:KIND:NAME)
        self._score_thinkers: dict[tuple[str, bool], AdaptiveThinker] = {}
        # e.g. {"do_sample": True, "temperature": 0.6, "top_p": 0.95}; None or {}: greedy
        self.sampling = dict(sampling) if sampling else {"do_sample": False}
        self.sampling_seed, self.parse = sampling_seed, parse
        self.full_rows: list[dict] | None = None  # prompt and generated ids of the last `full` run (oracle)
        self.outcomes: dict[str, list[bool]] = {}  # per policy run, each question's correctness (promise.py)
        self.thinker = AdaptiveThinker(model, tokenizer, probe=probe)
        self.markers = self.thinker.markers
        self.batch_size, self.max_new_tokens, self.exit_text = batch_size, max_new_tokens, exit_text
        self.engine, self.pattern, self.progress = engine, pattern, progress
        self.exit_ids = tokenizer.encode(exit_text, add_special_tokens=False) if exit_text else []
        self.boundary = boundary_mask(tokenizer, self.thinker.vocab_size)
        self.eos = set(eos_token_ids(model))
        self.posthoc = PostHocTrials(self)  # greedy trial baselines on the full thought (trials.py)

    def _batches(self):
        for i in range(0, len(self.items), self.batch_size):
            chunk = self.items[i : i + self.batch_size]
            texts = [chat_prompt(self.tok, it.question) for it in chunk]
            batch = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
            yield chunk, batch

    def _thinker(self, spec: PolicySpec) -> AdaptiveThinker:
        """The thinker a policy runs on: a score policy's holds its score file (the calibrated one for score-effort,
        an uncalibrated one for an explicit threshold, so that it never skips); every other policy's is the main one."""
        if spec.kind not in ("score", "score-effort"):
            return self.thinker
        calibrated = spec.kind == "score-effort"
        key = (spec.score, calibrated)
        if key not in self._score_thinkers:
            if calibrated and spec.score not in self.score_probes:
                raise ValueError(f"Policy {spec.name!r} needs a calibrated {spec.score} score file: pass --score-file.")
            from adaptive_think.probe import Probe

            probe = self.score_probes[spec.score] if calibrated else Probe.training_free(spec.score, self.model)
            self._score_thinkers[key] = AdaptiveThinker(self.model, self.tok, probe=probe)
        return self._score_thinkers[key]

    def _think_config(self, spec: PolicySpec) -> ThinkConfig:
        config = self._base_config(spec)
        return replace(config, guard=False) if spec.guard is False else config

    def _base_config(self, spec: PolicySpec) -> ThinkConfig:
        if spec.kind == "score":
            # an uncalibrated score file carries no exit text: the one every other policy here forces
            return ThinkConfig(policy="probe", threshold=spec.value, exit_text=self.exit_text, stop_at_boundary=True)
        if spec.kind == "score-effort":
            return ThinkConfig(policy="probe", effort=spec.effort)
        if spec.kind == "full":
            return ThinkConfig()
        if spec.kind == "none":
            return ThinkConfig(policy="none", exit_text=self.exit_text)
        if spec.kind == "budget":
            return ThinkConfig(policy="budget", max_think_tokens=int(spec.value), exit_text=self.exit_text)
        if spec.kind == "router":
            # the skip decision alone: a minimum beyond any thought keeps the ready head from ever stopping
            return ThinkConfig(policy="probe", min_think_tokens=self.max_new_tokens + 1)
        if spec.kind == "effort":
            return ThinkConfig(policy="probe", effort=spec.effort)
        if spec.kind == "stops":
            return ThinkConfig(policy="probe", effort=spec.effort, allow_skip=False)
        return ThinkConfig(policy="probe", threshold=spec.value)

    def _processor(self, spec: PolicySpec, plen: int, inside: list[bool]):
        """The host-side stop rule of a baseline policy (marker, confidence, consistency)."""
        args = (self.tok, self.markers, self.exit_ids, self.boundary, plen, inside)
        if spec.kind == "marker":
            return MarkerStop(*args, pattern=self.pattern)
        trial = dict(model=self.model, pad_id=self.tok.pad_token_id)
        if spec.kind == "confidence":
            return ConfidenceStop(*args, threshold=spec.value, **trial)
        return ConsistencyStop(*args, every=spec.every, agree=int(spec.value), parse=self.parse, **trial)

    @torch.no_grad()
    def run(self, spec: PolicySpec) -> dict:
        if spec.kind in ("probe", "effort", "stops", "router") and self.thinker.probe is None:
            raise ValueError(f"Policy {spec.name!r} needs a probe: pass --probe.")
        if spec.kind == "marker" and self.pattern is None:
            raise ValueError("Policy 'marker' needs the task's answer pattern (bundled tasks only).")
        if spec.kind == "oracle":
            raise ValueError("Policy 'oracle' is computed from the full thoughts: use evaluate(), which runs `full` first.")
        rows = []
        torch.manual_seed(self.sampling_seed)  # every policy samples from the same seed
        t0 = time.perf_counter()
        trial_route = None
        if spec.kind in ("confidence", "consistency"):  # decided on the full greedy thought where that is exact
            why = self.posthoc.refusal()
            trial_route = {"route": "post-hoc" if why is None else "live", **({"why": why} if why else {})}
        batches = list(self._batches())
        for bi, (chunk, batch) in enumerate(tqdm(batches, desc=f"eval {spec.name}", disable=not self.progress,
                                                 leave=False)):
            plen = batch["input_ids"].shape[1]
            inside = [find_subsequence(p, self.markers.open_ids) > find_subsequence(p, self.markers.close_ids)
                      for p in batch["input_ids"].tolist()]
            trial = [0] * len(chunk)
            reports = None
            kw = dict(max_new_tokens=self.max_new_tokens, **self.sampling)
            post = None
            if trial_route is not None and trial_route["route"] == "post-hoc":
                post = self.posthoc.run(self._processor(spec, plen, inside), bi, batch, plen, inside)
                if post is None:
                    trial_route.setdefault("live_batches", []).append(bi)
            if post is not None:
                gens, trial = post
            elif spec.kind in ("marker", "confidence", "consistency"):
                proc = self._processor(spec, plen, inside)
                out = self.model.generate(**batch, logits_processor=[proc], **kw)
                gens, trial = out[:, plen:].tolist(), proc.trial_tokens
            else:
                thinker = self._thinker(spec)
                out = thinker.generate(**batch, think=self._think_config(spec), engine=self.engine, **kw)
                gens, reports = out[:, plen:].tolist(), thinker.last_reports
                if spec.kind == "full":
                    self.posthoc.offer(bi, batch, gens)  # the trial policies' greedy thought too (trials.py)
            for r, it in enumerate(chunk):
                gen = gens[r]
                n = next((j + 1 for j, t in enumerate(gen) if t in self.eos), len(gen))
                gen = gen[:n]
                think, had_block = think_tokens_of(gen, self.markers, inside[r], self.tok)
                text = self.tok.decode(gen, skip_special_tokens=False)
                skipped = reports[r].ended_by == "skipped" if reports is not None else (had_block and think == 0)
                row = dict(level=it.level, category=it.category, correct=bool(self.checker(text, it.answer)),
                           think=think, forward=n + trial[r], skipped=skipped)
                if reports is not None and reports[r].guard != "off":
                    row["guard_fallback"] = reports[r].guard == "fallback"  # the row ran its guard_fallback
                if reports is not None and reports[r].group is not None:  # the probe's route placed the row
                    row["route_group"] = thinker.probe.route.groups[reports[r].group]
                if spec.kind == "full":
                    mask = batch["attention_mask"][r].bool()
                    row.update(prompt=batch["input_ids"][r][mask].tolist(), gen=gen)
                rows.append(row)
        wall = time.perf_counter() - t0
        self.outcomes[spec.name] = [r["correct"] for r in rows]
        if spec.kind == "full":
            self.full_rows = rows
        out = summarise(rows, wall)
        if trial_route is not None:
            out["trials"] = trial_route  # how the trial answers were decoded (evaluation/trials.py)
        return out

    def oracle(self) -> dict:
        """The oracle row from the last `full` run: full's accuracy, the oracle's thinking (oracle.py)."""
        from adaptive_think.evaluation.oracle import oracle_points

        if self.full_rows is None:
            raise ValueError("The oracle needs the full-thinking run first: put `full` before `oracle`.")
        t0 = time.perf_counter()
        points = oracle_points(self, self.full_rows)
        # the oracle writes the same answer as full thinking after a shorter thought
        rows = [dict(level=r["level"], category=r["category"], correct=r["correct"], think=p, forward=r["forward"] - (r["think"] - p),
                     skipped=p == 0) for r, p in zip(self.full_rows, points)]
        return summarise(rows, time.perf_counter() - t0)


def evaluate(evaluator: Evaluator, policies: list[str], log=print) -> dict:
    """Run each policy in order (`oracle` is computed from the `full` run before it); {name: row}."""
    results = {}
    for text in policies:
        spec = parse_policy(text)
        results[spec.name] = evaluator.oracle() if spec.kind == "oracle" else evaluator.run(spec)
        v = results[spec.name]
        log(f"{spec.name:18s} acc {v['accuracy']:.3f}  think {v['think_tokens_mean']:.1f}  fwd {v['forward_tokens_mean']:.1f}")
    return results
