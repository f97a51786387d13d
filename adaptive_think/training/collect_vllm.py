"""`collect --engine vllm`: the thoughts and every forced-exit answer through vLLM's offline engine, prefix caching on.

Per batch, one vLLM call generates the thoughts and the no-think answers (token-id prompts: the hf engine's own
prompts), and one more decodes every forced exit, `prompt + thought[:j + 1] + close marker + exit text`, up to
max_answer_tokens. Prefix caching computes the prefix the exits of a thought share once (the thought's own
blocks, kept from its generation), so an exit pays only its tokens past the last full KV block it shares (32
tokens at most with the block size this engine asks for on the CPU; vLLM's 16 on a GPU) plus the forced ones.

The hidden states of the candidate layers and the logit scores of each decode step (close-margin, entropy
score: controller/logit_score.py) come from one teacher-forced forward of the hf model, loaded beside vLLM from
the same folder, over prompt + generated tokens: decode step t of the hf engine is the position that read the
t-th fed token (the prompt's last token at t = 0), and the teacher-forced pass reads the same tokens there, so
the state and the logits are the same up to float rounding. That pass costs one prefill per question (only the
positions the records keep are run) and the hf model's memory.

Records, shards, index, resume, health checks and fail-fast are collect.py's (`collect(..., batch_fn=...)`),
with the records planned by the same `plan_batch`: under greedy decoding the records equal the hf engine's.
Sampled: vLLM's sampler with the collection's temperature / top-k / top-p / min-p (resolved with HF's
precedence against the model's generation_config, as the hf engine samples), each request seeded from the
run's sampling seed, its question id and what it generates (seeded and resumable; not the hf engine's draws).

    llm = vllm_engine(model_dir, model, kv_cache_memory_bytes=2**30)
    collect_vllm(llm, model, tok, items, "runs/c", checker, CollectConfig(every=8))
"""

from __future__ import annotations

from functools import partial

import torch
from transformers import DynamicCache

from adaptive_think.controller.logit_score import checkpoint_scores
from adaptive_think.engines.args import eos_token_ids, resolve
from adaptive_think.engines.graph import _cache_kwarg
from adaptive_think.engines.layer_hook import LayerCapture
from adaptive_think.markers import ThinkMarkers
from adaptive_think.training.branches import generate_only_setting
from adaptive_think.training.collect import (CollectConfig, batch_prompts, collect, count_batch, derived_seed,
                                             finish_batch, plan_batch)
from adaptive_think.training.items import Item

NEEDED_BY = "collect --engine vllm"
# LLM() arguments this engine sets itself (name -> what to do instead)
_OWN = {
    "model": "the model is --model (the hf model of the teacher-forced pass loads from the same folder)",
    "dtype": "the dtype is the hf model's (--dtype), so that both passes compute in the same precision",
    "tokenizer": "the prompts are token ids from --model's tokenizer",
}
CPU_BLOCK = 32  # the smallest KV block vLLM's CPU attention takes (its default, 128, would re-prefill ~64 per exit)
TEACHER_CHUNK = 512  # positions per teacher-forced forward: bounds the logits' memory to CHUNK x V floats


def check_vllm_kwargs(kwargs: dict) -> dict:
    """The LLM() keyword arguments a vLLM collection may pass through (e.g. tensor_parallel_size,
    kv_cache_memory_bytes, max_model_len, gpu_memory_utilization), or a ValueError for those it cannot take."""
    for name, why in _OWN.items():
        if name in kwargs:
            raise ValueError(f"{NEEDED_BY} sets {name!r} itself ({why}); drop it from the vLLM arguments.")
    if kwargs.get("enable_prefix_caching", True) is not True:
        raise ValueError(f"{NEEDED_BY} needs enable_prefix_caching=True: every forced exit reuses its thought's "
                         "cached prefix (without it each exit re-prefills the whole thought); drop the setting.")
    if int(kwargs.get("data_parallel_size", 1)) != 1:
        raise ValueError(f"data_parallel_size={kwargs['data_parallel_size']}: vLLM's offline engine runs data "
                         "parallelism only as one process per rank. Launch the ranks instead, each with its own "
                         "engine: torchrun --nproc_per_node N scripts/collect_probe_data.py --engine vllm ... "
                         "(and --tensor-parallel-size to spread each engine over several GPUs).")
    return dict(kwargs)


def check_decoding(model, cfg: CollectConfig) -> None:
    """A ValueError when the model's generation_config asks for a logits processor only generate() applies: the vLLM
    engine would decode otherwise than the hf engine."""
    setting = generate_only_setting(model, cfg.sampling)
    if setting is not None:
        raise ValueError(f"{NEEDED_BY} cannot reproduce the hf engine's decoding: {setting}. Collect with "
                         "--engine hf, or clear that setting in the model's generation_config.json.")


def vllm_engine(model_path, model, **kwargs):
    """vLLM's offline LLM over the model folder `model_path`, in the dtype of `model` (its hf twin, already
    loaded), prefix caching on; kwargs: other LLM() arguments (check_vllm_kwargs)."""
    from adaptive_think.integrations.vllm import require_vllm

    vllm = require_vllm(NEEDED_BY)
    from vllm.platforms import current_platform

    kwargs = check_vllm_kwargs(kwargs)
    if current_platform.is_cpu():
        kwargs.setdefault("block_size", CPU_BLOCK)
    kwargs.setdefault("seed", 0)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return vllm.LLM(model=str(model_path), dtype=dtype, enable_prefix_caching=True, **kwargs)


def sampling_params(model, cfg: CollectConfig, max_tokens: int, eos: tuple[int, ...], key: str):
    """vLLM SamplingParams of one request: greedy, or sampled as the hf engine samples (same settings, HF's
    precedence), seeded from the run's seed and `key`. Stops at exactly the eos ids generate() stops at."""
    from vllm import SamplingParams

    common = dict(max_tokens=max_tokens, stop_token_ids=list(eos), ignore_eos=True, detokenize=False)
    if not cfg.sampling:
        return SamplingParams(temperature=0.0, **common)
    get = lambda name: resolve(name, cfg.sampling.get(name), None, model)  # noqa: E731
    return SamplingParams(temperature=float(get("temperature") or 1.0), top_k=int(get("top_k") or 0),
                          top_p=float(get("top_p") or 1.0), min_p=float(get("min_p") or 0.0),
                          seed=derived_seed(cfg, key) % 2**63, **common)


def _generate(llm, prompts: list[list[int]], params: list) -> tuple[list[list[int]], int]:
    """(each prompt's generated token ids, prompt tokens vLLM computed, its prefix-cache hits not counted)."""
    if not prompts:
        return [], 0
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    computed = sum(len(o.prompt_token_ids) - (o.num_cached_tokens or 0) for o in outs)
    return [list(o.outputs[0].token_ids) for o in outs], computed


@torch.no_grad()
def teacher_forced(model, sequences: list[list[int]], starts: list[int], needs: list[int], layers: list[int],
                   close_id: int, states: bool = True, chunk: int = TEACHER_CHUNK):
    """Per row b, the decode steps t < needs[b] of a generation replayed: states [n, L, D] fp16 on the CPU
    ([n, L, 0] without `states`) and logit scores [n, 2] (close-margin, entropy score). Step t is position
    starts[b] + t of sequences[b] (prompt + generated tokens; starts[b]: the prompt's last token)."""
    capture = LayerCapture(model, layers, device=model.device, every_position=True) if states else None
    dev, cache_kw = model.device, _cache_kwarg(model)
    out_states, out_scores = [], []
    try:
        for seq, p0, n in zip(sequences, starts, needs):
            cache, kept, scores = DynamicCache(), [], []
            if capture is not None:
                capture.enabled = False  # the prompt before its last token: only its keys and values are needed
            if p0 > 0:
                model(input_ids=torch.tensor([seq[:p0]], device=dev), use_cache=True, logits_to_keep=1,
                      **{cache_kw: cache})
            if capture is not None:
                capture.enabled = True
            for lo in range(p0, p0 + n, chunk):
                ids = torch.tensor([seq[lo : min(lo + chunk, p0 + n)]], device=dev)  # [1, c]
                logits = model(input_ids=ids, use_cache=True, **{cache_kw: cache}).logits[0]  # [c, V]
                scores.append(torch.stack(list(checkpoint_scores(logits.float(), close_id).values()), -1).cpu())
                if capture is not None:
                    kept.append(capture.stacked()[0].transpose(0, 1).to("cpu", torch.float16))  # [c, L, D]
            out_scores.append(torch.cat(scores))  # [n, 2]
            out_states.append(torch.cat(kept) if kept else torch.zeros(n, len(layers), 0, dtype=torch.float16))
            del cache
    finally:
        if capture is not None:
            capture.remove()
    return out_states, out_scores


def _check_lengths(llm, prompts: list[list[int]], no_think: list[list[int]], forced: list[int],
                   cfg: CollectConfig) -> None:
    limit = llm.llm_engine.model_config.max_model_len
    longest = max(max(map(len, prompts)) + cfg.max_new_tokens + len(forced) + cfg.max_answer_tokens,
                  max(map(len, no_think)) + cfg.max_answer_tokens)
    if longest > limit:
        raise ValueError(f"a forced exit of this batch may need {longest} tokens (prompt + --max-new-tokens + the "
                         f"exit + --max-answer-tokens), over the vLLM engine's max_model_len={limit}: raise it "
                         f"(--vllm-kwargs '{{\"max_model_len\": {longest}}}') or lower --max-new-tokens.")


@torch.no_grad()
def collect_batch_vllm(llm, model, tokenizer, markers: ThinkMarkers, items: list[Item], checker, cfg: CollectConfig,
                       layers: list[int], boundary: torch.Tensor, cost: dict | None = None):
    """collect.collect_batch on vLLM: the same records and tensors; `llm` generates, `model` (the same weights on
    the hf side) replays each thought once for its states and logit scores."""
    B, pad = len(items), tokenizer.pad_token_id
    prompts, no_think, forced = batch_prompts(tokenizer, markers, items, cfg)
    _check_lengths(llm, prompts, no_think, forced, cfg)
    eos = eos_token_ids(model)
    params = partial(sampling_params, model, cfg, eos=eos)
    firsts, computed = _generate(llm, prompts + no_think,
                                 [params(cfg.max_new_tokens, key=f"{it.id}:thought") for it in items]
                                 + [params(cfg.max_answer_tokens, key=f"{it.id}:no-think") for it in items])
    thoughts, no_think_out = firsts[:B], firsts[B:]
    T = max(map(len, thoughts))
    gen = [g + [pad] * (T - len(g)) for g in thoughts]  # [B][T]: generate()'s batch, finished rows padded
    plan = plan_batch(tokenizer, markers, items, checker, cfg, prompts, gen, no_think_out, boundary)
    exit_prompts = [prompts[b] + gen[b][: gi + 1] + forced for _, b, gi in plan.exits]
    answers, exit_computed = _generate(llm, exit_prompts, [params(cfg.max_answer_tokens, key=f"{items[b].id}:exit{gi}")
                                                           for _, b, gi in plan.exits])
    needs = plan.steps_needed(B)
    starts = [len(p) - 1 for p in prompts]
    states, scores = teacher_forced(model, [p + g for p, g in zip(prompts, gen)], starts, needs, layers,
                                    markers.close_ids[0], cfg.states, TEACHER_CHUNK)
    count_batch(cost, plan, forced, answers, no_think_out, generated=sum(map(len, thoughts)),
                prefilled=computed + exit_computed + sum(s + n for s, n in zip(starts, needs)))
    return finish_batch(plan, tokenizer, markers, items, checker, cfg, layers, states, scores, answers)


def collect_vllm(llm, model, tokenizer, items: list[Item], out, checker, cfg: CollectConfig | None = None,
                 **kwargs) -> dict:
    """collect.collect with vLLM's engine `llm` (vllm_engine) generating and `model`, its hf twin, replaying each
    thought for states and scores; kwargs: collect()'s (think_tokens, rank, world, progress, doctor, log)."""
    cfg = cfg or CollectConfig()
    check_decoding(model, cfg)
    return collect(model, tokenizer, items, out, checker, cfg, batch_fn=partial(collect_batch_vllm, llm), engine="vllm",
                   **kwargs)
