"""Forced-exit answers of many checkpoints of one generation, decoded on that generation's own KV cache.

A *branch* is a row's sequence cut at a checkpoint (cache slots up to `end`), then the forced tokens
(close marker + exit text), then a short answer. Instead of re-prefilling `prompt + thought[:j] + forced`
for every checkpoint j (quadratic in the thought's length), the branches of a batch decode together as
extra query tokens over the cache the generation left behind: a 4D attention mask lets branch j see the
row's slots up to its checkpoint and its own tokens, and explicit position ids put its tokens where the
re-prefilled sequence would have them. Branches go in groups, latest checkpoints first, so the cache is
cropped to each group's last checkpoint (dropping the previous group's answer slots) and never copied.
See docs/design.md, "Linear-cost collection".

    answers = branch_answers(model, cache, pads, [Branch(0, 41), Branch(0, 49)], forced, 16, eos, pad)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.cache_utils import DynamicCache, DynamicLayer

from adaptive_think.engines.args import resolve
from adaptive_think.engines.graph import _cache_kwarg
from adaptive_think.kernels.logit_stats import logit_stats

# generation_config settings whose logits processors only generate() applies: with any of them on, a model's
# exit answers are decoded by re-prefilling through generate() instead (name -> values meaning "off")
_GENERATE_ONLY = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0), "sequence_bias": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False),
    "remove_invalid_values": (None, False), "guidance_scale": (None, 1.0), "watermarking_config": (None,),
}
_SAMPLING_ONLY = {"typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0), "top_h": (None,)}
# fraction of a token's linear-layer work that a branch token may spend attending to keys it cannot see
# (other branches' answer slots, prefix slots past its checkpoint): sets how many branches decode together
WASTE = 0.25
MAX_QUERIES = 1024  # branch tokens of one forward at most (bounds the logits and mask memory)


@dataclass(frozen=True)
class Branch:
    """One forced exit: batch row `row` of the generation, cut after cache slot `end` (inclusive)."""

    row: int
    end: int


def shared_route_refusal(model, cache, sampling: dict | None) -> str | None:
    """Why the exit answers of this generation cannot be decoded on its cache, or None when they can."""
    if not isinstance(cache, DynamicCache) or not all(type(layer) is DynamicLayer for layer in cache.layers):
        return "its cache has sliding-window or other non-plain layers"  # a custom mask would bypass their windows
    return generate_only_setting(model, sampling)


def generate_only_setting(model, sampling: dict | None) -> str | None:
    """The model's generation_config setting whose logits processor only generate() applies (None: none is on)."""
    config = model.generation_config
    for name, off in dict(_GENERATE_ONLY, **(_SAMPLING_ONLY if sampling else {})).items():
        value = getattr(config, name, None)
        if value not in off:
            return f"generation_config.{name}={value!r} adds a logits processor only generate() applies"
    return None


def _warpers(model, sampling: dict | None) -> list:
    """generate()'s sampling warpers, in its order, with its precedence (argument, generation_config, default)."""
    if not sampling:
        return []
    get = lambda name: resolve(name, sampling.get(name), None, model)  # noqa: E731
    out = []
    if get("temperature") not in (None, 1.0):
        out.append(TemperatureLogitsWarper(float(get("temperature"))))
    if get("top_k") not in (None, 0):
        out.append(TopKLogitsWarper(int(get("top_k"))))
    if get("top_p") not in (None, 1.0):
        out.append(TopPLogitsWarper(float(get("top_p"))))
    if get("min_p") is not None:
        out.append(MinPLogitsWarper(float(get("min_p"))))
    return out


def _pick(logits: torch.Tensor, sampling: dict | None, warpers: list) -> torch.Tensor:
    """logits [N, V] -> [N] next tokens: greedy, or sampled as generate() samples."""
    if not sampling:
        return logits.argmax(-1)
    scores = logits.float()
    for w in warpers:
        scores = w(None, scores)
    return torch.multinomial(scores.softmax(-1), 1)[:, 0]


def group_size(model, forced: int, answer: int, rows: int) -> int:
    """Branches per row decoded together: a branch token attends to every answer slot of its group and to the
    prefix up to the group's last checkpoint, so a group's wasted keys must stay a small part of its work."""
    c = model.config
    heads = getattr(c, "num_attention_heads", 1)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    per_key = 4 * heads * head_dim * c.num_hidden_layers  # attention flops of one query-key pair, all layers
    per_token = 2 * sum(p.numel() for p in model.parameters())
    keys = WASTE * per_token / per_key
    return int(max(1, min(keys // (forced + answer + 8), MAX_QUERIES // max(rows, 1) // max(forced, 1))))


@torch.no_grad()
def branch_answers(model, cache: DynamicCache, pads: list[int], branches: list[Branch], forced: list[int],
                   max_new_tokens: int, eos_ids, pad_id: int, sampling: dict | None = None,
                   group: int | None = None, top_probs: bool = False):
    """Each branch's answer tokens (up to and including its first eos), as generate() would decode them after
    `prompt + thought[:cut] + forced`. The cache (B rows, left-padded by `pads`) is consumed: it is cropped.

    cache: the generation's, holding every slot a branch ends at. sampling: generate() kwargs ({}: greedy),
    drawn from torch's default generator. group: branches per row per forward (None: `group_size`).
    top_probs: return (answers, probs) instead, probs[i] an fp32 tensor [len(answers[i])] of the top-1 probability
    of each answer step's logits (what a greedy trial answer's confidence reads, see evaluation/trials.py).
    """
    out: list[list[int] | None] = [None] * len(branches)
    probs: list[torch.Tensor | None] = [None] * len(branches)
    if not branches or max_new_tokens < 1:
        empty = [[] for _ in branches]
        return (empty, [torch.zeros(0) for _ in branches]) if top_probs else empty
    forced = list(forced)
    if not forced:
        raise ValueError("branch_answers needs at least one forced token (the close marker).")
    dev = next(model.parameters()).device
    # each row's branches, latest first: group k holds every row's k-th G branches
    per_row: dict[int, list[int]] = {}
    for i in sorted(range(len(branches)), key=lambda i: -branches[i].end):
        per_row.setdefault(branches[i].row, []).append(i)
    rows = sorted(per_row)
    g = group or group_size(model, len(forced), max_new_tokens, len(rows))
    n_groups = max(-(-len(v) // g) for v in per_row.values())
    live = list(range(len(pads)))  # the batch rows still in the cache, in cache order
    eos = torch.tensor(sorted(set(eos_ids)) or [-1], device=dev)
    warpers = _warpers(model, sampling)
    for k in range(n_groups):
        rows_k = [r for r in rows if len(per_row[r]) > k * g]
        keep = [live.index(r) for r in rows_k]
        if len(keep) < len(live):  # rows without branches left leave the cache for good (groups only shrink)
            cache.batch_select_indices(torch.tensor(keep, device=dev))
            live = rows_k
        width = min(g, max(len(per_row[r]) for r in rows_k) - k * g)  # no padding past the fullest row's branches
        idx = [[per_row[r][j] if j < len(per_row[r]) else -1 for j in range(k * g, k * g + width)] for r in rows_k]
        ends = torch.tensor([[branches[i].end if i >= 0 else -1 for i in row] for row in idx], device=dev)  # [B, G]
        cut = int(ends.max()) + 1
        cache.crop(cut - cache.get_seq_length())  # drops later prefix slots and the last group's answers
        pad = torch.tensor([pads[r] for r in rows_k], device=dev)  # [B]
        tokens, top = _decode_group(model, cache, ends, pad, forced, max_new_tokens, eos, pad_id, sampling, warpers,
                                    top_probs)
        for b, row in enumerate(idx):
            for j, i in enumerate(row):
                if i >= 0:
                    out[i] = until_eos(tokens[b][j], set(eos_ids))
                    if top_probs:
                        probs[i] = top[b, j, : len(out[i])]
    return (out, probs) if top_probs else out


def until_eos(ids: list[int], eos: set[int]) -> list[int]:
    """Token ids up to and including the first eos (generate() pads the rest of a finished row)."""
    return ids[: next((n + 1 for n, t in enumerate(ids) if t in eos), len(ids))]


def _decode_group(model, cache, ends: torch.Tensor, pads: torch.Tensor, forced: list[int], steps: int,
                  eos: torch.Tensor, pad_id: int, sampling, warpers, top_probs: bool = False):
    """Decode one group: ends [B, G] (slot of each branch's last prefix token, -1: no branch).
    -> (tokens [B][G][n], top-1 probabilities [B, G, n] fp32 on the host, or None unless top_probs)."""
    dev = ends.device
    B, G = ends.shape
    nf = len(forced)
    dtype = next(model.parameters()).dtype
    slots = torch.arange(cache.get_seq_length(), device=dev)
    # prefix slots branch (b, g) sees: the row's own tokens (not its left padding) up to its checkpoint
    prefix = (slots >= pads[:, None, None]) & (slots <= ends[:, :, None])  # [B, G, C]
    k_branch = torch.arange(G, device=dev).repeat_interleave(nf)  # branch and order of each answer-slot key
    k_order = torch.arange(nf, device=dev).repeat(G)
    q_branch, q_order = k_branch, k_order
    ids = torch.tensor(forced, device=dev).repeat(B, G)  # [B, G * nf]
    pos = ((ends - pads[:, None] + 1).clamp(min=0)[:, :, None] + torch.arange(nf, device=dev)).view(B, G * nf)
    keep = torch.arange(G, device=dev) * nf + nf - 1  # logits of each branch's last forced token
    unfinished = ends >= 0  # [B, G]; no-branch slots are done from the start
    produced, tops, cache_kw = [], [], {_cache_kwarg(model): cache}
    for step in range(steps):
        own = (k_branch[None, :] == q_branch[:, None]) & (k_order[None, :] <= q_order[:, None])  # [Q, K_ans]
        seen = torch.cat([prefix.repeat_interleave(q_branch.numel() // G, dim=1), own.expand(B, -1, -1)], -1)
        mask = torch.zeros(seen.shape, dtype=dtype, device=dev).masked_fill_(~seen, torch.finfo(dtype).min)
        logits = model(input_ids=ids, attention_mask=mask[:, None], position_ids=pos, use_cache=True,
                       logits_to_keep=keep, **cache_kw).logits  # [B, G, V]
        nxt = _pick(logits.reshape(B * G, -1), sampling, warpers).view(B, G)
        if top_probs:  # generate() scores in fp32; the top-1 probability is exp(max logit - log-sum-exp)
            st = logit_stats(logits.reshape(B * G, -1).float())
            tops.append(torch.exp(st.max_logit - st.lse).view(B, G))
        nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad_id))  # generate()'s finished rows emit pad
        produced.append(nxt)
        unfinished &= ~torch.isin(nxt, eos)
        if step == steps - 1 or not bool(unfinished.any()):  # one sync a step, as generate()'s stopping check
            break
        ids, pos = nxt, pos.view(B, G, -1)[:, :, -1] + 1  # [B, G]
        q_branch, q_order = torch.arange(G, device=dev), torch.full((G,), nf + step, device=dev)
        k_branch, k_order = torch.cat([k_branch, q_branch]), torch.cat([k_order, q_order])
        keep = 0  # every fed token is a branch's latest
    top = torch.stack(tops, -1).cpu() if top_probs else None  # [B, G, n]
    return torch.stack(produced, -1).tolist(), top  # [B, G, n]


def new_cache(model) -> DynamicCache:
    """An empty cache built the way generate() builds its default one (the layer types come from the config)."""
    return DynamicCache(config=model.config.get_text_config(decoder=True))


@torch.no_grad()
def prefill(model, sequences: list[list[int]], pad_id: int) -> tuple[DynamicCache, list[int]]:
    """(cache, left pads) of one forward over `sequences`, left-padded into one batch, with the attention mask and
    position ids generate() gives a left-padded prompt: each row's slots hold what its own prefill would."""
    dev = next(model.parameters()).device
    width = max(map(len, sequences))
    pads = [width - len(s) for s in sequences]
    ids = torch.tensor([[pad_id] * p + list(s) for p, s in zip(pads, sequences)], device=dev)  # [B, W]
    mask = (torch.arange(width, device=dev)[None, :] >= torch.tensor(pads, device=dev)[:, None]).long()  # [B, W]
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # generate()'s positions for a left-padded prompt
    cache = new_cache(model)
    model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
          **{_cache_kwarg(model): cache})
    return cache, pads


def prefix_answers(model, prefixes: list[list[int]], cuts: list[tuple[int, int]], forced: list[int],
                   max_new_tokens: int, eos_ids, pad_id: int, sampling: dict | None = None, rows_per_prefill: int = 16,
                   top_probs: bool = False):
    """The answer after each forced exit `(row, i)` (prefixes[row][: i + 1] + forced, then up to max_new_tokens
    decoded, up to and including the first eos), as generate() would decode it after re-prefilling that sequence;
    from one prefill of each row's prefix (rows_per_prefill rows a batch, each cut at its last exit) and the
    branches of all its exits on that cache. None when `shared_route_refusal` refuses the model: the caller then
    re-prefills each exit. top_probs: (answers, probs) as branch_answers returns them.

        answers = prefix_answers(model, [prompt + thought], [(0, 30), (0, 41)], close + exit, 16, eos, pad)
    """
    if shared_route_refusal(model, new_cache(model), sampling) is not None:
        return None
    out: list = [None] * len(cuts)
    probs: list = [None] * len(cuts)
    by_row: dict[int, list[int]] = {}
    for n, (row, i) in enumerate(cuts):
        if not 0 <= i < len(prefixes[row]):
            raise ValueError(f"cut {i} lies outside prefix {row} ({len(prefixes[row])} tokens).")
        by_row.setdefault(row, []).append(n)
    rows = sorted(by_row)
    for k in range(0, len(rows), rows_per_prefill):
        chunk = rows[k : k + rows_per_prefill]
        last = [max(cuts[n][1] for n in by_row[r]) + 1 for r in chunk]  # nothing past a row's last exit is needed
        cache, pads = prefill(model, [prefixes[r][:m] for r, m in zip(chunk, last)], pad_id)
        mine = [n for r in chunk for n in by_row[r]]
        local = {r: b for b, r in enumerate(chunk)}
        got = branch_answers(model, cache, pads, [Branch(local[cuts[n][0]], pads[local[cuts[n][0]]] + cuts[n][1])
                                                  for n in mine], forced, max_new_tokens, eos_ids, pad_id, sampling,
                             top_probs=top_probs)
        answers, tops = got if top_probs else (got, [None] * len(mine))
        for n, a, p in zip(mine, answers, tops):
            out[n], probs[n] = a, p
    return (out, probs) if top_probs else out
