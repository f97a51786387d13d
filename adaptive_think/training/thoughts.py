"""Reading one generation the way `collect` and `doctor` both do: where the thought opens and closes,
the prompt for answering without thinking, and whether a checker read an answer.

    body, close = thought_span(prompt_ids, generated_ids, markers)   # (None, -1): no thought opened
"""

from __future__ import annotations

from adaptive_think.loading import chat_prompt
from adaptive_think.markers import ThinkMarkers, find_subsequence


def _last(seq: list[int], sub: tuple[int, ...]) -> int:
    i, at = -1, find_subsequence(seq, sub)
    while at >= 0:
        i, at = at, find_subsequence(seq, sub, at + 1)
    return i


def thought_span(prompt: list[int], gen: list[int], markers: ThinkMarkers) -> tuple[int | None, int]:
    """(index in `gen` where the thought's text starts, or None when no thought opened; index of the close
    marker in `gen`, or -1 when the thought never closed). A prompt ending inside an open think block
    (R1-style templates) starts the thought at 0."""
    o = find_subsequence(gen, markers.open_ids)
    if o >= 0:
        body = o + len(markers.open_ids)
    elif _last(prompt, markers.open_ids) > _last(prompt, markers.close_ids):
        body = 0
    else:
        return None, -1
    return body, find_subsequence(gen, markers.close_ids, body)


def no_think_prompt(tokenizer, question: str, markers: ThinkMarkers, exit_text: str = "\n\n") -> str:
    """The prompt for answering with thinking skipped: the template's own `enable_thinking=False` prompt
    when it ends in a closed think block (Qwen3), else that prompt with an empty think block appended, as
    a skip would force it (templates without the switch, or without a chat template)."""
    off = chat_prompt(tokenizer, question, enable_thinking=False)
    if off.rstrip().endswith(markers.close_text):
        return off
    ids = tokenizer.encode(off, add_special_tokens=False)
    if _last(ids, markers.open_ids) > _last(ids, markers.close_ids):  # ends inside an open block (R1-style)
        return off + "\n" + markers.close_text + exit_text
    return off + markers.open_text + "\n\n" + markers.close_text + exit_text


def read_or_none(checker, text: str) -> bool | None:
    """Did the checker read an answer in `text`? None for checkers that only say right or wrong."""
    read = getattr(checker, "read", None)
    return None if read is None else read(text) is not None
