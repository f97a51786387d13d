"""Where a trace's answer settles: the shared rule behind every family's `Question.settled_char`.

Import `settled_char(thought, answer)`; nothing to run here.
"""

from __future__ import annotations

from .parse import ANSWER_STATED


def settled_char(thought: str, answer: str) -> int:
    """The char offset just after the line (and its newline) from which every answer the thought states is
    `answer`; `len(thought)` when the last stated answer is wrong or none is stated.

    >>> settled_char("1 + 1 = 3\\nSo the answer is 3.\\nSo the answer is 2, not 3.\\nYes.", "2")
    44
    """
    offset, settled = 0, len(thought)
    lines = thought.split("\n")
    for i, line in enumerate(lines):
        offset += len(line) + (i < len(lines) - 1)
        stated = ANSWER_STATED.findall(line)
        if stated and stated[0] != answer:
            settled = len(thought)
        elif stated and settled == len(thought):
            settled = offset
    return min(settled, len(thought))
