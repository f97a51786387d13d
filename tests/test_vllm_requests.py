"""Per-request adaptive_think settings under vLLM (no vLLM needed): parsing, errors, effort levels, and the
server middleware's rewrite of `reasoning_effort` (adaptive_think/integrations/vllm/requests.py, effort.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from adaptive_think import ThinkConfig
from adaptive_think.integrations.vllm.effort import EFFORT_KEY, ReasoningEffortMiddleware, rewrite
from adaptive_think.integrations.vllm.requests import ServingSettings, effort_config, request_config

NO_PROBE = ServingSettings()
WITH_PROBE = ServingSettings(probe="/some/probe")


def test_nested_and_flat_settings_give_the_same_config():
    nested = request_config({"adaptive_think": {"policy": "budget", "max_think_tokens": 64, "exit_text": "\n\n"}}, NO_PROBE)
    flat = request_config({"adaptive_think.policy": "budget", "adaptive_think.max_think_tokens": "64",
                           "adaptive_think.exit_text": "\n\n"}, NO_PROBE)
    assert nested == flat == ThinkConfig(policy="budget", max_think_tokens=64, exit_text="\n\n")
    assert request_config({"other": 1}, NO_PROBE) is None and request_config(None, NO_PROBE) is None


def test_flat_values_are_coerced_or_refused():
    cfg = request_config({"adaptive_think.policy": "probe", "adaptive_think.allow_skip": "false",
                          "adaptive_think.threshold": "0.7", "adaptive_think.patience": 2.0}, WITH_PROBE, [])
    assert (cfg.allow_skip, cfg.threshold, cfg.patience) == (False, 0.7, 2)
    for key, value, message in (("max_think_tokens", "many", "must be an integer"),
                                ("max_think_tokens", True, "must be an integer"),
                                ("threshold", "high", "must be a number"),
                                ("allow_skip", "maybe", "true or false"),
                                ("exit_text", 5, "must be a string")):
        with pytest.raises(ValueError, match=message):
            request_config({"adaptive_think.policy": "probe", f"adaptive_think.{key}": value}, WITH_PROBE, [])


@pytest.mark.parametrize("extra, message", [
    ({"adaptive_think": {"policy": "full"}, "adaptive_think.policy": "none"}, "not both"),
    ({"adaptive_think": "budget"}, "must be a dict"),
    ({"adaptive_think.polcy": "full"}, r"unknown adaptive_think setting\(s\) \['polcy'\]"),
    ({"adaptive_think.policy": "probe"}, "needs a probe"),
    ({"adaptive_think.policy": "full", "adaptive_think.max_think_tokens": 5}, "takes no max_think_tokens"),
])
def test_bad_settings_say_what_is_wrong(extra, message):
    with pytest.raises(ValueError, match=message):
        request_config(extra, NO_PROBE)


def test_vllms_thinking_budget_and_ours_are_never_combined():
    with pytest.raises(ValueError, match="thinking_token_budget"):
        request_config({"adaptive_think.policy": "full"}, NO_PROBE, thinking_token_budget=8)
    assert request_config({}, NO_PROBE, thinking_token_budget=8) is None  # vLLM's alone is vLLM's business


def test_efforts_without_a_ladder_use_the_budget_map():
    settings = ServingSettings(effort_budgets={"low": 16})
    assert effort_config("none", settings, None) == ThinkConfig(policy="none")
    assert effort_config("low", settings, None) == ThinkConfig(policy="budget", max_think_tokens=16)
    assert effort_config("medium", settings, []) == ThinkConfig(policy="budget", max_think_tokens=1024)
    assert effort_config("max", settings, None) == ThinkConfig(policy="full")
    with pytest.raises(ValueError, match="not known"):
        effort_config("extreme", settings, None)


def test_efforts_with_a_ladder_pick_rungs():
    rungs = ["high", "medium", "low"]
    assert effort_config("medium", WITH_PROBE, rungs) == ThinkConfig(policy="probe", effort="medium")
    assert effort_config("minimal", WITH_PROBE, rungs) == ThinkConfig(policy="probe", effort="low")
    assert effort_config("xhigh", WITH_PROBE, rungs) == ThinkConfig(policy="full")
    assert effort_config("none", WITH_PROBE, rungs) == ThinkConfig(policy="none")


def test_explicit_settings_win_over_the_effort_level():
    cfg = request_config({"adaptive_think.effort": "low", "adaptive_think.max_think_tokens": 3},
                         ServingSettings(effort_budgets={"low": 16}), None)
    assert cfg == ThinkConfig(policy="budget", max_think_tokens=3)
    cfg = request_config({"adaptive_think.effort": "low", "adaptive_think.policy": "full"}, NO_PROBE, None)
    assert cfg == ThinkConfig(policy="full")
    with pytest.raises(ValueError, match="'turbo' is not known"):
        request_config({"adaptive_think.policy": "probe", "adaptive_think.effort": "turbo"}, WITH_PROBE, ["high"])


def test_settings_round_trip_and_refuse_bad_budgets():
    s = ServingSettings(probe="/p", think_tokens=("<r>", "</r>"), effort_budgets={"low": 5, "high": None})
    assert ServingSettings.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match="unknown efforts"):
        ServingSettings(effort_budgets={"turbo": 5})
    with pytest.raises(ValueError, match="int >= 0 or None"):
        ServingSettings(effort_budgets={"low": -1})


def test_middleware_maps_reasoning_effort_and_keeps_explicit_settings():
    new, err = rewrite({"messages": [], "reasoning_effort": "low"})
    assert err is None and new["vllm_xargs"] == {EFFORT_KEY: "low"} and new["reasoning_effort"] == "low"
    assert rewrite({"reasoning_effort": "low", "vllm_xargs": {"adaptive_think.policy": "full"}}) == (None, None)
    assert rewrite({"messages": []}) == (None, None)
    new, err = rewrite({"reasoning_effort": "high", "use_beam_search": True})
    assert new is None and "beam search" in err


def test_middleware_rewrites_the_asgi_body():
    seen = {}

    async def app(scope, receive, send):
        seen["headers"] = dict(scope["headers"])
        seen["body"] = (await receive())["body"]

    body = json.dumps({"reasoning_effort": "none", "messages": []}).encode()
    messages = [{"type": "http.request", "body": body[:10], "more_body": True},
                {"type": "http.request", "body": body[10:], "more_body": False}]

    async def receive():
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"content-length", str(len(body)).encode())]}
    asyncio.run(ReasoningEffortMiddleware(app)(scope, receive, None))
    assert json.loads(seen["body"])["vllm_xargs"] == {EFFORT_KEY: "none"}
    assert seen["headers"][b"content-length"] == str(len(seen["body"])).encode()


def test_wrapper_selection_and_the_probe_fingerprint_check(tmp_path):
    from transformers import AutoConfig

    from adaptive_think.bundled import probe_path, reasoner_path
    from adaptive_think.integrations.vllm.api import serving_settings
    from adaptive_think.integrations.vllm.architectures import select_wrapper
    from adaptive_think.integrations.vllm.context import check_probe
    from adaptive_think.probe import Probe

    cfg = select_wrapper(AutoConfig.from_pretrained(reasoner_path()))
    assert cfg.architectures == ["AdaptiveThinkQwen3ForCausalLM"]
    probe = Probe.from_pretrained(probe_path())
    check_probe(probe, cfg)  # the wrapper's name maps back to the model's own architecture
    cfg.hidden_size = 256
    with pytest.raises(ValueError, match="different model"):
        check_probe(probe, cfg)
    placeholder = AutoConfig.for_model("qwen3", architectures=[""])
    assert select_wrapper(placeholder).architectures == [""]  # vLLM's model_type probe call is left alone
    with pytest.raises(ValueError, match="does not wrap"):
        select_wrapper(AutoConfig.for_model("gpt2", architectures=["GPT2LMHeadModel"]))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**json.loads((reasoner_path() / "config.json").read_text()),
                                                   "hidden_size": 96}))
    with pytest.raises(ValueError, match="different model"):
        serving_settings(probe_path(), model=other)


def test_a_probe_request_takes_the_thresholds_of_its_decoding(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from adaptive_think.integrations.vllm.context import validate_request
    from adaptive_think.integrations.vllm.requests import ENV_VAR
    from adaptive_think.probe import Probe
    from adaptive_think.probe.ladder import Rung
    from tiny import make_model

    probe = Probe.random_for(make_model("qwen3", 50), width=4)
    probe.set_ladder([Rung("high", 0.005, 0.1, 0.9, 0.9, by_decoding={"greedy": (0.9, 0.9), "sampled": (1.0, 2.0)})],
                     "high")
    probe.save_pretrained(tmp_path / "p")
    monkeypatch.setenv(ENV_VAR, ServingSettings(probe=str(tmp_path / "p")).to_json())

    def config(temperature, **fields):
        args = {"adaptive_think": {"policy": "probe", **fields}}
        return validate_request(SimpleNamespace(extra_args=args, temperature=temperature))

    assert config(0.0).decoding == "greedy" and config(0.6).decoding == "sampled"
    assert config(0.6, decoding="greedy").decoding == "greedy"  # named by the request: kept
    # other policies carry no decoding (nothing of theirs is calibrated)
    plain = validate_request(SimpleNamespace(extra_args={"adaptive_think": {"policy": "none"}}, temperature=0.6))
    assert plain == ThinkConfig(policy="none")
