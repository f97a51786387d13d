"""What the controller needs to know about the model a vLLM engine serves, built once per engine.

Markers, the template's empty think block, eos ids, the sentence-boundary mask and the probe come from the
model folder's tokenizer and config, the same way `AdaptiveThinker` finds them for the hf engine, so a
request gets the same controller on both engines. The probe is checked against the model's fingerprint
here, at engine start-up.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from adaptive_think.controller import boundary_mask
from adaptive_think.integrations.vllm.architectures import base_architecture
from adaptive_think.config import ThinkConfig, decoding_of
from adaptive_think.integrations.vllm.requests import ServingSettings, current_settings, request_config
from adaptive_think.markers import ThinkMarkers, resolve_markers

# Longest exit_text + stop_text a request may set, in characters; the forced-token buffer of every slot is
# sized for it (a byte-level tokenizer writes at most 4 tokens per character of UTF-8).
MAX_TEXT_CHARS = 128
TOKENS_PER_CHAR = 4


@dataclass
class EngineContext:
    """The served model's controller facts (host objects; tensors on the CPU until the controller moves them)."""

    tokenizer: object
    markers: ThinkMarkers
    empty_ids: tuple[int, ...]
    eos_ids: tuple[int, ...]
    boundary: torch.Tensor  # [V] bool
    probe: object | None  # adaptive_think.probe.Probe
    vocab_size: int

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def force_capacity(self) -> int:
        m = self.markers
        # skip segment (open, empty block, close, exit) + stop segment (stop text, close, exit)
        return (len(m.open_ids) + len(self.empty_ids) + 2 * len(m.close_ids)
                + 2 * TOKENS_PER_CHAR * MAX_TEXT_CHARS)


def empty_block_ids(tokenizer, markers: ThinkMarkers) -> tuple[int, ...]:
    """Tokens between the markers of the chat template's empty think block (AdaptiveThinker's rule)."""
    from adaptive_think.thinker import AdaptiveThinker

    holder = SimpleNamespace(tokenizer=tokenizer, markers=markers, _empty_block=None)
    return AdaptiveThinker.empty_block_ids(holder)


def served_eos_ids(model_dir, tokenizer) -> tuple[int, ...]:
    """eos ids by the hf engine's rule (engines/args.py): the generation config's, else the tokenizer's."""
    from transformers import GenerationConfig

    from adaptive_think.engines.args import eos_token_ids

    try:
        gen_cfg = GenerationConfig.from_pretrained(model_dir)
    except OSError:  # no generation_config.json: the tokenizer's eos
        gen_cfg = None
    return eos_token_ids(SimpleNamespace(generation_config=gen_cfg), {}, tokenizer)


def check_probe(probe, hf_config) -> None:
    """Raise the probe's own clear error when it was trained on another model (the wrapper's name mapped back)."""
    cfg = copy.copy(hf_config)
    cfg.architectures = [base_architecture(a) for a in (getattr(hf_config, "architectures", None) or [])]
    probe.check_model(SimpleNamespace(config=cfg))


def build_context(vllm_config, settings: ServingSettings) -> EngineContext:
    """The context of the engine `vllm_config` describes, with `settings`' probe (checked) and markers."""
    from transformers import AutoTokenizer

    model_config = vllm_config.model_config
    tokenizer = AutoTokenizer.from_pretrained(model_config.tokenizer, trust_remote_code=model_config.trust_remote_code)
    markers = resolve_markers(tokenizer, settings.think_tokens)
    hf_config = model_config.hf_config
    vocab_size = int(hf_config.get_text_config().vocab_size)
    probe = None
    if settings.probe is not None:
        from adaptive_think.probe import Probe

        probe = Probe.from_pretrained(settings.probe)
        check_probe(probe, hf_config)
    return EngineContext(
        tokenizer=tokenizer, markers=markers, empty_ids=empty_block_ids(tokenizer, markers),
        eos_ids=served_eos_ids(model_config.model, tokenizer), boundary=boundary_mask(tokenizer, vocab_size),
        probe=probe, vocab_size=vocab_size)


_EFFORTS_CACHE: dict[str, list[str]] = {}


def served_efforts(settings: ServingSettings) -> list[str] | None:
    """The served probe's effort rungs ([] for a single-point probe; None without a probe), read once."""
    if settings.probe is None:
        return None
    if settings.probe not in _EFFORTS_CACHE:
        from adaptive_think.probe import Probe

        _EFFORTS_CACHE[settings.probe] = list(Probe.from_pretrained(settings.probe).efforts)
    return _EFFORTS_CACHE[settings.probe]


_PROBE_CACHE: dict[str, object] = {}


def served_probe(settings: ServingSettings):
    """The served probe (a `Probe`), read once per folder; None without one."""
    if settings.probe is None:
        return None
    if settings.probe not in _PROBE_CACHE:
        from adaptive_think.probe import Probe

        _PROBE_CACHE[settings.probe] = Probe.from_pretrained(settings.probe)
    return _PROBE_CACHE[settings.probe]


def validate_request(sampling_params) -> ThinkConfig | None:
    """The request's ThinkConfig, or ValueError saying what is wrong (vLLM answers HTTP 400 with it)."""
    settings = current_settings()
    config = request_config(sampling_params.extra_args, settings, served_efforts(settings),
                            getattr(sampling_params, "thinking_token_budget", None))
    if config is None:
        return None
    if config.trace:
        raise ValueError("adaptive_think.trace is not supported under vLLM: per-step scores are not returned.")
    if config.policy == "probe" and config.decoding is None:
        # the probe's thresholds calibrated for how this request decodes (vLLM samples above temperature 1e-5)
        sampled = float(getattr(sampling_params, "temperature", 0.0) or 0.0) > 1e-5
        config = dataclasses.replace(config, decoding=decoding_of({"do_sample": sampled}))
    if config.policy == "probe" and (config.guard is not None or config.guard_fallback != "full"):
        from adaptive_think.controller.params import guard_settings

        # refused here, not in the engine: a guard the served probe lacks, a fallback rung it does not have
        guard_settings(config, served_probe(settings), config.decoding)
    texts = (config.exit_text or "") + (getattr(config, "stop_text", None) or "")
    if len(texts) > MAX_TEXT_CHARS:
        raise ValueError(f"adaptive_think exit_text and stop_text hold {len(texts)} characters together; at most "
                         f"{MAX_TEXT_CHARS} are supported under vLLM.")
    return config
