"""Per-request thinking settings inside vLLM: where they travel and how they become a `ThinkConfig`.

Offline, a request carries `SamplingParams(extra_args={"adaptive_think": {...ThinkConfig fields...}})`.
Through the OpenAI server, `vllm_xargs` holds only flat string / number values, so each field is its own
key: `{"adaptive_think.policy": "budget", "adaptive_think.max_think_tokens": 64}`. A request may also
name an effort level (`adaptive_think.effort`, or the chat request's `reasoning_effort` through
`adaptive-think serve`), which `effort_config` turns into a policy.

Nothing here imports vLLM: the frontend process validates requests with `request_config` before they
reach the engine, and the tests run it without vLLM.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from adaptive_think.config import ThinkConfig

KEY = "adaptive_think"
FLAT_PREFIX = KEY + "."
ENV_VAR = "ADAPTIVE_THINK_VLLM"

# The chat API's reasoning_effort values (vLLM's ChatCompletionRequest accepts these).
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
# Without a probe ladder: thinking-token budget per effort; None = no cap (policy "full"), 0 = skip.
DEFAULT_EFFORT_BUDGETS: dict[str, int | None] = {
    "none": 0, "minimal": 64, "low": 256, "medium": 1024, "high": 4096, "xhigh": None, "max": None,
}
# With a probe ladder: efforts that are not rung names map like this ("minimal" = the rung that saves most).
FULL_EFFORTS = ("xhigh", "max")

_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}


@dataclass(frozen=True)
class ServingSettings:
    """What one vLLM engine serves with adaptive thinking: the probe and the effort map.

    probe: path of a probe folder, or None (policy "probe" and rung efforts are then refused).
    think_tokens: (open, close) markers for a model the registry does not know, or None (detected).
    effort_budgets: effort -> thinking-token budget used when the probe has no effort ladder (or there is
        no probe); None = full thinking, 0 = skip thinking.
    """

    probe: str | None = None
    think_tokens: tuple[str, str] | None = None
    effort_budgets: dict = field(default_factory=lambda: dict(DEFAULT_EFFORT_BUDGETS))

    def __post_init__(self):
        if self.think_tokens is not None:
            if len(self.think_tokens) != 2 or not all(isinstance(t, str) and t for t in self.think_tokens):
                raise ValueError(f"think_tokens must be (open, close) strings, got {self.think_tokens!r}.")
            object.__setattr__(self, "think_tokens", tuple(self.think_tokens))
        unknown = sorted(set(self.effort_budgets) - set(EFFORTS))
        if unknown:
            raise ValueError(f"effort_budgets has unknown efforts {unknown}; the efforts are {EFFORTS}.")
        for name, budget in self.effort_budgets.items():
            if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
                raise ValueError(f"effort_budgets[{name!r}]={budget!r} must be an int >= 0 or None (no cap).")
        object.__setattr__(self, "effort_budgets", {**DEFAULT_EFFORT_BUDGETS, **self.effort_budgets})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ServingSettings":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{ENV_VAR} is not valid JSON ({err}); it is written by llm_kwargs / serve.") from None
        return cls(probe=raw.get("probe"), think_tokens=raw.get("think_tokens"),
                   effort_budgets=raw.get("effort_budgets") or {})


def current_settings() -> ServingSettings:
    """The settings of this process's engine: from the environment variable that `llm_kwargs` / `serve` set.

    vLLM runs its engine in spawned processes, which inherit the environment; the frontend process reads the
    same variable to validate requests.
    """
    text = os.environ.get(ENV_VAR)
    return ServingSettings.from_json(text) if text else ServingSettings()


def _field_types() -> dict[str, type]:
    hints = {"max_think_tokens": int, "min_think_tokens": int, "patience": int, "smoothing": float,
             "threshold": float, "skip_threshold": float, "stop_at_boundary": bool, "allow_skip": bool,
             "trace": bool, "guard": bool}
    return {f.name: hints.get(f.name, str) for f in dataclasses.fields(ThinkConfig)}


def _coerce(name: str, value, kind: type):
    """A vllm_xargs / extra_args value as the ThinkConfig field wants it (numbers may arrive as strings)."""
    if value is None:
        return None
    where = f"{FLAT_PREFIX}{name}"
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and str(value).strip().lower() in _BOOL_TEXT:
            return _BOOL_TEXT[str(value).strip().lower()]
        raise ValueError(f"{where}={value!r} must be true or false.")
    if kind is int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}={value!r} must be an integer.")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{where}={value!r} must be a number.")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where}={value!r} must be a number.") from None
    if not isinstance(value, str):
        raise ValueError(f"{where}={value!r} must be a string.")
    return value


def raw_request_fields(extra_args: dict | None) -> dict | None:
    """The request's adaptive_think fields (nested dict or flat keys), or None when it sets none."""
    if not extra_args:
        return None
    nested = extra_args.get(KEY)
    flat = {k[len(FLAT_PREFIX):]: v for k, v in extra_args.items() if isinstance(k, str) and k.startswith(FLAT_PREFIX)}
    if nested is not None and flat:
        raise ValueError(f"give the adaptive_think settings either as extra_args[{KEY!r}] (a dict) or as flat "
                         f"'{FLAT_PREFIX}*' keys, not both (got {sorted(flat)} and a dict).")
    if nested is not None:
        if not isinstance(nested, dict):
            raise ValueError(f"extra_args[{KEY!r}] must be a dict of ThinkConfig fields, got {type(nested).__name__}.")
        return dict(nested)
    return flat or None


def request_config(extra_args: dict | None, settings: ServingSettings, probe_efforts: list[str] | None = None,
                   thinking_token_budget=None) -> ThinkConfig | None:
    """A request's ThinkConfig (None: the request sets nothing, so the controller leaves it alone).

    probe_efforts: the served probe's effort rungs ([] for a single-point probe, None without a probe).
    Raises ValueError with what is wrong and what to do (vLLM turns it into HTTP 400 on the server).
    """
    raw = raw_request_fields(extra_args)
    if raw is None:
        return None
    if thinking_token_budget is not None:
        raise ValueError(
            "this request sets both vLLM's thinking_token_budget and adaptive_think settings; vLLM's forcing runs "
            "after ours and would override it. Use one: adaptive_think.max_think_tokens (with policy budget or "
            "probe) is the same hard cap.")
    types = _field_types()
    effort = raw.pop("effort", None)
    unknown = sorted(set(raw) - set(types))
    if unknown:
        raise ValueError(f"unknown adaptive_think setting(s) {unknown}; the settings are {sorted(types)}.")
    fields = {name: _coerce(name, value, types[name]) for name, value in raw.items()}
    if effort is not None:
        if not isinstance(effort, str):
            raise ValueError(f"{FLAT_PREFIX}effort={effort!r} must be a string.")
        base = effort_config(effort, settings, probe_efforts)
        if fields.get("policy", base.policy) == base.policy:
            # explicit settings refine the effort level's config and win over it
            fields = {**_set_fields(base), **fields}
        elif fields["policy"] == "probe" and probe_efforts and effort in probe_efforts:
            fields.setdefault("effort", effort)
    return _build(fields, probe_efforts, settings)


def _set_fields(config: ThinkConfig) -> dict:
    """The fields of `config` that differ from ThinkConfig's defaults."""
    default = ThinkConfig()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(default, f.name)}


def _build(fields: dict, probe_efforts, settings: ServingSettings) -> ThinkConfig:
    config = ThinkConfig(**fields)
    if config.policy == "probe" and settings.probe is None:
        raise ValueError('adaptive_think.policy "probe" needs a probe, but this server has none: start it with '
                         "--probe DIR (adaptive-think serve) or llm_kwargs(probe=DIR).")
    rung = getattr(config, "effort", None)
    if rung is not None and rung not in (probe_efforts or []):
        raise ValueError(f"adaptive_think.effort={rung!r} is not a rung of the served probe (its rungs: "
                         f"{probe_efforts or 'none'}); use one of them or one of {EFFORTS}.")
    return config


def effort_config(effort: str, settings: ServingSettings, probe_efforts: list[str] | None) -> ThinkConfig:
    """An effort level as a ThinkConfig: a probe rung when the probe has a ladder, else the budget map.

    none -> no thinking; xhigh / max -> full thinking; a rung name of the probe -> that rung; minimal -> the
    rung that saves most; any other level without a matching rung -> settings.effort_budgets[effort].
    """
    if effort not in EFFORTS and effort not in (probe_efforts or []):
        raise ValueError(f"effort {effort!r} is not known; use one of {EFFORTS}"
                         + (f" or a rung of the served probe {probe_efforts}" if probe_efforts else "") + ".")
    if effort == "none":
        return ThinkConfig(policy="none")
    if probe_efforts:
        if effort in probe_efforts:
            return _probe_rung(effort)
        if effort == "minimal":
            return _probe_rung(probe_efforts[-1])
        if effort in FULL_EFFORTS:
            return ThinkConfig(policy="full")
    budget = settings.effort_budgets.get(effort)
    if budget is None:
        return ThinkConfig(policy="full")
    if budget == 0:
        return ThinkConfig(policy="none")
    return ThinkConfig(policy="budget", max_think_tokens=budget)


def _probe_rung(name: str) -> ThinkConfig:
    return ThinkConfig(policy="probe", effort=name)
