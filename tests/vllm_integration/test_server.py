"""`adaptive-think serve` end to end: vLLM's OpenAI server with adaptive thinking per request.

One server (bundled reasoner + probe, CPU) for the module; requests go over HTTP on 127.0.0.1. Each
response's token ids must equal the hf engine's with the config the request asked for. Run in the vLLM
venv: `python -m pytest -m vllm tests/vllm_integration`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; .ci/run runs these tests in its vLLM venv")

from adaptive_think.bundled import probe_path  # noqa: E402
from adaptive_think.probe import Probe  # noqa: E402
from adaptive_think.tasks import make_questions  # noqa: E402
from tests.vllm_integration.conftest import hf_tokens_from_ids  # noqa: E402

pytestmark = pytest.mark.vllm

MAX_TOKENS = 120
STARTUP_S = 300  # the engine starts in about a minute on two busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    cmd = [sys.executable, "-m", "adaptive_think.cli", "serve", "--model", "bundled-v1", "--port", str(port),
           "--effort-budgets", json.dumps({"low": 8, "minimal": 3}), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "256", "--max-num-seqs", "4", "--kv-cache-memory-bytes", str(2**26), "--seed", "0"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"adaptive-think serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not come up in {STARTUP_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _chat(url: str, question: str, **extra) -> tuple[int, dict]:
    body = {"model": _model_name(url), "messages": [{"role": "user", "content": question}],
            "max_tokens": MAX_TOKENS, "temperature": 0.0, "return_token_ids": True, **extra}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


_NAMES: dict[str, str] = {}


def _model_name(url: str) -> str:
    if url not in _NAMES:
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
            _NAMES[url] = json.loads(r.read())["data"][0]["id"]
    return _NAMES[url]


def _flat(config: dict) -> dict:
    return {f"adaptive_think.{k}": v for k, v in config.items()}


def _check(hf_thinker, body: dict, config: dict | None) -> None:
    choice = body["choices"][0]
    expected = hf_tokens_from_ids(hf_thinker, body["prompt_token_ids"], config, MAX_TOKENS)
    assert choice["token_ids"] == expected, (config, choice["message"])


QUESTIONS = [q.question for q in make_questions(6, seed=21)]


def test_concurrent_requests_with_different_configs(server, hf_thinker):
    configs = [{"policy": "full"}, {"policy": "budget", "max_think_tokens": 5, "exit_text": "\n\n"},
               {"policy": "none"}, {"policy": "probe"}, {"policy": "budget", "max_think_tokens": 0}, None]
    results: dict[int, tuple[int, dict]] = {}

    def ask(i):
        extra = {"vllm_xargs": _flat(configs[i])} if configs[i] is not None else {}
        results[i] = _chat(server, QUESTIONS[i], **extra)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for i, config in enumerate(configs):
        status, body = results[i]
        assert status == 200, body
        _check(hf_thinker, body, config)


def test_bad_policy_gets_400_and_the_server_keeps_serving(server, hf_thinker):
    good: dict = {}
    t = threading.Thread(target=lambda: good.update(zip(("status", "body"), _chat(server, QUESTIONS[0],
                                                                                  vllm_xargs={"adaptive_think.policy": "full"}))))
    t.start()
    status, body = _chat(server, QUESTIONS[1], vllm_xargs={"adaptive_think.policy": "sometimes"})
    t.join(timeout=300)
    assert status == 400 and "not a known policy" in json.dumps(body)
    status, body = _chat(server, QUESTIONS[2], vllm_xargs={"adaptive_think.policy": "budget"})
    assert status == 400 and "needs max_think_tokens" in json.dumps(body)
    assert good["status"] == 200
    _check(hf_thinker, good["body"], {"policy": "full"})


def test_both_budgets_and_beam_search_are_refused(server):
    status, body = _chat(server, QUESTIONS[0], thinking_token_budget=5,
                         vllm_xargs={"adaptive_think.policy": "budget", "adaptive_think.max_think_tokens": 5})
    assert status == 400 and "thinking_token_budget" in json.dumps(body)
    status, body = _chat(server, QUESTIONS[0], use_beam_search=True, n=2, reasoning_effort="low")
    assert status == 400 and "beam search" in json.dumps(body)


def test_reasoning_effort_maps_as_documented(server, hf_thinker):
    efforts = Probe.from_pretrained(probe_path("bundled-v1")).efforts  # the bundled probe's ladder: high, medium, low
    # the probe's rung when it has one of that name, else --effort-budgets (low: 8, minimal: 3)
    low = {"policy": "probe", "effort": "low"} if "low" in efforts else {"policy": "budget", "max_think_tokens": 8}
    cases = [("low", low), ("none", {"policy": "none"}), ("max", {"policy": "full"})]
    if not efforts:
        cases.append(("minimal", {"policy": "budget", "max_think_tokens": 3}))
    for effort, config in cases:
        status, body = _chat(server, QUESTIONS[3], reasoning_effort=effort)
        assert status == 200, body
        _check(hf_thinker, body, config)
    # an explicit adaptive_think setting wins over reasoning_effort
    status, body = _chat(server, QUESTIONS[3], reasoning_effort="low", vllm_xargs={"adaptive_think.policy": "full"})
    assert status == 200
    _check(hf_thinker, body, {"policy": "full"})
