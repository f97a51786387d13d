"""Assistant completions in the bundled reasoner's chat format: full thinking, no thinking, forced exit.

The format is Qwen3's: the model writes `<think>\\n`, the thought, `\\n</think>\\n\\n`, then the answer
text and `<|im_end|>`. A forced exit is the close marker `</think>` followed by "\\n\\n" wherever the
thought was cut; the answer after it is the last answer the cut thought stated (the model's current
belief, even a slipped one), else the correct one. Used by scripts/train_reasoner.py.
"""

from __future__ import annotations

from .parse import last_stated_answer
from .question import Question

OPEN, CLOSE, EXIT_TEXT = "<think>", "</think>", "\n\n"


def answer_text(answer: str) -> str:
    """The final answer line: `The answer is 8.`"""
    return f"The answer is {answer}."


def full_completion(q: Question) -> str:
    """`<think>\\n{thought}\\n</think>\\n\\nThe answer is A.` (eos not included)."""
    return f"{OPEN}\n{q.thought}\n{CLOSE}{EXIT_TEXT}{answer_text(q.answer)}"


def no_think_completion(q: Question) -> str:
    """The empty think block then the answer, as `enable_thinking=False` prompts end."""
    return f"{OPEN}\n\n{CLOSE}{EXIT_TEXT}{answer_text(q.answer)}"


def truncated_completion(q: Question, n_lines: int, at_line_end: bool = True) -> str:
    """The thought cut after `n_lines` lines, a forced exit, and the answer the cut thought implies.

    `at_line_end` cuts after the line's newline (a paragraph boundary); False cuts right after its
    last character (a sentence boundary), as a controller stopping mid-paragraph would.
    """
    lines = q.thought.split("\n")[:n_lines]
    cut = "\n".join(lines)
    if at_line_end or not lines:
        cut += "\n"
    believed = last_stated_answer(cut) or q.answer
    return f"{OPEN}\n{cut}{CLOSE}{EXIT_TEXT}{answer_text(believed)}"
