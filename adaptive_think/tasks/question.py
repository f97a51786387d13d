"""The `Question` record shared by every task family: text, checkable answer, difficulty, and a worked trace.

Import it as `from adaptive_think.tasks import Question`; nothing to run here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """One question with a checkable answer and the reasoning trace a model is trained to write.

    `thought` is the full thinking text without the <think> markers, one step per line.
    `settled_char` is the char offset in `thought` just after the line (and its newline) where the
    correct final answer is first stated and stays stated: cutting the thought there and forcing an
    exit gives the right answer; cutting earlier may not. `slip` is True when the first pass states a
    wrong answer that a later check corrects.

    Example: Question("Compute 7 + 5 ...", "2", level=1, family="last_digit", thought="7 + 5 = 2\\n...",
    settled_char=30, slip=False)
    """

    question: str
    answer: str
    level: int
    family: str
    thought: str
    settled_char: int
    slip: bool

    @property
    def category(self) -> str:
        """The question's family name, as question files and strata call it."""
        return self.family
