"""The `graph` engine: our own static-cache decode loop, one decode step captured once as a CUDA graph.

gpt-fast's loop (`prefill`, `decode_one_token`, `decode_n_tokens`, `generate`) around a Hugging Face model:

- prefill runs eagerly on a transformers `StaticCache` (the prompt length changes every call);
- one decode step = the model's forward for one token + the probe layer's hidden state (a forward hook
  copying into a static buffer) + the controller's step + forcing + sampling, reading and writing only
  static buffers, so it is captured once (`graph_mode="cudagraph"`: a `torch.cuda.CUDAGraph` of the eager
  step; `"compile"`: the same with the whole step (forward, sampling, forcing, done flags) compiled by
  inductor first, the Triton controller kernel launched between its two halves; `"reduce-overhead"`:
  `torch.compile(mode="reduce-overhead", fullgraph=True)` of the whole step) and replayed;
- the host looks at "is every row done" only every `check_every` steps, through one non-blocking copy of a
  flag into pinned memory; rows that finished write pad until then and the output is trimmed as HF trims.

Captured graphs, static caches and buffers are kept per (model, batch size, length bucket, settings) and
reused by later calls (capturing takes seconds, compiling about a minute; docs/design.md, "Engines"); a call
that fits in a larger cached runner's cache uses that runner. Decode attention reads only the cache slots
the rows can have reached (attention tiers, see `runner.py`). The engine makes no host synchronisation
between two done-checks; models it cannot capture (dynamic rotary embeddings, several devices) are refused.

    >>> thinker.generate(input_ids, attention_mask=mask, max_new_tokens=256, engine="graph",
    ...                  think=ThinkConfig(policy="probe"))
    >>> generate_graph(model, None, input_ids, max_new_tokens=64)        # no controller: plain fast decode
"""

from __future__ import annotations

import inspect
from dataclasses import fields

import torch

from adaptive_think.controller import ThinkController
from adaptive_think.controller.state import ControllerSpec, ProbeTensors
from adaptive_think.engines.args import UNSET, check_arguments, eos_token_ids, refusal, resolve, token_ids
from adaptive_think.engines.runner_cache import (  # noqa: F401 (public here)
    _RUNNERS,
    cache_info,
    clear_graph_cache,
    drop_runner,
    get_runner,
    set_cache_limit,
)
from adaptive_think.engines.runner import COMPILED, WARMUP_STEPS, DecodeRunner, sample  # noqa: F401 (sample: public)

GRAPH_MODES = ("eager", "cudagraph", "compile", "reduce-overhead")
MIN_BUCKET = 64
DYNAMIC_ROPE = ("dynamic", "longrope")  # rotary embeddings that recompute their frequencies from the length

# generation_config settings that add a logits processor the graph engine does not implement: (name, neutral values)
_CONFIG_OFF = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0), "sequence_bias": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False),
    "remove_invalid_values": (None, False), "guidance_scale": (None, 1.0), "watermarking_config": (None,),
    "stop_strings": (None,), "max_time": (None,),
}
_SAMPLING_OFF = {"typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0),
                 "min_p": (None,), "top_h": (None,)}
_KNOWN = ("inputs_embeds",)  # refused below with its own message


# -- arguments ------------------------------------------------------------------------------------------


def _check_kwargs(kwargs: dict, gen_cfg) -> None:
    check_arguments("graph", kwargs, gen_cfg, known=_KNOWN)
    if kwargs.get("inputs_embeds") is not None:
        raise refusal("graph", "inputs_embeds", "the engine feeds token ids; markers are read from them")
    do_sample = getattr(gen_cfg, "do_sample", None)
    checks = dict(_CONFIG_OFF, **(_SAMPLING_OFF if do_sample else {}))
    for name, neutral in checks.items():
        value = getattr(gen_cfg, name, None)
        if value not in neutral:
            raise refusal("graph", f"generation_config.{name}={value!r}", "the graph engine has no such logits processor")


def _rope_types(params) -> set[str]:
    """Every rope_type named in a config's rope parameters (flat, or one dict per layer type)."""
    if not isinstance(params, dict):
        return set()
    found = {str(params[k]) for k in ("rope_type", "type") if params.get(k) is not None}
    for value in params.values():
        found |= _rope_types(value)
    return found


def check_capturable(model) -> None:
    """Refuse, naming the setting, a model whose decode step cannot be captured once and replayed."""
    devices = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    if len(devices) > 1:
        raise refusal("graph", f"a model spread over several devices (hf_device_map places it on {sorted(devices)})",
                      "a captured step and its static cache live on one device")
    cfg = model.config.get_text_config()
    rope = set()
    for name in ("rope_parameters", "rope_scaling"):
        rope |= _rope_types(getattr(cfg, name, None))
    dynamic = sorted(rope & set(DYNAMIC_ROPE))
    if dynamic:
        raise refusal("graph", f"rope_type={dynamic[0]!r}",
                      "this rotary embedding recomputes its frequencies from the sequence length inside the step, "
                      "a data-dependent branch a captured step cannot hold")
    attn = model.config._attn_implementation
    if attn not in ("sdpa", "eager"):
        raise refusal("graph", f"attn_implementation={attn!r}", "the engine builds sdpa/eager masks itself")


def _bucket(n: int) -> int:
    """Static-cache length for n tokens: the next power of two from MIN_BUCKET (few distinct captures)."""
    size = MIN_BUCKET
    while size < n:
        size *= 2
    return size


def _cache_kwarg(model) -> str:
    """The forward's cache argument: `cache` (transformers >= 5.2x) or `past_key_values` (5.17)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# -- runners: what a captured step bakes in, and the per-model cache of runners -------------------------


def _spec_signature(spec: ControllerSpec) -> tuple:
    """What a captured step bakes in: scalars by value, tensors by shape (their contents are copied per call)."""
    out = []
    for f in fields(spec):
        v = getattr(spec, f.name)
        if torch.is_tensor(v):
            out.append((f.name, tuple(v.shape), v.dtype))
        elif isinstance(v, ProbeTensors):
            out.append((f.name, v.relu) + tuple((g.name, tuple(getattr(v, g.name).shape)) for g in fields(v)
                                                 if torch.is_tensor(getattr(v, g.name))))
        else:
            out.append((f.name, v))
    return tuple(out)


def _copy_spec(dst: ControllerSpec, src: ControllerSpec) -> None:
    for f in fields(dst):
        d, s = getattr(dst, f.name), getattr(src, f.name)
        if torch.is_tensor(d):
            d.copy_(s)
        elif isinstance(d, ProbeTensors):
            for g in fields(d):
                if torch.is_tensor(getattr(d, g.name)):
                    getattr(d, g.name).copy_(getattr(s, g.name))


# -- generate -------------------------------------------------------------------------------------------


def generate_graph(model, controller: ThinkController | None, input_ids: torch.Tensor, *, attention_mask=None,
                   max_new_tokens: int | None = None, max_length: int | None = None, do_sample: bool | None = None,
                   temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                   eos_token_id=UNSET, pad_token_id=None, probe_layer: int | None = None, check_every: int = 8,
                   graph_mode: str | None = None, generation_config=None, use_cache: bool | None = None,
                   **unsupported) -> torch.Tensor:
    """model.generate(input_ids, ...) for greedy or sampled decoding, with `controller` steering every row.

    input_ids [B, S] (left-padded with attention_mask [B, S]); returns [B, S + N]: the prompt and the new
    tokens, pad after each row's eos, N = steps until every row finished or max_new_tokens (like HF).
    controller: a ThinkController (begin/step/finish are called here) or None for plain decoding.
    graph_mode: "cudagraph" (default on CUDA), "compile", "reduce-overhead" or "eager" (default elsewhere).

    Example:
        >>> out = generate_graph(model, thinker.controller(ThinkConfig(policy="budget", max_think_tokens=64)),
        ...                      ids, attention_mask=mask, max_new_tokens=256)
    """
    gen_cfg = generation_config or getattr(model, "generation_config", None)
    _check_kwargs(unsupported, gen_cfg)
    if use_cache is False:
        raise refusal("graph", "use_cache=False", "the engine is built on a static KV cache")
    if controller is not None and controller.traces:
        raise refusal("graph", "ThinkConfig(trace=True)", "a captured step cannot append to a Python list")
    check_capturable(model)
    if controller is not None and controller.needs_hidden and probe_layer is None:
        raise ValueError("the probe policy needs probe_layer (the decoder layer the probe reads).")
    if not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be a positive int, got {check_every!r}.")
    dev = model.device
    graph_mode = graph_mode or ("cudagraph" if dev.type == "cuda" else "eager")
    if graph_mode not in GRAPH_MODES:
        raise ValueError(f"graph_mode={graph_mode!r} is not known; use one of {GRAPH_MODES}.")
    if dev.type != "cuda" and graph_mode == "cudagraph":
        graph_mode = "eager"  # nothing to capture off CUDA

    input_ids = input_ids.to(dev)
    bsz, seq = input_ids.shape
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(dev)
    do_sample = bool(resolve("do_sample", do_sample, gen_cfg, model))
    sampling = (do_sample, float(resolve("temperature", temperature, gen_cfg, model)),
                int(resolve("top_k", top_k, gen_cfg, model) or 0), float(resolve("top_p", top_p, gen_cfg, model)))
    if not do_sample:
        sampling = (False, 1.0, 0, 1.0)
    if max_new_tokens is None:
        max_new_tokens = getattr(gen_cfg, "max_new_tokens", None)
    if max_new_tokens is None:
        max_new_tokens = int(resolve("max_length", max_length, gen_cfg, model)) - seq
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens} (prompt of {seq} tokens).")
    eos = eos_token_ids(model, {"eos_token_id": eos_token_id, "generation_config": generation_config})
    pad = pad_token_id if pad_token_id is not None else getattr(gen_cfg, "pad_token_id", None)
    pad = int(pad) if pad is not None else (eos[0] if eos else 0)

    # + WARMUP_STEPS: building a runner runs that many decode steps past the prompt before capturing
    need = seq + max(max_new_tokens, WARMUP_STEPS)
    length = _bucket(need)
    window = getattr(model.config, "sliding_window", None)
    if window and length > window:
        if need > window:
            raise refusal("graph", f"{seq + max_new_tokens} tokens past sliding_window={window}", "no rolling cache")
        length = window
    spec_key = (_spec_signature(controller.spec) + (controller.impl, controller.force_capacity)
                if controller is not None else None)
    dtype = model.get_input_embeddings().weight.dtype
    # only what changes the captured code; pad and eos ids are buffer contents (their count is a shape)
    key = (bsz, dev, dtype, graph_mode, sampling, max(len(eos), 1), spec_key, probe_layer if spec_key else None)

    def make():
        if controller is not None:
            controller.begin(input_ids)  # a valid state to warm up on
        return DecodeRunner(model, bsz, length, controller, probe_layer, sampling, pad, eos, graph_mode,
                            _cache_kwarg(model))

    # buffers made under a caller's inference_mode would refuse in-place updates in a later call outside it
    with torch.inference_mode(False), torch.no_grad():
        runner, fresh = get_runner(model, key, seq + max_new_tokens, length, make)
        runner.set_ids(pad, eos)
        if fresh or not runner.captured:
            # warm-up steps sample too: keep them off the caller's random stream, so a seed reproduces a run
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                try:
                    runner.build(input_ids, attention_mask)
                except BaseException:
                    drop_runner(model, key, runner.length)  # a half-built runner is never reused
                    raise
        if controller is not None:
            controller.begin(input_ids)
            _copy_spec(runner.ctl.spec, controller.spec)
            runner.ctl.params.copy_(controller.params)
            runner.ctl.state.copy_(controller.state)  # reset in place: the graph reads these addresses
        runner.active = True
        try:
            runner.prefill(input_ids, attention_mask)
            steps = 1
            # off CUDA every step is synchronous anyway: checking each one wastes no time and no steps
            every = check_every if dev.type == "cuda" else 1
            while steps < max_new_tokens:
                n = min(every, max_new_tokens - steps)
                runner.decode_n_tokens(n)
                steps += n
                if runner.all_finished():
                    break
        finally:
            runner.active = False
        new = runner.tokens[:, :steps]  # [B, steps]
        finished = (new[:, :, None] == runner.eos[None, None, :]).any(-1)  # [B, steps]
        if bool(finished.any(-1).all()):  # HF stops at the step where the last row finished
            steps = int(finished.float().argmax(-1).max()) + 1
        out = torch.cat([input_ids, new[:, :steps]], dim=1)
        if controller is not None:
            controller.state.copy_(runner.ctl.state)
            controller.finish(out[:, -1])
    return out
