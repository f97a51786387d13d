"""Baseline stopping rules the probe must beat, as logits processors on the hf path (host-side, eval only).

- `marker`: stop at the first step boundary after the thought first states an answer (a text pattern).
- `confidence` (DEER-style): at each step boundary, force an exit on the side, decode a trial answer,
  and stop when its mean token probability passes a threshold; trial tokens count as forward tokens.
- `consistency` (Dynasor-CoT's certaindex): at each step boundary (or every k thinking tokens), decode a
  trial answer the same way and stop once the last m trial answers agree; trial tokens count too.

Under greedy decoding `eval` decides the trial baselines after the fact on the full thought instead
(trials.py: the same check points, rules and counts, the trials decoded on a shared prefix); these
processors are the live route it falls back to (sampling, models the shared route cannot serve).
"""

from __future__ import annotations

import re

import torch
from transformers import LogitsProcessor

from adaptive_think.engines.args import eos_token_ids
from adaptive_think.kernels.logit_stats import logit_stats
from adaptive_think.markers import ThinkMarkers, find_subsequence


class TextStopProcessor(LogitsProcessor):
    """Tracks each row's thought on the host and forces close marker + exit text when `should_stop` says so."""

    def __init__(self, tokenizer, markers: ThinkMarkers, exit_ids, boundary: torch.Tensor, prompt_len: int,
                 prompt_inside: list[bool], every: int | None = None):
        self.tok, self.m = tokenizer, markers
        self.exit_ids = list(exit_ids)
        self.boundary = boundary
        self.prompt_len = prompt_len
        self.inside = list(prompt_inside)  # row is in a thought
        self.queue: list[list[int]] = [[] for _ in prompt_inside]
        self.done = [False] * len(prompt_inside)
        self.trial_tokens = [0] * len(prompt_inside)
        self.every = every  # check every k thinking tokens instead of at step boundaries

    def _body(self, gen: list[int]) -> list[int]:
        o = find_subsequence(gen, self.m.open_ids)
        return gen[o + len(self.m.open_ids):] if o >= 0 else gen

    def should_stop(self, rows: list[int], input_ids: torch.Tensor) -> list[bool]:
        raise NotImplementedError

    def __call__(self, input_ids, scores):
        gen = input_ids[:, self.prompt_len :].tolist()
        check = []
        for r, g in enumerate(gen):
            if self.queue[r] or self.done[r]:
                continue
            if not self.inside[r]:
                if find_subsequence(g, self.m.open_ids) >= 0 and find_subsequence(g, self.m.close_ids) < 0:
                    self.inside[r] = True
                else:
                    continue
            body = self._body(g)
            if find_subsequence(body, self.m.close_ids) >= 0:
                self.done[r] = True  # the model closed on its own
                continue
            if self.every is not None:
                if body and len(body) % self.every == 0:
                    check.append(r)
            elif g and g[-1] < self.boundary.numel() and bool(self.boundary[g[-1]]):
                check.append(r)
        if check:
            for r, stop in zip(check, self.should_stop(check, input_ids)):
                if stop:
                    self.queue[r] = list(self.m.close_ids) + self.exit_ids
                    self.done[r] = True
        out = scores
        for r in range(len(gen)):
            if self.queue[r]:
                tok = self.queue[r].pop(0)
                if out is scores:
                    out = scores.clone()
                out[r] = float("-inf")
                out[r, tok] = 0.0
        return out


class MarkerStop(TextStopProcessor):
    """Stop at the first boundary after the thought states an answer (per-task pattern)."""

    def __init__(self, *args, pattern: re.Pattern, **kw):
        super().__init__(*args, **kw)
        self.pattern = pattern

    def should_stop(self, rows, input_ids):
        out = []
        for r in rows:
            body = self._body(input_ids[r, self.prompt_len :].tolist())
            out.append(bool(self.pattern.search(self.tok.decode(body, skip_special_tokens=False))))
        return out


class TrialAnswers(TextStopProcessor):
    """Stops decided from trial answers: force an exit on the side, decode a short greedy answer, judge it."""

    def __init__(self, *args, model, max_answer_tokens: int = 12, pad_id: int = 0, **kw):
        super().__init__(*args, **kw)
        self.model, self.max_answer_tokens, self.pad_id = model, max_answer_tokens, pad_id
        self.eos = set(eos_token_ids(model))

    @torch.no_grad()
    def trials(self, rows, input_ids) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Per row: the trial answer's tokens (up to eos) and their top-1 probabilities [n]."""
        forced = torch.tensor(list(self.m.close_ids) + self.exit_ids, device=input_ids.device)
        ids = torch.cat([input_ids[rows], forced.expand(len(rows), -1)], 1)
        mask = (ids != self.pad_id).long()
        mask[:, self.prompt_len :] = 1
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_answer_tokens,
                                  do_sample=False, output_scores=True, return_dict_in_generate=True,
                                  pad_token_id=self.pad_id)
        new = out.sequences[:, ids.shape[1] :]  # [R, T]
        # greedy picks the top-1 token, whose probability is exp(max_logit - logsumexp): one pass per step
        stats = [logit_stats(s) for s in out.scores]
        chosen = torch.stack([torch.exp(st.max_logit - st.lse) for st in stats], 1)  # [R, T]
        toks, probs = [], []
        for i, r in enumerate(rows):
            row = new[i].tolist()
            n = next((j + 1 for j, t in enumerate(row) if t in self.eos), len(row))
            self.trial_tokens[r] += len(forced) + n
            toks.append(row[:n])
            probs.append(chosen[i, :n])
        return toks, probs


    def decide(self, row: int, tokens: list[int], probs: torch.Tensor) -> bool:
        """Stop row `row` after this trial answer (its tokens up to eos, their top-1 probabilities [n])? Called once
        per check, in order (the live route here, the post-hoc route in trials.py)."""
        raise NotImplementedError

    def should_stop(self, rows, input_ids):
        toks, probs = self.trials(rows, input_ids)
        return [self.decide(r, t, p) for r, t, p in zip(rows, toks, probs)]


class ConfidenceStop(TrialAnswers):
    """DEER-style: stop when the trial answer's mean token probability >= threshold."""

    def __init__(self, *args, threshold: float, **kw):
        super().__init__(*args, **kw)
        self.threshold = threshold

    def decide(self, row, tokens, probs):
        return float(probs.mean()) >= self.threshold


class ConsistencyStop(TrialAnswers):
    """Dynasor-CoT style: stop once the last `agree` trial answers of a row are the same answer."""

    def __init__(self, *args, agree: int, parse=None, **kw):
        super().__init__(*args, **kw)
        self.agree = agree
        self.parse = parse  # text -> answer or None; None: the trial's text, whitespace-normalised
        self.history: dict[int, list] = {}

    def answer_of(self, tokens: list[int]):
        text = self.tok.decode([t for t in tokens if t not in self.eos], skip_special_tokens=False)
        got = self.parse(self.m.close_text + text) if self.parse is not None else None
        return got if got is not None else " ".join(text.split())

    def decide(self, row, tokens, probs):
        hist = self.history.setdefault(row, [])
        hist.append(self.answer_of(tokens))
        last = hist[-self.agree :]
        return len(last) == self.agree and last[0] != "" and all(a == last[0] for a in last)
