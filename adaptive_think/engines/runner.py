"""`DecodeRunner`: the graph engine's static KV cache, static buffers and captured decode steps.

One runner serves one (model, batch size, cache length, graph-changing settings). Decode attention reads
only as many cache slots as the sequences can have reached: the runner keeps one captured step per
*attention tier* (64, 128, 256, ... up to the cache length, all sharing the cache, the buffers and one
graph memory pool) and the host, which knows how many steps it launched, replays the smallest tier that
covers the next segment. A step so costs in proportion to the real length, not to the cache length.
Compiled modes ("compile", "reduce-overhead") keep a single tier: each tier would compile again. Eager
mode (the CPU's) captures nothing, so it has no tiers: every step attends to exactly the slots written so
far, as HF's dynamic cache does.
With a mask, transformers' sdpa path (5.17) still expands grouped K/V heads (`repeat_kv`) before attention:
that copy now covers the tier's slots, not the whole cache.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import fields

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from adaptive_think.controller import ThinkController
from adaptive_think.controller.state import ControllerSpec, ProbeTensors
from adaptive_think.engines.layer_hook import LayerCapture
from adaptive_think.kernels import resolve_impl

MIN_TIER = 64
WARMUP_STEPS = 4  # decode steps a runner takes before its first capture (1 eager + 3 on the side stream)
COMPILED = ("compile", "reduce-overhead")


def compile_step(fn):
    """torch.compile of (part of) a decode step: one graph (fullgraph), static shapes; fallback_random keeps
    sampling's draws on torch's own generator, so a seed gives the eager step's tokens."""
    return torch.compile(fn, fullgraph=True, dynamic=False, options={"fallback_random": True})


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


def attention_tiers(length: int, graph_mode: str, cache: StaticCache) -> list[int]:
    """Cache lengths a step may attend to: powers of two from MIN_TIER, then `length` itself; [] in eager mode,
    where a step attends to exactly the slots written so far (it captures nothing, so any length is free)."""
    plain = all(type(layer) is StaticLayer for layer in getattr(cache, "layers", ()))
    if graph_mode in COMPILED or not plain:  # a sliding-window layer returns its own window: no slicing
        return [length]
    if graph_mode == "eager":
        return []
    tiers, size = [], MIN_TIER
    while size < length:
        tiers.append(size)
        size *= 2
    return tiers + [length]


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
    """Static KV cache, static buffers and the (captured) decode steps of one configuration.

    Buffers, all on the model's device: cur [B] (token fed to the next step), pos [B] (its position),
    slot [1] (its cache slot), t [1] (generated-token index), valid [B, L] (cache slots a query may see),
    done [B], all_done [] bool, tokens [B, L] (generated tokens), hidden [B, D] (probe layer, last position).
    Host-side: `next_slot` (the slot the next step writes) and `used` (slots written since the last reset).
    """

    def __init__(self, model, batch: int, length: int, controller: ThinkController | None, probe_layer: int | None,
                 sampling: tuple, pad: int, eos: tuple[int, ...], graph_mode: str, cache_kw: str):
        # a weak reference: the runner lives in a WeakKeyDictionary keyed on the model, so it must not keep it alive
        self._model = weakref.ref(model)
        self.batch, self.length, self.graph_mode = batch, length, graph_mode
        self.sampling = sampling
        dev = model.device
        self.device = dev
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        self.tiers = attention_tiers(length, graph_mode, self.cache)
        self.attend = length  # cache slots the next forward attends to (one of self.tiers, any length if none)
        for layer in getattr(self.cache, "layers", ()):
            layer.update = self._limited(layer.update)
        self.cache_kw = cache_kw
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
        self.pad = torch.tensor(pad, **long)  # []: the token finished rows write
        self.eos = torch.tensor(eos or (-1,), **long)  # [Ne]
        self.next_slot, self.used = 0, 0
        self.ctl = _private_controller(controller) if controller is not None else None
        self.needs_hidden = self.ctl is not None and self.ctl.needs_hidden
        self.hidden = None
        self.capture = None
        if self.needs_hidden:
            hidden_size = model.config.get_text_config().hidden_size
            self.hidden = torch.zeros(batch, hidden_size, dtype=self.dtype, device=dev)  # [B, D]
            # one persistent hook: re-registering would make a compiled forward recompile every call
            self.capture = LayerCapture(model, probe_layer, into=self.hidden)
            self.capture.enabled = False
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}  # attention tier -> captured step
        self._forward = self._eager_forward
        self._step = self.decode_one_token
        self.captured = False

    @property
    def active(self) -> bool:
        return self.capture is None or self.capture.enabled

    @active.setter
    def active(self, on: bool) -> None:
        """While active, the probe layer's hook fills `hidden` (other forwards of the model leave it alone)."""
        if self.capture is not None:
            self.capture.enabled = on

    def set_ids(self, pad: int, eos: tuple[int, ...]) -> None:
        """This call's pad and eos ids (buffer contents: any ids of the same count share the captured step)."""
        self.pad.fill_(pad)
        self.eos.copy_(torch.tensor(eos or (-1,), dtype=torch.long))

    def kv_bytes(self) -> int:
        """Bytes held by this runner's KV cache (0 before the first forward allocates it)."""
        total = 0
        for layer in getattr(self.cache, "layers", ()):
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if torch.is_tensor(t):
                    total += t.numel() * t.element_size()
        return total

    # -- pieces of a step --

    def _limited(self, update):
        """Wrap a cache layer's update so attention sees only the first `self.attend` slots (a static view)."""

        def limited(key_states, value_states, *args, **kwargs):
            keys, values = update(key_states, value_states, *args, **kwargs)
            if self.attend >= keys.shape[-2]:
                return keys, values
            return keys[:, :, : self.attend], values[:, :, : self.attend]

        return limited

    def _eager_forward(self, ids, mask, pos):
        """ids [B, T], mask [B, 1, T, l], pos [B, T] -> logits of the last position [B, V]."""
        out = self._model()(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                            **{self.cache_kw: self.cache})
        return out.logits[:, -1]

    def _mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """bool [B, 1, T, l] -> what the attention implementation wants (sdpa: bool; eager: additive)."""
        if self.sdpa:
            return allowed
        return torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill(
            ~allowed, torch.finfo(self.dtype).min)

    def _choose(self, logits: torch.Tensor, last: torch.Tensor) -> None:
        """Controller step, forcing, sampling, eos bookkeeping for logits [B, V] after feeding `last` [B]."""
        tok = sample(logits.float(), *self.sampling)  # [B]
        self._settle(tok, self._control(last, logits))

    def _control(self, last: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """The controller's step after feeding `last` [B] -> forced [B] (None without a controller); a score file
        reads the raw logits [B, V] (before temperature / top-k / top-p, as on the hf engine)."""
        if self.ctl is None:
            return None
        return self.ctl.step(last, self.hidden, logits if self.ctl.needs_logits else None)

    def _settle(self, tok: torch.Tensor, forced: torch.Tensor | None) -> None:
        """Forcing ([B], -1 = none), pad after eos, done flags, token record for the sampled tok [B]."""
        if forced is not None:
            tok = torch.where(forced >= 0, forced, tok)
        tok = torch.where(self.done, self.pad, tok)  # HF: finished rows write pad
        self.done |= (tok[:, None] == self.eos[None, :]).any(-1)
        self.tokens.index_copy_(1, self.t, tok[:, None])
        self.t.add_(1)
        self.cur.copy_(tok)
        self.all_done.copy_(self.done.all())

    def _tier(self, slots: int) -> int:
        """The smallest attention tier holding `slots` cache slots (`slots` itself without tiers)."""
        if not self.tiers and slots <= self.length:
            return slots
        for tier in self.tiers:
            if tier >= slots:
                return tier
        raise RuntimeError(f"{slots} cache slots needed but the runner holds {self.length}: a bucket was sized wrong.")

    def _reset(self) -> None:
        """Zero only the cache slots the previous call wrote (a masked slot is never read, but a new call starts
        clean) and rewind every layer's write position."""
        for layer in getattr(self.cache, "layers", ()):
            if type(layer) is not StaticLayer:
                layer.reset()
                continue
            if getattr(layer, "is_initialized", False) and self.used:
                layer.keys[:, :, : self.used].zero_()
                layer.values[:, :, : self.used].zero_()
            layer.cumulative_length.zero_()
        self.used = 0

    # -- the loop --

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Reset the buffers, run the prompt [B, S] through the model, choose the first token. Eager."""
        bsz, seq = input_ids.shape
        self._reset()
        real = attention_mask.bool()  # [B, S]
        self.valid.zero_()
        self.valid[:, :seq] = real
        self.done.zero_()
        self.all_done.zero_()
        self.t.zero_()
        self.tokens.copy_(self.pad.expand_as(self.tokens))
        self.slot.fill_(seq)
        # HF's positions under left padding: count of real tokens before, pads at 1
        pos = (attention_mask.long().cumsum(-1) - 1).masked_fill(~real, 1)  # [B, S]
        self.pos.copy_(pos[:, -1] + 1)
        self.attend = self._tier(seq)
        q = torch.arange(seq, device=self.device)
        k = torch.arange(self.attend, device=self.device)
        causal = k[None, :] <= q[:, None]  # [S, l]
        allowed = causal[None] & self.valid[:, None, : self.attend]  # [B, S, l]
        allowed = allowed | (~real[:, :, None] & (k[None, None, :] == q[None, :, None]))  # pad rows see themselves
        logits = self._eager_forward(input_ids, self._mask(allowed[:, None]), pos)
        self.next_slot = self.used = seq
        self._choose(logits, input_ids[:, -1].contiguous())  # stride 1 like `cur`: one kernel specialisation

    def decode_one_token(self) -> None:
        """One decode step on static buffers only: no host sync, no allocation the graph cannot replay.

        Attends to the first `self.attend` cache slots: the caller makes sure the step's slot is among them."""
        tok, logits = self._decode_head()
        self._decode_tail(tok, self._control(self.cur, logits))

    def _decode_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step up to the controller: the forward (which fills `hidden`) and sampling -> (token [B], logits
        [B, V])."""
        self.valid.index_fill_(1, self.slot, True)
        mask = self._mask(self.valid[:, None, None, : self.attend])  # [B, 1, 1, l]
        logits = self._forward(self.cur[:, None], mask, self.pos[:, None])  # [B, V]
        return sample(logits.float(), *self.sampling), logits

    def _decode_tail(self, tok: torch.Tensor, forced: torch.Tensor | None) -> None:
        """The step after the controller: forcing, done flags, token record, positions."""
        self._settle(tok, forced)
        self.pos.add_(1)
        self.slot.add_(1)

    def _compiled_step(self):
        """"compile" mode: the whole step through inductor (forward, sampling, forcing, done flags), so its tail
        fuses into a few kernels; the Triton controller kernel runs between two compiled halves."""
        inline = self.ctl is None or resolve_impl(self.ctl.impl, self.device) == "torch"
        if inline:  # no kernel, or the controller's torch reference, which inductor fuses with the rest
            return compile_step(self.decode_one_token)
        # a user Triton kernel is an opaque launch to inductor (nothing fuses across it) and a captured graph
        # replays it between the halves at no cost: outside the compiled region it needs no tracing support
        head, tail = compile_step(self._decode_head), compile_step(self._decode_tail)

        def step() -> None:
            tok, logits = head()
            tail(tok, self._control(self.cur, logits))

        return step

    def decode_n_tokens(self, n: int) -> None:
        """n decode steps on the smallest tier that holds them: n graph replays (or steps). No host sync."""
        tier = self._tier(self.next_slot + n)
        graph = self.graphs.get(tier)
        self.attend = tier
        for i in range(n):
            if graph is not None:
                graph.replay()
            else:
                if not self.tiers:  # eager: attend to exactly the slots written, this step's included
                    self.attend = self.next_slot + i + 1
                self._step()
        self.next_slot += n
        self.used = max(self.used, self.next_slot)

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
        """Warm up and capture the decode step of every tier (CUDA), or compile it; runs once per runner."""
        self.active = True
        try:
            # an eager prefill and step allocate the cache (lazily, outside any trace) and JIT the kernels
            self.prefill(input_ids, attention_mask)
            self.decode_n_tokens(1)
            if self.graph_mode in COMPILED:
                for t in self._static_tensors():
                    torch._dynamo.mark_static_address(t)
            if self.graph_mode == "compile":
                self._step = self._compiled_step()
            elif self.graph_mode == "reduce-overhead":
                self._step = torch.compile(self.decode_one_token, mode="reduce-overhead", fullgraph=True,
                                           dynamic=False)
            if self.device.type == "cuda":
                self._flag_host = torch.zeros((), dtype=torch.bool).pin_memory()
                self._flag_event = torch.cuda.Event()
                if self.graph_mode in ("cudagraph", "compile"):
                    self._capture_tiers(input_ids, attention_mask)
                elif self.graph_mode == "reduce-overhead":
                    self.decode_n_tokens(WARMUP_STEPS - 1)  # cudagraph trees record on the second/third call
            elif self.graph_mode != "eager":
                self.decode_n_tokens(WARMUP_STEPS - 1)  # compiles now, not inside the first timed call
        finally:
            self.active = False
        self.used = self.length  # warm-up steps wrote past the prompt: the next call zeroes what they left
        self.captured = True

    def _capture_tiers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        pool = torch.cuda.graph_pool_handle()  # tiers replay one at a time: they share one memory pool
        for i, tier in enumerate(self.tiers):
            self.prefill(input_ids, attention_mask)  # rewinds the write position: warm-up steps stay in the cache
            self.attend = tier
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graphs asks
                for _ in range(WARMUP_STEPS - 1 if i == 0 else 1):
                    self._step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._step()
            self.graphs[tier] = graph
        torch.cuda.synchronize()

    def _static_tensors(self):
        yield from (self.cur, self.pos, self.slot, self.t, self.valid, self.done, self.all_done, self.tokens, self.eos,
                    self.pad)
        if self.hidden is not None:
            yield self.hidden
        if self.ctl is not None:
            yield from self.ctl.state.tensors()
            yield from self.ctl.params.tensors()

    def close(self) -> None:
        if self.capture is not None:
            self.capture.remove()
            self.capture = None
        self.graphs = {}
        self.cache = None  # the KV memory goes with the last reference
