"""Reading answers out of model text: `ANSWER_STATED`, `parse_answer`, `is_correct`.

Used by training labels (forced exits), evaluation and the "marker" baseline policy.
Run the checks with `pytest tests/test_tasks.py`.
"""

from __future__ import annotations

import re

# Where a thought (or a final answer) states an answer: "So the answer is 8." / "the answer is 4, not 3."
# The number right after "answer is" is the stated value; a trailing "not N" names the value retracted.
ANSWER_STATED = re.compile(r"answer is (-?\d+)")

_CLOSE = "</think>"
_OPEN = "<think>"
# A bare number as the whole answer ("8" or "8.") is accepted too, so short free-text answers score.
_BARE_NUMBER = re.compile(r"\s*(-?\d+)\s*\.?\s*")


def parse_answer(text: str) -> str | None:
    """The answer stated after the think block (or in free text without one); None if unparsed.

    Never raises. An open `<think>` without `</think>` means the model never answered: None.

    >>> parse_answer("<think>\\n7 + 5 = 2\\n</think>\\n\\nThe answer is 2.")
    '2'
    """
    if not isinstance(text, str):
        return None
    if _CLOSE in text:
        tail = text.rsplit(_CLOSE, 1)[1]
    elif _OPEN in text:
        return None
    else:
        tail = text
    found = ANSWER_STATED.findall(tail)
    if found:
        return _normalise(found[-1])
    bare = _BARE_NUMBER.fullmatch(tail)
    return _normalise(bare.group(1)) if bare else None


def last_stated_answer(thought: str) -> str | None:
    """The last answer a (possibly truncated) thought states, or None if it states none yet."""
    found = ANSWER_STATED.findall(thought)
    return _normalise(found[-1]) if found else None


def is_correct(text: str, answer: str) -> bool:
    """True when `parse_answer(text)` equals `answer` (integers compared without leading zeros)."""
    got = parse_answer(text)
    return got is not None and got == _normalise(str(answer).strip())


def _normalise(number: str) -> str:
    # "07" and "7" are the same answer; int() cannot fail on what the patterns above captured.
    try:
        return str(int(number))
    except ValueError:
        return number
