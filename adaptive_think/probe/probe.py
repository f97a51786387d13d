"""`Probe`: the small network on one decoder layer's hidden state, and its file format.

A probe folder holds `probe.safetensors` (weights) and `probe.json` (format version, layer, dims,
feature normalisation, heads, thresholds, calibration, provenance, and the fingerprint of the model it
was trained on). Never pickles. Format 2 adds an effort ladder (`ladder`: calibrated operating points,
see ladder.py) and `default_effort`; the top-level thresholds are the default rung's. Format 3 is a probe
with memory (`memory_size` K; weights `memory_w` [K, D], `memory_b` [K], and a ready head that reads D + K
features, see memory.py); a memoryless probe is still written as format 2. Format 1 files (one calibrated
point, no ladder) still load. Format 5 is a probe carrying an out-of-distribution guard (guard.py: tensors
`guard_*` beside the heads' and a `guard` section); a probe without one is written as before. Format 6 is a probe
whose memory has counting units (weight `memory_sum` [K], 1.0 where a unit sums sigmoid(feature) over the thought
instead of keeping its maximum; `memory_counts` in probe.json); any other probe is written as before. Format 7 is a
probe with a route (route.py: tensors `route_w`, `route_b` and a `route` section; each ladder rung then keeps
`thresholds_by_group`, one calibrated pair per group, and its top-level pair is the most conservative of them).
Format 8 is a probe (or score file) calibrated with a patience above 1 (`policy_defaults.patience`, boundaries in a
row per decoding, training/patience.py), whose thresholds an older reader would run at patience 1: too early.

A score file (format 4) is a probe without weights: its head `kind` is a training-free score read from the
step's logits ("close-margin" or "entropy", controller/logit_score.py), calibrated into the same ladder
(`adaptive-think calibrate-score`), with the same fingerprint check. It holds probe.json alone; `skip_kind`
says whether the same score at the prompt's end is the skip score ("close-margin") or no skip is made (null).

    >>> probe = Probe.from_pretrained("my-probe/")
    >>> probe.check_model(model)                       # clear error if it was trained on another model
    >>> ready, skip = probe.score(hidden)              # hidden [B, D] -> two [B] probabilities
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from adaptive_think.controller.state import NO_MEMORY, SCORE_KINDS, LogitScore, ProbeTensors
from adaptive_think.files import atomic_write
from adaptive_think.probe.guard import WEIGHT_NAMES as GUARD_WEIGHTS
from adaptive_think.probe.guard import Guard
from adaptive_think.probe.ladder import Rung, select_rung
from adaptive_think.probe.route import WEIGHT_NAMES as ROUTE_WEIGHTS
from adaptive_think.probe.route import Route

FORMAT_VERSION = 2
MEMORY_FORMAT_VERSION = 3  # written only by probes with memory, which older readers cannot run
SCORE_FORMAT_VERSION = 4  # written only by score files (no weights), which older readers cannot run
GUARD_FORMAT_VERSION = 5  # written only by probes with a guard, which older readers cannot run
COUNT_FORMAT_VERSION = 6  # written only by probes with counting memory units, which older readers cannot run
ROUTE_FORMAT_VERSION = 7  # written only by probes with a route, whose older readers would ignore the groups' pairs
PATIENCE_FORMAT_VERSION = 8  # written only by probes calibrated with a patience above 1, which older readers ignore
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8)
WEIGHTS_NAME = "probe.safetensors"
CONFIG_NAME = "probe.json"
HEADS = ("ready", "skip")
HEAD_PARTS = ("w1", "b1", "w2", "b2")


def model_fingerprint(model) -> dict:
    """What a probe must match: architecture, hidden size, layer count, vocabulary size."""
    cfg = getattr(model, "config", model)
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    archs = getattr(cfg, "architectures", None) or [type(model).__name__]
    return {
        "architecture": archs[0],
        "hidden_size": int(text_cfg.hidden_size),
        "num_hidden_layers": int(text_cfg.num_hidden_layers),
        "vocab_size": int(text_cfg.vocab_size),
    }


@dataclass
class Probe:
    """Two heads (`ready`, `skip`) on normalised features of decoder layer `layer`; or, for kind "close-margin" /
    "entropy", a training-free score read from the logits (no weights, no layer: `reads_logits`)."""

    layer: int  # -1 for a score file
    kind: str  # "linear" | "mlp" | "close-margin" | "entropy"
    weights: dict[str, torch.Tensor]  # mean, inv_std, {ready,skip}_{w1,b1,w2,b2}[, memory_w, memory_b[, memory_sum]]
    fingerprint: dict
    ready_threshold: float = 0.5
    skip_threshold: float = 2.0  # > 1: never skip until calibrated
    calibration: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    # ThinkConfig settings the thresholds were calibrated under (used where a ThinkConfig leaves None)
    policy_defaults: dict = field(default_factory=lambda: {"exit_text": "\n\n", "stop_at_boundary": True})
    ladder: list[Rung] = field(default_factory=list)  # effort rungs, most conservative first; [] = one point
    default_effort: str | None = None  # the rung the top-level thresholds come from
    # a score file: the same score at the prompt's end is the skip score ("close-margin"), or None: never skips
    skip_kind: str | None = None
    guard: Guard | None = None  # out-of-distribution guard of the prompt-end state (guard.py); None: none
    route: Route | None = None  # calibration groups of the prompt-end state (route.py); None: one group

    def __post_init__(self):
        if self.ladder and self.default_effort not in {r.name for r in self.ladder}:
            raise ValueError(f"Probe.default_effort={self.default_effort!r} is not one of its rungs "
                             f"{[r.name for r in self.ladder]}.")
        if self.kind not in ("linear", "mlp") + SCORE_KINDS:
            raise ValueError(f"Probe.kind must be 'linear', 'mlp' or a training-free score {SCORE_KINDS}, "
                             f"got {self.kind!r}.")
        if self.reads_logits:
            if self.weights:
                raise ValueError(f"A {self.kind!r} score file has no weights, got {sorted(self.weights)}.")
            if self.skip_kind not in (None, self.kind):
                raise ValueError(f"skip_kind={self.skip_kind!r}: a {self.kind!r} score file skips on its own score "
                                 f"({self.kind!r}) or not at all (None).")
            return
        if self.guard is not None and self.reads_logits:
            raise ValueError("A guard reads the probe layer's hidden state; a score file has none.")
        if self.skip_kind is not None:
            raise ValueError("skip_kind belongs to score files (kind 'close-margin' / 'entropy'), not trained heads.")
        missing = [k for k in self.weight_names() if k not in self.weights]
        if missing:
            raise ValueError(f"Probe weights are missing {missing}.")
        d = self.hidden_size
        for name in ("mean", "inv_std"):
            if tuple(self.weights[name].shape) != (d,):
                raise ValueError(f"Probe weight {name} has shape {tuple(self.weights[name].shape)}, expected ({d},).")
        if self.guard is not None and self.guard.mean.shape[0] != d:
            raise ValueError(f"The probe's guard is for hidden size {self.guard.mean.shape[0]}, its heads for {d}.")
        if self.route is not None and self.route.hidden_size != d:
            raise ValueError(f"The probe's route is for hidden size {self.route.hidden_size}, its heads for {d}.")
        self._check_groups()
        if ("memory_w" in self.weights) != ("memory_b" in self.weights):
            raise ValueError("Probe weights hold one of memory_w / memory_b without the other.")
        k = self.memory_size
        if k and (tuple(self.weights["memory_w"].shape) != (k, d) or tuple(self.weights["memory_b"].shape) != (k,)):
            raise ValueError(f"Probe memory weights have shapes {tuple(self.weights['memory_w'].shape)} and "
                             f"{tuple(self.weights['memory_b'].shape)}, expected ({k}, {d}) and ({k},).")
        if "memory_sum" in self.weights:
            flags = self.weights["memory_sum"]
            if not k or tuple(flags.shape) != (k,) or not bool(((flags == 0) | (flags == 1)).all()):
                raise ValueError(f"Probe weight memory_sum must be [K] = [{k}] of 0.0 (a maximum) / 1.0 (a count) "
                                 f"beside a memory, got shape {tuple(flags.shape)}.")
        if k and self.kind != "mlp":
            raise ValueError("A probe with memory has an MLP ready head (kind='mlp').")
        for head in HEADS:
            h = self.weights[f"{head}_w1"].shape[0]
            expect = {"w1": (h, d + (k if head == "ready" else 0)), "b1": (h,), "w2": (h,), "b2": (1,)}
            for part, shape in expect.items():
                got = tuple(self.weights[f"{head}_{part}"].shape)
                if got != shape:
                    raise ValueError(f"Probe weight {head}_{part} has shape {got}, expected {shape}.")

    @classmethod
    def training_free(cls, kind: str, model, skip: bool = False, provenance: dict | None = None) -> "Probe":
        """An uncalibrated score file of `kind` for `model` (or a fingerprint dict): it never stops until a
        ThinkConfig sets an explicit threshold, which carries no accuracy guarantee; `adaptive-think
        calibrate-score` calibrates one."""
        fp = dict(model) if isinstance(model, dict) else model_fingerprint(model)
        return cls(layer=-1, kind=kind, weights={}, fingerprint=fp, ready_threshold=2.0, skip_threshold=2.0,
                   skip_kind=kind if skip else None, provenance=provenance or {"calibrated": False})

    @property
    def reads_logits(self) -> bool:
        """A score file: the ready score comes from the step's logits, not from a layer's hidden state."""
        return self.kind in SCORE_KINDS

    def logit_score(self, close_id: int) -> LogitScore:
        """The controller's `LogitScore` of a score file, for a model whose close marker starts with close_id."""
        if not self.reads_logits:
            raise ValueError(f"This probe's heads read hidden states (kind {self.kind!r}), not the logits.")
        return LogitScore(self.kind, int(close_id), skip=self.skip_kind is not None)

    @staticmethod
    def weight_names() -> list[str]:
        return ["mean", "inv_std"] + [f"{h}_{p}" for h in HEADS for p in HEAD_PARTS]

    @property
    def hidden_size(self) -> int:
        if self.reads_logits:
            return int(self.fingerprint.get("hidden_size", 0))
        return int(self.weights["mean"].shape[0])

    @property
    def width(self) -> int:
        return 0 if self.reads_logits else int(self.weights["ready_w1"].shape[0])

    @property
    def memory_size(self) -> int:
        """K, the running maxima (and counts) the ready head remembers over a thought (0: a memoryless probe)."""
        return int(self.weights["memory_w"].shape[0]) if "memory_w" in self.weights else 0

    @property
    def memory_counts(self) -> int:
        """How many of the K memory units count (sum sigmoid(feature) over the thought) instead of a maximum."""
        return int(self.weights["memory_sum"].sum()) if "memory_sum" in self.weights else 0

    # -- use -------------------------------------------------------------------------------------

    def tensors(self, device="cpu") -> ProbeTensors:
        """The weights in the layout the step kernels read."""
        if self.reads_logits:
            raise ValueError(f"A {self.kind!r} score file has no weights: the controller reads its score from the "
                             "logits (Probe.logit_score).")
        w = dict(self.weights)
        if self.guard is not None:
            w.update(self.guard.tensors())
        if self.route is not None:
            w.update(self.route.tensors())
        w = {k: v.to(device=device, dtype=torch.float32).contiguous() for k, v in w.items()}
        return ProbeTensors(relu=self.kind == "mlp", **w)

    def score(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [B, D] -> (ready [B], skip [B]) probabilities (memoryless probes; see `score_thought`)."""
        from adaptive_think.controller.step import head_scores

        if self.memory_size:
            raise ValueError("This probe has memory: its ready score depends on the whole thought so far. Use "
                             "Probe.score_thought(states) (or Probe.skip_score(hidden) for the skip head).")
        return head_scores(hidden, self.tensors(hidden.device))

    def skip_score(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, D] at prompts' ends -> skip probabilities [B] (any probe; the skip head has no memory)."""
        from adaptive_think.controller.step import feature_scores, memory_features, normalised

        t = self.tensors(hidden.device)
        x = normalised(hidden, t)
        # feature_scores computes both heads; a memory probe's ready half (fed x's own features) is discarded
        return feature_scores(x, t, memory_features(x, t) if self.memory_size else None)[1]

    def score_thought(self, states: torch.Tensor) -> torch.Tensor:
        """states [T, D]: the probe layer's state after each thought token, in order -> ready probabilities [T]
        (what the controller scores at each of those steps)."""
        from adaptive_think.controller.step import head_scores, memory_features, normalised, thought_memory

        t = self.tensors(states.device)
        memory = None
        if self.memory_size:
            memory = thought_memory(memory_features(normalised(states, t), t), t.memory_sum)
        return head_scores(states, t, memory)[0]

    @property
    def efforts(self) -> list[str]:
        """Names of the effort rungs, most conservative first ([] for a single-point probe)."""
        return [r.name for r in self.ladder]

    def thresholds(self, effort: str | None = None, decoding: str = "greedy") -> tuple[float, float]:
        """(ready, skip) thresholds of rung `effort` (None: the default) calibrated for `decoding` ("greedy" or
        "sampled"); ValueError for an unknown effort."""
        rung = select_rung(self.ladder, effort, self.default_effort)
        if rung is None:
            return self.ready_threshold, self.skip_threshold
        return rung.pair(decoding)

    def group_thresholds(self, effort: str | None = None, decoding: str = "greedy") -> list[tuple[float, float]] | None:
        """[(ready, skip)] of rung `effort` for each of the route's groups, in its order (None: no route, or a rung
        calibrated without groups: every row runs `thresholds`)."""
        rung = select_rung(self.ladder, effort, self.default_effort)
        if self.route is None or rung is None or not rung.by_group:
            return None
        return rung.group_pairs(self.route.groups, decoding)

    def set_ladder(self, rungs: list[Rung], default: str) -> None:
        """Install calibrated rungs; the top-level thresholds and calibration become the default rung's."""
        self.ladder, self.default_effort = list(rungs), default
        self._check_groups()
        rung = select_rung(self.ladder, None, default)
        self.ready_threshold, self.skip_threshold = rung.ready_threshold, rung.skip_threshold
        self.calibration = rung.calibration

    def _check_groups(self) -> None:
        """Every rung calibrated per group holds exactly the route's groups."""
        for rung in self.ladder:
            if rung.by_group and (self.route is None or set(rung.by_group) != set(self.route.groups)):
                raise ValueError(f"Effort {rung.name!r} holds thresholds for groups {sorted(rung.by_group)}, but the "
                                 f"probe's route has {None if self.route is None else self.route.groups}: re-calibrate "
                                 "it (`adaptive-think calibrate --route ...`).")

    def check_model(self, model) -> None:
        """Raise a ValueError naming every field where `model` differs from the probe's training model."""
        theirs = model_fingerprint(model)
        diffs = [f"{k}: probe {self.fingerprint.get(k)!r} vs model {theirs[k]!r}" for k in theirs
                 if self.fingerprint.get(k) != theirs[k]]
        if diffs:
            if self.reads_logits:
                raise ValueError(
                    f"This {self.kind!r} score file was calibrated on a different model (" + "; ".join(diffs) + "). "
                    "Calibrate one for this model with `adaptive-think calibrate-score --model DIR --questions FILE`."
                )
            raise ValueError(
                "This probe was trained on a different model (" + "; ".join(diffs) + "). "
                "Train a probe for this model with `adaptive-think collect` and `adaptive-think train-probe`."
            )
        if self.reads_logits:
            return
        if not 0 <= self.layer < theirs["num_hidden_layers"]:
            raise ValueError(f"Probe layer {self.layer} does not exist in a model of {theirs['num_hidden_layers']} layers.")

    # -- build -----------------------------------------------------------------------------------

    @classmethod
    def random_for(cls, model, layer: int | None = None, width: int = 256, seed: int = 0, kind: str = "mlp",
                   memory: int = 0, memory_counts: int = 0) -> "Probe":
        """A probe with random weights of the right shapes for `model` (benchmarks, tests). `memory`: the ready
        head also reads that many memory units, the last `memory_counts` of them counting units, with weights
        large enough that the memory moves the score."""
        if not 0 <= memory_counts <= memory or (memory and kind != "mlp"):
            raise ValueError(f"random_for: memory_counts {memory_counts} must lie in [0, memory = {memory}], and a "
                             "memory needs kind='mlp'.")
        fp = model_fingerprint(model)
        d = fp["hidden_size"]
        layer = (2 * fp["num_hidden_layers"]) // 3 if layer is None else layer
        width = width if kind == "mlp" else 1
        g = torch.Generator().manual_seed(seed)
        w = {"mean": torch.randn(d, generator=g) * 0.1, "inv_std": torch.rand(d, generator=g) + 0.5}
        for head in HEADS:
            w[f"{head}_w1"] = torch.randn(width, d, generator=g) / d**0.5
            w[f"{head}_b1"] = torch.randn(width, generator=g) * 0.1
            w[f"{head}_w2"] = torch.randn(width, generator=g) / width**0.5
            w[f"{head}_b2"] = torch.zeros(1)
        if memory:
            w["memory_w"] = torch.randn(memory, d, generator=g)
            w["memory_b"] = torch.randn(memory, generator=g)
            w["ready_w1"] = torch.cat([w["ready_w1"], 2.0 * torch.randn(width, memory, generator=g)], 1)
        if memory_counts:
            w["memory_sum"] = torch.tensor([0.0] * (memory - memory_counts) + [1.0] * memory_counts)
            # a count starts at NO_MEMORY: fold that start out, so the head reads the count itself
            w["ready_b1"] = w["ready_b1"] - NO_MEMORY * w["ready_w1"][:, -memory_counts:].sum(1)
        return cls(layer=layer, kind=kind, weights=w, fingerprint=fp, provenance={"random": True, "seed": seed})

    # -- files -----------------------------------------------------------------------------------

    def config_dict(self) -> dict:
        # what every probe file records: its operating points, where they came from, and the model it belongs to
        common = {
            "thresholds": {"ready": self.ready_threshold, "skip": self.skip_threshold},
            "calibration": self.calibration,
            "provenance": self.provenance,
            "policy_defaults": self.policy_defaults,
            "model_fingerprint": self.fingerprint,
            "ladder": [r.to_dict() for r in self.ladder],
            "default_effort": self.default_effort,
        }
        waits = any(int(k) > 1 for k in (self.policy_defaults.get("patience") or {}).values())
        if self.reads_logits:
            return {
                "format_version": PATIENCE_FORMAT_VERSION if waits else SCORE_FORMAT_VERSION,
                "kind": self.kind,
                "layer": -1,
                "skip_kind": self.skip_kind,
                "score": {"close-margin": "exp(logit[close marker's first token] - max logit) = p(close) / p(top)",
                          "entropy": "exp(-entropy of the next-token distribution, nats)"}[self.kind],
                **common,
            }
        version = MEMORY_FORMAT_VERSION if self.memory_size else FORMAT_VERSION
        version = GUARD_FORMAT_VERSION if self.guard is not None else version
        version = COUNT_FORMAT_VERSION if self.memory_counts else version
        version = ROUTE_FORMAT_VERSION if self.route is not None else version
        version = PATIENCE_FORMAT_VERSION if waits else version
        return {
            "format_version": version,
            "memory_size": self.memory_size,
            **({"memory_counts": self.memory_counts} if self.memory_counts else {}),
            "layer": self.layer,
            "kind": self.kind,
            "hidden_size": self.hidden_size,
            "width": self.width,
            "heads": list(HEADS),
            "activation": "relu" if self.kind == "mlp" else "identity",
            "normalisation": "x = (h - mean) * inv_std",
            **common,
            **({"guard": self.guard.config()} if self.guard is not None else {}),
            **({"route": self.route.config()} if self.route is not None else {}),
        }

    def save_pretrained(self, folder) -> Path:
        """Write probe.safetensors and probe.json into `folder` (created if needed), atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.reads_logits:  # a score file is probe.json alone; a stale weights file would contradict it
            if (folder / WEIGHTS_NAME).exists():
                (folder / WEIGHTS_NAME).unlink()
        else:
            w = {**self.weights, **(self.guard.weights() if self.guard is not None else {}),
                 **(self.route.weights() if self.route is not None else {})}
            tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in w.items()}
            atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        text = json.dumps(self.config_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(text))
        return folder

    @staticmethod
    def _is_score_file(cfg_path: Path) -> bool:
        """Whether probe.json names a training-free score (then no weights file is needed)."""
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, ValueError):
            return False  # the full load below says what is wrong
        return isinstance(cfg, dict) and cfg.get("kind") in SCORE_KINDS

    @classmethod
    def from_pretrained(cls, folder) -> "Probe":
        """Load a probe folder; FileNotFoundError or ValueError saying what is wrong with it."""
        folder = Path(folder)
        cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for p in (cfg_path,) if cls._is_score_file(cfg_path) else (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(
                    f"Probe file {str(p)!r} not found: a probe folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                    "(written by Probe.save_pretrained / `adaptive-think train-probe`)."
                )
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{str(cfg_path)!r} is corrupt or truncated (not valid JSON: {err}). Re-save the probe.") from None
        if not isinstance(cfg, dict) or cfg.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(
                f"{str(cfg_path)!r} has format_version {cfg.get('format_version') if isinstance(cfg, dict) else None!r}; "
                f"this adaptive-think reads versions {READABLE_VERSIONS}."
            )
        for key in ("layer", "kind", "model_fingerprint", "thresholds"):
            if key not in cfg:
                raise ValueError(f"{str(cfg_path)!r} lacks the field {key!r}; the file is incomplete. Re-save the probe.")
        patience = (cfg.get("policy_defaults") or {}).get("patience")
        if patience is not None and not (isinstance(patience, dict) and all(
                d in ("greedy", "sampled") and isinstance(k, int) and not isinstance(k, bool) and k >= 1
                for d, k in patience.items())):
            raise ValueError(f"{str(cfg_path)!r}: policy_defaults.patience must map greedy / sampled to an int >= 1, "
                             f"got {patience!r}. Re-calibrate the probe (`adaptive-think calibrate`).")
        if cfg["kind"] in SCORE_KINDS:
            return cls(
                layer=-1, kind=cfg["kind"], weights={}, fingerprint=cfg["model_fingerprint"],
                ready_threshold=float(cfg["thresholds"]["ready"]), skip_threshold=float(cfg["thresholds"]["skip"]),
                calibration=cfg.get("calibration", {}), provenance=cfg.get("provenance", {}),
                policy_defaults=cfg.get("policy_defaults", {"exit_text": "\n\n", "stop_at_boundary": True}),
                ladder=[Rung.from_dict(r, str(cfg_path)) for r in cfg.get("ladder") or []],
                default_effort=cfg.get("default_effort"), skip_kind=cfg.get("skip_kind"),
            )
        try:
            weights = load_file(str(w_path))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{str(w_path)!r} is corrupt or truncated ({err}). Re-save the probe.") from None
        guard = None
        if cfg.get("guard") is not None or any(n in weights for n in GUARD_WEIGHTS):
            guard = Guard.from_file(weights, cfg.get("guard"), str(folder))
            weights = {k: v for k, v in weights.items() if k not in GUARD_WEIGHTS}
        route = None
        if cfg.get("route") is not None or any(n in weights for n in ROUTE_WEIGHTS):
            route = Route.from_file(weights, cfg.get("route"), str(folder))
            weights = {k: v for k, v in weights.items() if k not in ROUTE_WEIGHTS}
        probe = cls(
            layer=int(cfg["layer"]), kind=cfg["kind"], weights=weights, fingerprint=cfg["model_fingerprint"],
            ready_threshold=float(cfg["thresholds"]["ready"]), skip_threshold=float(cfg["thresholds"]["skip"]),
            calibration=cfg.get("calibration", {}), provenance=cfg.get("provenance", {}),
            policy_defaults=cfg.get("policy_defaults", {"exit_text": "\n\n", "stop_at_boundary": True}),
            ladder=[Rung.from_dict(r, str(cfg_path)) for r in cfg.get("ladder") or []],
            default_effort=cfg.get("default_effort"), guard=guard, route=route,
        )
        if probe.memory_size != cfg.get("memory_size", 0) or probe.memory_counts != cfg.get("memory_counts", 0):
            raise ValueError(f"{str(folder)!r}: weights hold {probe.memory_size} memory features ({probe.memory_counts} "
                             f"counting), probe.json says {cfg.get('memory_size', 0)} ({cfg.get('memory_counts', 0)}). "
                             "Re-save the probe.")
        if probe.hidden_size != cfg.get("hidden_size", probe.hidden_size):
            raise ValueError(f"{str(folder)!r}: weights are for hidden size {probe.hidden_size}, probe.json says {cfg['hidden_size']}.")
        return probe
