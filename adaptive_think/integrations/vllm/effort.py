"""ASGI middleware for vLLM's OpenAI server (`--middleware`): the chat request's `reasoning_effort` picks
adaptive thinking, and requests adaptive thinking cannot steer are refused.

OpenAI clients and agent frameworks already send `reasoning_effort` (none / minimal / low / medium / high /
xhigh / max). vLLM itself only turns it into the chat template's `enable_thinking`, which it keeps doing;
this middleware also adds `vllm_xargs["adaptive_think.effort"]`, which `requests.effort_config` maps to the
probe's calibrated effort rung (or to the budget map without a ladder). A request that sets any
`adaptive_think.*` key itself keeps exactly what it set (explicit settings win). Beam search with
adaptive_think settings gets HTTP 400: beam search keeps several hypotheses per request, which a per-row
controller cannot steer.
"""

from __future__ import annotations

import json

from adaptive_think.integrations.vllm.requests import FLAT_PREFIX, KEY

EFFORT_KEY = FLAT_PREFIX + "effort"
ROUTES = ("/v1/chat/completions", "/v1/completions")


def rewrite(body: dict) -> tuple[dict | None, str | None]:
    """(new body or None when unchanged, error message or None) for one request body."""
    xargs = body.get("vllm_xargs") if isinstance(body.get("vllm_xargs"), dict) else {}
    explicit = any(isinstance(k, str) and (k == KEY or k.startswith(FLAT_PREFIX)) for k in xargs)
    effort = body.get("reasoning_effort")
    if (explicit or effort is not None) and body.get("use_beam_search"):
        return None, ("use_beam_search cannot be combined with adaptive thinking (reasoning_effort or adaptive_think "
                      "settings): beam search keeps several hypotheses per request, which the per-request "
                      "controller cannot steer.")
    if effort is None or explicit:
        return None, None
    return {**body, "vllm_xargs": {**xargs, EFFORT_KEY: effort}}, None


class ReasoningEffortMiddleware:
    """Pure ASGI middleware: rewrites JSON bodies of the completion routes before vLLM parses them."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in ROUTES:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away: let the app see it
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None  # vLLM answers malformed JSON itself
        new, error = rewrite(body) if isinstance(body, dict) else (None, None)
        if error is not None:
            return await _send_error(send, error)
        if new is not None:
            raw = json.dumps(new).encode()
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
            scope = {**scope, "headers": headers + [(b"content-length", str(len(raw)).encode())]}
        await self.app(scope, _replay([{"type": "http.request", "body": raw, "more_body": False}], receive), send)


def _replay(messages: list, receive):
    """An ASGI receive that first yields `messages`, then defers to the real one (disconnects)."""
    pending = list(messages)

    async def replay():
        return pending.pop(0) if pending else await receive()

    return replay


async def _send_error(send, message: str) -> None:
    payload = json.dumps({"error": {"message": message, "type": "BadRequestError", "param": None,
                                    "code": 400}}).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
