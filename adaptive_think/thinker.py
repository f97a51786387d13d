"""`AdaptiveThinker`: a drop-in `generate()` that skips, caps or stops each row's thinking.

    >>> thinker = AdaptiveThinker(model, tokenizer)                       # markers detected
    >>> out = thinker.generate(input_ids, attention_mask=mask, max_new_tokens=256,
    ...                        think=ThinkConfig(policy="budget", max_think_tokens=64))
    >>> thinker.last_reports[0].think_tokens, thinker.last_reports[0].ended_by
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import torch

from adaptive_think.config import ThinkConfig, decoding_of
from adaptive_think.controller import ThinkController, ThinkReport, boundary_mask
from adaptive_think.engines.args import eos_token_ids, resolve
from adaptive_think.markers import resolve_markers

ENGINES = ("hf", "graph")


class AdaptiveThinker:
    """Wraps a loaded causal LM and its tokenizer; `generate()` takes model.generate's kwargs plus `think`.

    model: a transformers causal LM. tokenizer: its tokenizer. think_tokens: None (detect the model's
    markers) or (open, close) strings. probe: a `Probe`, a path to a saved probe folder (a trained probe or a
    training-free score file from `adaptive-think calibrate-score`), "close-margin" / "entropy" (an uncalibrated
    score: rows need an explicit ThinkConfig threshold, which carries no accuracy guarantee), or None.
    think: the default ThinkConfig of calls that pass none.
    """

    def __init__(self, model, tokenizer, think_tokens: tuple[str, str] | None = None, probe=None,
                 think: ThinkConfig | None = None, impl: str = "auto"):
        if not hasattr(model, "generate"):
            raise ValueError(f"AdaptiveThinker needs a generative model with .generate(), got {type(model).__name__}.")
        self.model = model
        self.tokenizer = tokenizer
        self.markers = resolve_markers(tokenizer, think_tokens)
        self.probe = self._load_probe(probe)
        self.think = think or ThinkConfig()
        self.impl = impl
        self.last_reports: list[ThinkReport] = []
        self._boundary: torch.Tensor | None = None
        self._empty_block: tuple[int, ...] | None = None
        self._generate = getattr(model, "_adaptive_think_original_generate", model.generate)

    def _load_probe(self, probe):
        if probe is None:
            return None
        from adaptive_think.probe import Probe

        from adaptive_think.controller.state import SCORE_KINDS

        if isinstance(probe, str) and probe in SCORE_KINDS:
            return Probe.training_free(probe, self.model)
        if isinstance(probe, (str, os.PathLike)):
            probe = Probe.from_pretrained(probe)
        if not isinstance(probe, Probe):
            raise ValueError(f"probe must be a Probe, a path to a saved probe, or None; got {type(probe).__name__}.")
        probe.check_model(self.model)
        return probe

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def boundary_tokens(self) -> torch.Tensor:
        """[V] bool mask of sentence/paragraph-ending tokens (computed once per thinker)."""
        if self._boundary is None:
            self._boundary = boundary_mask(self.tokenizer, self.vocab_size)
        return self._boundary

    def empty_block_ids(self) -> tuple[int, ...]:
        """Tokens between the markers of the chat template's empty think block (Qwen3: "\\n\\n").

        A skipped row writes exactly the block the model was trained to see with thinking disabled.
        """
        if self._empty_block is None:
            self._empty_block = ()
            template = getattr(self.tokenizer, "chat_template", None)
            if template:
                try:
                    text = self.tokenizer.apply_chat_template(
                        [{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False,
                        enable_thinking=False)
                except Exception:  # noqa: BLE001 - a template that cannot render just gets no inner text
                    text = ""
                o, c = text.rfind(self.markers.open_text), text.rfind(self.markers.close_text)
                if 0 <= o < c:
                    inner = text[o + len(self.markers.open_text) : c]
                    self._empty_block = tuple(self.tokenizer.encode(inner, add_special_tokens=False)) if inner else ()
        return self._empty_block

    def eos_ids(self, kwargs: dict) -> tuple[int, ...]:
        """The eos ids of a generate(**kwargs) call (the tokenizer's when the model names none)."""
        return eos_token_ids(self.model, kwargs, self.tokenizer)

    def controller(self, think: ThinkConfig | Sequence[ThinkConfig], kwargs: dict | None = None,
                   with_probe: bool = False) -> ThinkController:
        """The controller for one call on this model: `think` is one ThinkConfig (every row) or one per row.

        with_probe: carry this thinker's probe even when no row uses it (the graph engine then keys one captured
        step for every policy: budgets and probe thresholds of a sweep share it)."""
        configs = [think] if isinstance(think, ThinkConfig) else list(think)
        for c in configs:
            if not isinstance(c, ThinkConfig):
                raise ValueError(f"think must be a ThinkConfig or a list of them (one per row), got {type(c).__name__}.")
        uses_probe = any(c.policy == "probe" for c in configs)
        if uses_probe and self.probe is None:
            raise ValueError(
                'ThinkConfig(policy="probe") needs a probe, but this AdaptiveThinker has none: pass '
                "probe=Probe.from_pretrained(path) (or the path) to AdaptiveThinker, or train one with "
                "`adaptive-think collect` and `adaptive-think train-probe`."
            )
        defaults = self.probe.policy_defaults if self.probe is not None else {}
        boundary = any(c.stop_at_boundary or (c.policy == "probe" and c.stop_at_boundary is None
                                              and defaults.get("stop_at_boundary", False)) for c in configs)
        return ThinkController(
            self.markers,
            configs,
            encode=self._encode,
            empty_ids=self.empty_block_ids(),
            eos_ids=self.eos_ids(kwargs or {}),
            is_boundary=self.boundary_tokens() if boundary else None,
            probe=self.probe if (uses_probe or with_probe) else None,
            vocab_size=self.vocab_size,
            device=self.model.device,
            impl=self.impl,
            decoding=self._checked_decoding(kwargs or {}, uses_probe),
        )

    def _checked_decoding(self, kwargs: dict, uses_probe: bool) -> str:
        """`decoding(kwargs)`, warning when probe rows sample with settings the probe was not calibrated under."""
        mode = self.decoding(kwargs)
        calibrated = [c.get("sampling") for c in (self.probe.provenance.get("collections") or [])
                      if c.get("decoding") == "sampled"] if (uses_probe and self.probe is not None) else []
        if mode == "sampled" and calibrated:
            gen_cfg = kwargs.get("generation_config")
            now = {k: float(resolve(k, kwargs.get(k), gen_cfg, self.model)) for k in ("temperature", "top_p")}
            if not any(all(float(c.get(k, 1.0)) == v for k, v in now.items()) for c in calibrated):
                warnings.warn(f"this call samples with {now}, but the probe's sampled thresholds were calibrated "
                              f"under {calibrated[0]}: its accuracy-loss promise is not calibrated for these settings. "
                              "Collect a sampled collection with them and retrain, or sample as calibrated.",
                              stacklevel=4)
        return mode

    def decoding(self, kwargs: dict) -> str:
        """"sampled" when a generate(**kwargs) call samples (its do_sample, else its or the model's
        generation_config), else "greedy": which calibration of the probe's thresholds its rows take."""
        sample = resolve("do_sample", kwargs.get("do_sample"), kwargs.get("generation_config"), self.model)
        return decoding_of({"do_sample": sample})

    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, input_ids=None, *, think: ThinkConfig | Sequence[ThinkConfig] | None = None, engine: str = "hf",
                 **kwargs):
        """model.generate(input_ids, **kwargs) with thinking steered by `think`: one ThinkConfig for every row,
        or a list with one per row of input_ids (rows may mix policies, budgets, thresholds and texts).

        Returns exactly what model.generate returns for those kwargs; per-row reports land in
        `self.last_reports`. engine: "hf" (every generate() feature) or "graph" (static cache, fastest).
        With `inputs_embeds` and no input_ids (hf engine only) the prompt cannot be read as tokens: every row
        starts in the prompt phase and the markers are matched in the generated tokens only.
        """
        think = think or self.think
        if engine not in ENGINES:
            raise ValueError(f"engine={engine!r} is not known; use one of {ENGINES}.")
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if input_ids is None and kwargs.get("inputs_embeds") is None:
            raise ValueError("generate() needs input_ids (a [batch, seq] tensor of token ids) or inputs_embeds.")
        if input_ids is None and engine == "graph":
            raise ValueError('engine="graph" needs input_ids: it cannot start from inputs_embeds alone. Pass the '
                             'token ids, or use engine="hf" (markers are then matched in generated tokens only).')
        controller = self.controller(think, kwargs, with_probe=engine == "graph")
        rows = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[0]
        if not isinstance(think, ThinkConfig) and len(think) != rows:
            raise ValueError(f"think has {len(think)} ThinkConfigs for {rows} rows of input; "
                             "give one per row, or a single ThinkConfig for all.")
        self.last_reports = []
        if engine == "graph":
            from adaptive_think.engines.graph import generate_graph

            layer = self.probe.layer if (self.probe is not None and not self.probe.reads_logits) else None
            out = generate_graph(self.model, controller, input_ids, probe_layer=layer, **kwargs)
        else:
            from adaptive_think.engines.hf import generate_hf

            if input_ids is not None:
                kwargs["input_ids"] = input_ids
            out = generate_hf(self.model, controller, self._generate, self._probe_layer(think), kwargs)
        self.last_reports = controller.reports()
        return out

    def _probe_layer(self, think) -> int | None:
        configs = [think] if isinstance(think, ThinkConfig) else think
        if self.probe is None or self.probe.reads_logits:  # a score file reads the logits, no layer
            return None
        return self.probe.layer if any(c.policy == "probe" for c in configs) else None

    __call__ = generate
