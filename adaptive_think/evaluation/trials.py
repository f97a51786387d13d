"""The trial-answer baselines (DEER-style confidence, answer consistency) decided after the fact on the full thought.

Under greedy decoding a trial reads the thought and never changes it, so a trial baseline's generation is the
full thought up to the check where its rule stops, then the forced exit and the greedy answer after it. Instead of
a full generate() of prompt + thought-so-far at every check (re-prefilling the prefix each time, as the live
processors in baselines.py do), each batch's full thought is generated once, the live processor's own check points
are replayed on it (the `full` policy's own generation when it ran before on the hf engine: generate() with a
processor that changes nothing, so the same tokens), the trial answers at all of them decode as branches of one
prefill of the thought
(training/branches.py), and each policy's rule (the processor's `decide`) then picks its stop. The answer after
the stop is the trial itself when it ended within the row's budget, else one more branch there. One generation
and one set of trials serve every trial policy with the same check points (confidence:X and consistency:M share
the step boundaries). Costs count as the live route counts them: each trial the rule read adds its forced and
answer tokens to the row's forward tokens; a policy's `wall_s` includes the shared work only for the first
policy that needed it.

The live route stays where this one would not reproduce it: sampling (the live run's draws after a stop follow
the random stream of its own batch), models `shared_route_refusal` refuses, tokenizers that do not pad on the
left, and batches where a row ended (eos) inside an open thought (its checks after eos depend on how long the
live batch runs).

    trials = PostHocTrials(evaluator)
    got = trials.run(spec, batch_index, batch, prompt_len, inside)   # (generated ids, trial tokens) or None
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adaptive_think.evaluation.baselines import TextStopProcessor
from adaptive_think.training.branches import new_cache, prefix_answers, shared_route_refusal


class _CheckRecorder(TextStopProcessor):
    """The live processor's check points on a thought it never stops: at[r] lists the tokens generated at each."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.at: list[list[int]] = [[] for _ in self.inside]

    def should_stop(self, rows, input_ids):
        for r in rows:
            self.at[r].append(input_ids.shape[1] - self.prompt_len)
        return [False] * len(rows)


@dataclass
class _Generation:
    prompts: list[list[int]]  # each row's prompt without padding
    gen: list[list[int]]  # [B][T] generated ids as generate() returned them (pads after a row's eos)


@dataclass
class _Trials:
    at: list[list[int]]  # per row, tokens generated at each check, in order
    answers: list[list[list[int]]]  # per row and check: the trial answer, up to and including eos
    probs: list[list[torch.Tensor]]  # per row and check: its tokens' top-1 probabilities [n]


class PostHocTrials:
    """Trial baselines of one Evaluator decided on each batch's full greedy thought (see the module docstring)."""

    def __init__(self, ev):
        self.ev = ev
        self._gens: dict[tuple[int, int], _Generation] = {}  # (batch, max_new_tokens) ->
        self._trials: dict[tuple, _Trials | None] = {}  # None: this batch needs the live route

    @staticmethod
    def _prompts(batch) -> list[list[int]] | None:
        """Each row's prompt without its left padding; None when the batch is not left-padded (the branches' slots
        would not line up)."""
        mask = batch["attention_mask"]
        pads = (mask.shape[1] - mask.sum(-1)).tolist()
        if any(not bool(mask[r, p:].all()) for r, p in enumerate(pads)):
            return None
        return [batch["input_ids"][r, p:].tolist() for r, p in enumerate(pads)]

    def offer(self, bi: int, batch, gens: list[list[int]]) -> None:
        """The `full` policy's generation of batch `bi` (ids as generate() returned them): on the hf engine under
        greedy it is the thought every trial policy writes up to its stop, so they need not generate it again."""
        prompts = self._prompts(batch)
        if self.ev.engine == "hf" and not self.ev.sampling.get("do_sample") and prompts is not None:
            self._gens[(bi, self.ev.max_new_tokens)] = _Generation(prompts, [list(g) for g in gens])

    def refusal(self) -> str | None:
        """Why no batch can take this route, or None."""
        if self.ev.sampling.get("do_sample"):
            return "sampling: after a stop the live run draws from its own batch's random stream"
        return shared_route_refusal(self.ev.model, new_cache(self.ev.model), None)

    @torch.no_grad()
    def _generation(self, bi: int, batch) -> _Generation | None:
        ev = self.ev
        key = (bi, ev.max_new_tokens)
        if key not in self._gens:
            prompts = self._prompts(batch)
            if prompts is None:
                return None
            # the live route's generate() call, without its processor (greedy: the same thought up to any stop)
            out = ev.model.generate(**batch, max_new_tokens=ev.max_new_tokens, **ev.sampling)
            self._gens[key] = _Generation(prompts, out[:, batch["input_ids"].shape[1]:].tolist())
        return self._gens[key]

    def _checks(self, proc: TextStopProcessor, bi: int, batch, plen: int, inside: list[bool]) -> _Trials | None:
        key = (bi, proc.every, self.ev.max_new_tokens, proc.max_answer_tokens)
        if key in self._trials:
            return self._trials[key]
        g = self._generation(bi, batch)
        if g is None:
            return None
        ev = self.ev
        rec = _CheckRecorder(ev.tok, ev.markers, ev.exit_ids, ev.boundary, plen, inside, every=proc.every)
        ids = torch.cat([batch["input_ids"].cpu(), torch.tensor(g.gen, dtype=torch.long).view(len(g.gen), -1)], 1)
        for t in range(len(g.gen[0])):  # generate() calls its processors before each of its steps
            rec(ids[:, : plen + t], None)
        for r, row in enumerate(g.gen):
            e = next((i for i, tok in enumerate(row) if tok in ev.eos), None)
            if e is not None and ((rec.inside[r] and not rec.done[r]) or any(t > e for t in rec.at[r])):
                self._trials[key] = None  # a thought left open at eos: checks that depend on the live batch's length
                return None
        forced = list(ev.markers.close_ids) + list(ev.exit_ids)
        cuts = [(r, len(g.prompts[r]) + t - 1) for r in range(len(g.gen)) for t in rec.at[r]]
        prefixes = [p + row for p, row in zip(g.prompts, g.gen)]
        answers, probs = prefix_answers(ev.model, prefixes, cuts, forced, proc.max_answer_tokens, ev.eos,
                                        ev.tok.pad_token_id, rows_per_prefill=ev.batch_size, top_probs=True) \
            if cuts else ([], [])
        out = _Trials(rec.at, [[] for _ in g.gen], [[] for _ in g.gen])
        for (r, _), a, p in zip(cuts, answers, probs):
            out.answers[r].append(a)
            out.probs[r].append(p)
        self._trials[key] = out
        return out

    @torch.no_grad()
    def run(self, proc, bi: int, batch, plen: int, inside: list[bool]):
        """(generated ids per row, trial tokens per row) of trial processor `proc` (a fresh ConfidenceStop or
        ConsistencyStop: its check points and `decide`) on batch `bi`, as its live run would give them; None where
        this batch needs the live route."""
        tr = self._checks(proc, bi, batch, plen, inside)
        if tr is None:
            return None
        ev, g = self.ev, self._gens[(bi, self.ev.max_new_tokens)]
        forced = list(ev.markers.close_ids) + list(ev.exit_ids)
        gens, trial, stops = [list(row) for row in g.gen], [0] * len(g.gen), {}
        for r in range(len(g.gen)):
            for t, a, p in zip(tr.at[r], tr.answers[r], tr.probs[r]):
                trial[r] += len(forced) + len(a)
                if proc.decide(r, a, p):
                    stops[r] = (t, a)
                    break
        longer = []  # stops whose trial ran out of tokens before the row's answer budget: decode them further
        for r, (t, a) in stops.items():
            if ev.max_new_tokens - t - len(forced) > len(a) and not (a and a[-1] in ev.eos):
                longer.append(r)
            gens[r] = (g.gen[r][:t] + forced + a)[: ev.max_new_tokens]  # the live run stops at its token budget
        if longer:
            cuts = [(r, len(g.prompts[r]) + stops[r][0] - 1) for r in longer]
            budget = max(ev.max_new_tokens - stops[r][0] - len(forced) for r in longer)
            answers = prefix_answers(ev.model, [p + row for p, row in zip(g.prompts, g.gen)], cuts, forced, budget,
                                     ev.eos, ev.tok.pad_token_id, rows_per_prefill=ev.batch_size)
            for r, a in zip(longer, answers):
                gens[r] = (g.gen[r][: stops[r][0]] + forced + a)[: ev.max_new_tokens]
        return gens, trial
