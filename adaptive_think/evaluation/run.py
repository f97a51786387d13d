"""eval: run thinking policies side by side on the same questions and compare them.

Per policy: accuracy, mean thinking tokens, mean forward tokens (everything the model decoded,
trial answers included), wall-clock; per difficulty level too. Prints a table, writes JSON, and draws
the accuracy-vs-tokens plane when matplotlib is installed.

    adaptive-think eval --model bundled --probe bundled --n 300 --seed 2024 --json runs/eval.json
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from adaptive_think.config import ThinkConfig
from adaptive_think.controller import boundary_mask
from adaptive_think.engines.args import eos_token_ids
from adaptive_think.evaluation.baselines import ConfidenceStop, MarkerStop
from adaptive_think.evaluation.policies import PolicySpec, parse_policy
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
                 exit_text: str = "\n\n", engine: str = "hf", pattern=None, progress: bool = True):
        self.model, self.tok, self.items, self.checker = model, tokenizer, items, checker
        self.thinker = AdaptiveThinker(model, tokenizer, probe=probe)
        self.markers = self.thinker.markers
        self.batch_size, self.max_new_tokens, self.exit_text = batch_size, max_new_tokens, exit_text
        self.engine, self.pattern, self.progress = engine, pattern, progress
        self.exit_ids = tokenizer.encode(exit_text, add_special_tokens=False) if exit_text else []
        self.boundary = boundary_mask(tokenizer, self.thinker.vocab_size)
        self.eos = set(eos_token_ids(model))

    def _batches(self):
        for i in range(0, len(self.items), self.batch_size):
            chunk = self.items[i : i + self.batch_size]
            texts = [chat_prompt(self.tok, it.question) for it in chunk]
            batch = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
            yield chunk, batch

    def _think_config(self, spec: PolicySpec) -> ThinkConfig:
        if spec.kind == "full":
            return ThinkConfig()
        if spec.kind == "none":
            return ThinkConfig(policy="none", exit_text=self.exit_text)
        if spec.kind == "budget":
            return ThinkConfig(policy="budget", max_think_tokens=int(spec.value), exit_text=self.exit_text)
        return ThinkConfig(policy="probe", threshold=spec.value)

    @torch.no_grad()
    def run(self, spec: PolicySpec) -> dict:
        if spec.kind == "probe" and self.thinker.probe is None:
            raise ValueError(f"Policy {spec.name!r} needs a probe: pass --probe.")
        if spec.kind == "marker" and self.pattern is None:
            raise ValueError("Policy 'marker' needs the task's answer pattern (bundled tasks only).")
        rows = []
        t0 = time.perf_counter()
        for chunk, batch in tqdm(list(self._batches()), desc=f"eval {spec.name}", disable=not self.progress, leave=False):
            plen = batch["input_ids"].shape[1]
            inside = [find_subsequence(p, self.markers.open_ids) > find_subsequence(p, self.markers.close_ids)
                      for p in batch["input_ids"].tolist()]
            trial = [0] * len(chunk)
            reports = None
            kw = dict(max_new_tokens=self.max_new_tokens, do_sample=False)
            if spec.kind in ("marker", "confidence"):
                args = (self.tok, self.markers, self.exit_ids, self.boundary, plen, inside)
                if spec.kind == "marker":
                    proc = MarkerStop(*args, pattern=self.pattern)
                else:
                    proc = ConfidenceStop(*args, model=self.model, threshold=spec.value,
                                          pad_id=self.tok.pad_token_id)
                out = self.model.generate(**batch, logits_processor=[proc], **kw)
                trial = proc.trial_tokens
            else:
                out = self.thinker.generate(**batch, think=self._think_config(spec), engine=self.engine, **kw)
                reports = self.thinker.last_reports
            for r, it in enumerate(chunk):
                gen = out[r, plen:].tolist()
                n = next((j + 1 for j, t in enumerate(gen) if t in self.eos), len(gen))
                gen = gen[:n]
                think, had_block = think_tokens_of(gen, self.markers, inside[r], self.tok)
                text = self.tok.decode(gen, skip_special_tokens=False)
                skipped = reports[r].ended_by == "skipped" if reports is not None else (had_block and think == 0)
                rows.append(dict(level=it.level, correct=bool(self.checker(text, it.answer)), think=think,
                                 forward=n + trial[r], skipped=skipped))
        wall = time.perf_counter() - t0
        return summarise(rows, wall)


def summarise(rows: list[dict], wall: float) -> dict:
    def agg(rs):
        n = len(rs)
        return {"n": n, "accuracy": sum(r["correct"] for r in rs) / n, "think_tokens_mean": sum(r["think"] for r in rs) / n,
                "forward_tokens_mean": sum(r["forward"] for r in rs) / n, "skip_rate": sum(r["skipped"] for r in rs) / n}

    out = agg(rows)
    out["wall_s"] = round(wall, 3)
    by_level = defaultdict(list)
    for r in rows:
        by_level[r["level"]].append(r)
    out["per_level"] = {str(k): agg(v) for k, v in sorted(by_level.items())}
    return out


def pareto_check(results: dict) -> dict:
    """Is every budget / confidence / marker point on or under the probe's accuracy-vs-forward-tokens envelope?"""
    probes = [(v["forward_tokens_mean"], v["accuracy"]) for k, v in results.items() if k.startswith("probe")]
    if not probes:
        return {}
    beaten, not_beaten = [], []
    for name, v in results.items():
        if not name.startswith(("budget", "confidence", "marker")):
            continue
        best = max((a for f, a in probes if f <= v["forward_tokens_mean"]), default=None)
        (beaten if best is not None and best >= v["accuracy"] else not_beaten).append(name)
    return {"probe_dominates_all": not not_beaten, "beaten": beaten, "not_beaten": not_beaten}


def format_table(results: dict) -> str:
    lines = [f"{'policy':18s} {'accuracy':>9s} {'think tok':>10s} {'fwd tok':>9s} {'skip':>6s} {'wall s':>8s}"]
    for name, v in results.items():
        lines.append(f"{name:18s} {v['accuracy']:9.3f} {v['think_tokens_mean']:10.1f} {v['forward_tokens_mean']:9.1f} "
                     f"{v['skip_rate']:6.2f} {v['wall_s']:8.2f}")
    return "\n".join(lines)


def plot(results: dict, path) -> str | None:
    """Accuracy vs mean forward tokens per policy family, as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    fams = defaultdict(list)
    for name, v in results.items():
        fams[name.split(":")[0]].append((v["forward_tokens_mean"], v["accuracy"], name))
    for fam, pts in fams.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=fam)
    ax.set_xlabel("mean forward tokens per question")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def evaluate(evaluator: Evaluator, policies: list[str], log=print) -> dict:
    results = {}
    for text in policies:
        spec = parse_policy(text)
        results[spec.name] = evaluator.run(spec)
        v = results[spec.name]
        log(f"{spec.name:18s} acc {v['accuracy']:.3f}  think {v['think_tokens_mean']:.1f}  fwd {v['forward_tokens_mean']:.1f}")
    return results


def write_json(path, payload: dict) -> None:
    from adaptive_think.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2) + "\n"
    atomic_write(path, lambda p: Path(p).write_text(text))
