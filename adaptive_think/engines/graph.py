"""The `graph` engine: our own static-cache decode loop, one decode step captured once as a CUDA graph.

gpt-fast's loop (`prefill`, `decode_one_token`, `decode_n_tokens`, `generate`) around a Hugging Face model:

- prefill runs eagerly on a transformers `StaticCache` (the prompt length changes every call);
- one decode step = the model's forward for one token + the probe layer's hidden state (a forward hook
  copying into a static buffer) + the controller's step + forcing + sampling, reading and writing only
  static buffers, so it is captured once (`graph_mode="cudagraph"`: a `torch.cuda.CUDAGraph` of the eager
  step; `"compile"`: the same with the forward compiled by inductor first; `"reduce-overhead"`:
  `torch.compile(mode="reduce-overhead", fullgraph=True)` of the whole step) and replayed;
- the host looks at "is every row done" only every `check_every` steps, through one non-blocking copy of a
  flag into pinned memory; rows that finished write pad until then and the output is trimmed as HF trims.

Captured graphs, static caches and buffers are kept per (model, batch size, length bucket, settings) and
reused by later calls (capturing takes seconds, compiling about a minute; DESIGN.md section 6).

    >>> thinker.generate(input_ids, attention_mask=mask, max_new_tokens=256, engine="graph",
    ...                  think=ThinkConfig(policy="probe"))
    >>> generate_graph(model, None, input_ids, max_new_tokens=64)        # no controller: plain fast decode
"""

from __future__ import annotations

import copy
import inspect
import weakref
from collections import OrderedDict
from dataclasses import fields

import torch
from transformers import GenerationConfig, StaticCache

from adaptive_think.controller import ThinkController
from adaptive_think.controller.state import ControllerSpec, ProbeTensors
from adaptive_think.engines.hf import decoder_layers

GRAPH_MODES = ("eager", "cudagraph", "compile", "reduce-overhead")
MAX_CACHED_RUNNERS = 4  # per model: each holds a KV cache of its bucket
MIN_BUCKET = 64
WARMUP_STEPS = 4  # decode steps a runner takes before capture (1 eager + 3 on the side stream)

# generate() arguments the graph engine cannot honour, and why (the hf engine handles all of them)
UNSUPPORTED = {
    "streamer": "it streams from inside HF's loop",
    "logits_processor": "the captured step has no place for arbitrary Python processors",
    "stopping_criteria": "the captured step has no place for arbitrary Python criteria",
    "prefix_allowed_tokens_fn": "it is a Python callback per step",
    "num_beams": "beam search keeps several hypotheses per row",
    "num_beam_groups": "beam search keeps several hypotheses per row",
    "num_return_sequences": "it expands the batch inside HF's loop",
    "assistant_model": "assisted decoding writes several tokens per step",
    "prompt_lookup_num_tokens": "prompt-lookup decoding writes several tokens per step",
    "custom_generate": "it replaces the loop",
    "output_scores": "it returns per-step scores",
    "output_logits": "it returns per-step logits",
    "output_attentions": "it returns per-step attentions",
    "output_hidden_states": "it returns per-step hidden states",
    "return_dict_in_generate": "the graph engine returns the token tensor only",
    "synced_gpus": "it is for multi-GPU sharded generation",
    "negative_prompt_ids": "classifier-free guidance runs a second forward",
}
# argument values that mean "feature off" and so are accepted
_NEUTRAL = {"num_beams": (1, None), "num_beam_groups": (1, None), "num_return_sequences": (1, None),
            "output_scores": (False, None), "output_logits": (False, None), "output_attentions": (False, None),
            "output_hidden_states": (False, None), "return_dict_in_generate": (False, None), "synced_gpus": (False, None)}
# generation_config settings that add a logits processor the graph engine does not implement: (name, neutral values)
_CONFIG_OFF = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0), "sequence_bias": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False),
    "remove_invalid_values": (None, False), "guidance_scale": (None, 1.0), "watermarking_config": (None,),
    "stop_strings": (None,), "max_time": (None,), "num_beams": (None, 1), "num_return_sequences": (None, 1),
}
_SAMPLING_OFF = {"typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0),
                 "min_p": (None,), "top_h": (None,)}
_HF_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "max_length": 20}


# -- arguments ------------------------------------------------------------------------------------------


def _unsupported(name: str, why: str) -> ValueError:
    return ValueError(f"generate_graph does not support {name} ({why}); use engine=\"hf\" for it.")


def _check_kwargs(kwargs: dict, gen_cfg) -> None:
    for name, value in kwargs.items():
        if name in _NEUTRAL and value in _NEUTRAL[name]:
            continue
        if name in ("streamer", "logits_processor", "stopping_criteria") and not value:
            continue  # None or an empty list
        if name in UNSUPPORTED:
            raise _unsupported(f"{name}={value!r}", UNSUPPORTED[name])
        raise _unsupported(f"the argument {name!r}", "it is not one the graph engine knows")
    do_sample = getattr(gen_cfg, "do_sample", None)
    checks = dict(_CONFIG_OFF, **(_SAMPLING_OFF if do_sample else {}))
    for name, neutral in checks.items():
        value = getattr(gen_cfg, name, None)
        if value not in neutral:
            raise _unsupported(f"generation_config.{name}={value!r}", "the graph engine has no such logits processor")


def _resolve(name: str, value, gen_cfg):
    """HF's precedence: the argument, else the model's generation_config, else generate()'s global default."""
    if value is not None:
        return value
    value = getattr(gen_cfg, name, None)
    if value is not None:
        return value
    try:
        return GenerationConfig._get_default_generation_params().get(name, _HF_DEFAULTS.get(name))
    except AttributeError:  # older 5.x
        return _HF_DEFAULTS.get(name)


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if torch.is_tensor(value):
        value = value.tolist()
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


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


# -- sampling -------------------------------------------------------------------------------------------


def sample(logits: torch.Tensor, do_sample: bool, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None) -> torch.Tensor:
    """logits [B, V] fp32 -> [B] int64 token, HF's warpers (temperature, top-k, top-p) without a host sync.

    Sampling is the exponential race `argmax(p / Exp(1))` (gpt-fast's multinomial_sample_one_no_sync), drawn
    from torch's default generator, so `torch.manual_seed` reproduces a run, CUDA-graph replays included.
    """
    if not do_sample:
        return logits.argmax(-1)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)  # HF's TopPLogitsWarper, ascending
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= 1 - top_p
        drop[:, -1] = False  # min_tokens_to_keep = 1
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(-1)  # [B, V]
    race = torch.empty_like(probs).exponential_(1)
    return (probs / race).argmax(-1)


# -- the runner: static buffers and the captured step for one (model, batch, bucket, settings) ---------


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


def _private_controller(controller: ThinkController) -> ThinkController:
    """A copy whose spec and state tensors belong to the runner: the captured step reads their addresses."""
    ctl = copy.copy(controller)
    spec = controller.spec
    probe = spec.probe
    if probe is not None:
        probe = ProbeTensors(**{g.name: (getattr(probe, g.name).clone() if torch.is_tensor(getattr(probe, g.name))
                                         else getattr(probe, g.name)) for g in fields(probe)})
    ctl.spec = ControllerSpec(**{f.name: (getattr(spec, f.name).clone() if torch.is_tensor(getattr(spec, f.name))
                                          else getattr(spec, f.name)) for f in fields(spec)})
    ctl.spec.probe = probe
    ctl.params = controller.params.clone()  # per-row policy: contents copied in per call
    ctl.state = controller.state.clone()
    return ctl


class DecodeRunner:
    """Static KV cache, static buffers and the (captured) decode step of one configuration.

    Buffers, all on the model's device: cur [B] (token fed to the next step), pos [B] (its position),
    slot [1] (its cache slot), t [1] (generated-token index), valid [B, L] (cache slots a query may see),
    done [B], all_done [] bool, tokens [B, L] (generated tokens), hidden [B, D] (probe layer, last position).
    """

    def __init__(self, model, batch: int, length: int, controller: ThinkController | None, probe_layer: int | None,
                 sampling: tuple, pad: int, eos: tuple[int, ...], graph_mode: str):
        # a weak reference: the runner lives in a WeakKeyDictionary keyed on the model, so it must not keep it alive
        self._model = weakref.ref(model)
        self.batch, self.length, self.graph_mode = batch, length, graph_mode
        self.sampling, self.pad = sampling, pad
        dev = model.device
        self.device = dev
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        self.cache_kw = _cache_kwarg(model)
        self.sdpa = model.config._attn_implementation == "sdpa"
        self.dtype = model.get_input_embeddings().weight.dtype
        long = dict(dtype=torch.long, device=dev)
        self.cur = torch.zeros(batch, **long)  # [B]
        self.pos = torch.zeros(batch, **long)  # [B]
        self.slot = torch.zeros(1, **long)
        self.t = torch.zeros(1, **long)
        self.valid = torch.zeros(batch, length, dtype=torch.bool, device=dev)  # [B, L]
        self.done = torch.zeros(batch, dtype=torch.bool, device=dev)
        self.all_done = torch.zeros((), dtype=torch.bool, device=dev)
        self.tokens = torch.full((batch, length), pad, **long)  # [B, L]
        self.eos = torch.tensor(eos or (-1,), **long)  # [Ne]
        self.ctl = _private_controller(controller) if controller is not None else None
        self.needs_hidden = self.ctl is not None and self.ctl.needs_hidden
        self.hidden = None
        self._hook = None
        self._active = False
        if self.needs_hidden:
            hidden_size = model.config.get_text_config().hidden_size
            self.hidden = torch.zeros(batch, hidden_size, dtype=self.dtype, device=dev)  # [B, D]
            layers = decoder_layers(model)
            if not -len(layers) <= probe_layer < len(layers):
                raise ValueError(f"probe_layer={probe_layer} is out of range for a model with {len(layers)} layers.")
            # one persistent hook: re-registering would make a compiled forward recompile every call
            self._hook = layers[probe_layer].register_forward_hook(self._capture_hidden)
        self.graph = None
        self._forward = self._eager_forward
        self._step = self.decode_one_token
        self.captured = False

    # -- pieces of a step --

    def _capture_hidden(self, module, args, output):
        if self._active:
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.hidden.copy_(out[:, -1])  # [B, D]: a copy into a static buffer works inside a graph capture

    def _eager_forward(self, ids, mask, pos):
        """ids [B, T], mask [B, 1, T, L], pos [B, T] -> logits of the last position [B, V]."""
        out = self._model()(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                         **{self.cache_kw: self.cache})
        return out.logits[:, -1]

    def _mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """bool [B, 1, T, L] -> what the attention implementation wants (sdpa: bool; eager: additive)."""
        if self.sdpa:
            return allowed
        return torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill(
            ~allowed, torch.finfo(self.dtype).min)

    def _choose(self, logits: torch.Tensor, last: torch.Tensor) -> None:
        """Controller step, forcing, sampling, eos bookkeeping for logits [B, V] after feeding `last` [B]."""
        logits = logits.float()
        tok = sample(logits, *self.sampling)  # [B]
        if self.ctl is not None:
            forced = self.ctl.step(last, self.hidden)  # [B], -1 = none
            tok = torch.where(forced >= 0, forced, tok)
        tok = torch.where(self.done, torch.full_like(tok, self.pad), tok)  # HF: finished rows write pad
        self.done |= (tok[:, None] == self.eos[None, :]).any(-1)
        self.tokens.index_copy_(1, self.t, tok[:, None])
        self.t.add_(1)
        self.cur.copy_(tok)
        self.all_done.copy_(self.done.all())

    # -- the loop --

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Reset the buffers, run the prompt [B, S] through the model, choose the first token. Eager."""
        bsz, seq = input_ids.shape
        self.cache.reset()
        real = attention_mask.bool()  # [B, S]
        self.valid.zero_()
        self.valid[:, :seq] = real
        self.done.zero_()
        self.all_done.zero_()
        self.t.zero_()
        self.tokens.fill_(self.pad)
        self.slot.fill_(seq)
        # HF's positions under left padding: count of real tokens before, pads at 1
        pos = (attention_mask.long().cumsum(-1) - 1).masked_fill(~real, 1)  # [B, S]
        self.pos.copy_(pos[:, -1] + 1)
        q = torch.arange(seq, device=self.device)
        k = torch.arange(self.length, device=self.device)
        causal = k[None, :] <= q[:, None]  # [S, L]
        allowed = causal[None] & self.valid[:, None, :]  # [B, S, L]
        allowed = allowed | (~real[:, :, None] & (k[None, None, :] == q[None, :, None]))  # pad rows see themselves
        logits = self._eager_forward(input_ids, self._mask(allowed[:, None]), pos)
        self._choose(logits, input_ids[:, -1].contiguous())  # stride 1 like `cur`: one kernel specialisation

    def decode_one_token(self) -> None:
        """One decode step on static buffers only: no host sync, no allocation the graph cannot replay."""
        self.valid.index_fill_(1, self.slot, True)
        mask = self._mask(self.valid[:, None, None, :])  # [B, 1, 1, L]
        logits = self._forward(self.cur[:, None], mask, self.pos[:, None])  # [B, V]
        self._choose(logits, self.cur)
        self.pos.add_(1)
        self.slot.add_(1)

    def decode_n_tokens(self, n: int) -> None:
        """n decode steps: n graph replays (or eager steps). Makes no host synchronisation."""
        for _ in range(n):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()

    def all_finished(self) -> bool:
        """Host check: one non-blocking copy of the done flag into pinned memory, then wait for it."""
        if self.device.type != "cuda":
            return bool(self.all_done)
        self._flag_host.copy_(self.all_done, non_blocking=True)
        self._flag_event.record()
        self._flag_event.synchronize()
        return bool(self._flag_host)

    # -- capture --

    def build(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Warm up and capture the decode step (CUDA), or compile it; runs once per runner."""
        self._active = True
        try:
            # an eager prefill and step allocate the cache (lazily, outside any trace) and JIT the kernels
            self.prefill(input_ids, attention_mask)
            self.decode_one_token()
            if self.graph_mode in ("compile", "reduce-overhead"):
                for t in self._static_tensors():
                    torch._dynamo.mark_static_address(t)
            if self.graph_mode == "compile":
                self._forward = torch.compile(self._eager_forward, fullgraph=True, dynamic=False)
            elif self.graph_mode == "reduce-overhead":
                self._step = torch.compile(self.decode_one_token, mode="reduce-overhead", fullgraph=True,
                                           dynamic=False)
            if self.device.type == "cuda":
                self._flag_host = torch.zeros((), dtype=torch.bool).pin_memory()
                self._flag_event = torch.cuda.Event()
                if self.graph_mode in ("cudagraph", "compile"):
                    self._capture()
                elif self.graph_mode == "reduce-overhead":
                    for _ in range(WARMUP_STEPS - 1):  # cudagraph trees record on the second/third call
                        self._step()
            elif self.graph_mode != "eager":
                for _ in range(WARMUP_STEPS - 1):
                    self._step()  # compiles now, not inside the first timed call
        finally:
            self._active = False
        self.captured = True

    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graphs asks
            for _ in range(WARMUP_STEPS - 1):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()
        torch.cuda.synchronize()

    def _static_tensors(self):
        yield from (self.cur, self.pos, self.slot, self.t, self.valid, self.done, self.all_done, self.tokens, self.eos)
        if self.hidden is not None:
            yield self.hidden
        if self.ctl is not None:
            yield from self.ctl.state.tensors()
            yield from self.ctl.params.tensors()

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.graph = None


_RUNNERS: "weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()


def clear_graph_cache(model=None) -> None:
    """Drop the captured steps and static caches of `model` (all models when None); removes their hooks."""
    for m in [model] if model is not None else list(_RUNNERS):
        for runner in _RUNNERS.pop(m, OrderedDict()).values():
            runner.close()


def _runner(model, key: tuple, make) -> tuple[DecodeRunner, bool]:
    per_model = _RUNNERS.setdefault(model, OrderedDict())
    if key in per_model:
        per_model.move_to_end(key)
        return per_model[key], False
    if len(per_model) >= MAX_CACHED_RUNNERS:
        _, old = per_model.popitem(last=False)
        old.close()
    per_model[key] = runner = make()
    return runner, True


# -- generate -------------------------------------------------------------------------------------------


def generate_graph(model, controller: ThinkController | None, input_ids: torch.Tensor, *, attention_mask=None,
                   max_new_tokens: int | None = None, max_length: int | None = None, do_sample: bool | None = None,
                   temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                   eos_token_id=None, pad_token_id=None, probe_layer: int | None = None, check_every: int = 8,
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
        raise _unsupported("use_cache=False", "the engine is built on a static KV cache")
    if controller is not None and controller.traces:
        raise _unsupported("ThinkConfig(trace=True)", "a captured step cannot append to a Python list")
    attn = model.config._attn_implementation
    if attn not in ("sdpa", "eager"):
        raise _unsupported(f"attn_implementation={attn!r}", "the engine builds sdpa/eager masks itself")
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
    do_sample = bool(_resolve("do_sample", do_sample, gen_cfg))
    sampling = (do_sample, float(_resolve("temperature", temperature, gen_cfg)),
                int(_resolve("top_k", top_k, gen_cfg) or 0), float(_resolve("top_p", top_p, gen_cfg)))
    if not do_sample:
        sampling = (False, 1.0, 0, 1.0)
    if max_new_tokens is None:
        max_new_tokens = getattr(gen_cfg, "max_new_tokens", None)
    if max_new_tokens is None:
        max_new_tokens = int(_resolve("max_length", max_length, gen_cfg)) - seq
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens} (prompt of {seq} tokens).")
    eos = _ids(_resolve("eos_token_id", eos_token_id, gen_cfg))
    pad = pad_token_id if pad_token_id is not None else getattr(gen_cfg, "pad_token_id", None)
    pad = int(pad) if pad is not None else (eos[0] if eos else 0)

    # + WARMUP_STEPS: building a runner runs that many decode steps past the prompt before capturing
    need = seq + max(max_new_tokens, WARMUP_STEPS)
    length = _bucket(need)
    window = getattr(model.config, "sliding_window", None)
    if window and length > window:
        if need > window:
            raise _unsupported(f"{seq + max_new_tokens} tokens past sliding_window={window}", "no rolling cache")
        length = window
    spec_key = (_spec_signature(controller.spec) + (controller.impl, controller.force_capacity)
                if controller is not None else None)
    key = (bsz, length, dev, graph_mode, sampling, pad, eos, spec_key, probe_layer if spec_key else None)

    def make():
        if controller is not None:
            controller.begin(input_ids)  # a valid state to warm up on
        return DecodeRunner(model, bsz, length, controller, probe_layer, sampling, pad, eos, graph_mode)

    # buffers made under a caller's inference_mode would refuse in-place updates in a later call outside it
    with torch.inference_mode(False), torch.no_grad():
        runner, fresh = _runner(model, key, make)
        if fresh or not runner.captured:
            # warm-up steps sample too: keep them off the caller's random stream, so a seed reproduces a run
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                try:
                    runner.build(input_ids, attention_mask)
                except BaseException:
                    _RUNNERS[model].pop(key, None)  # a half-built runner is never reused
                    runner.close()
                    raise
        if controller is not None:
            controller.begin(input_ids)
            _copy_spec(runner.ctl.spec, controller.spec)
            runner.ctl.params.copy_(controller.params)
            runner.ctl.state.copy_(controller.state)  # reset in place: the graph reads these addresses
        runner._active = True
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
            runner._active = False
        new = runner.tokens[:, :steps]  # [B, steps]
        finished = (new[:, :, None] == runner.eos[None, None, :]).any(-1)  # [B, steps]
        if bool(finished.any(-1).all()):  # HF stops at the step where the last row finished
            steps = int(finished.float().argmax(-1).max()) + 1
        out = torch.cat([input_ids, new[:, :steps]], dim=1)
        if controller is not None:
            controller.state.copy_(runner.ctl.state)
            controller.finish(out[:, -1])
    return out
