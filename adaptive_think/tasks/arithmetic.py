"""Chained last-digit arithmetic: the task family the bundled tiny reasoner is trained on.

A level-L question applies L operations (+ b, - b, * b) left to right to a start digit, keeping only
the last digit (arithmetic mod 10), so every number is one token and every step is one table lookup.

The trace reads like a reasoning model's: a quick first pass, "So the answer is Y.", a full re-check,
then 0-2 spot checks ("overthinking"). The quick first pass uses a mental shortcut that is wrong in a
fixed, learnable case: for `a - b` with b - a >= SLIP_GAP it forgets the borrow and writes b - a. The
re-check does it right and corrects the answer ("So the answer is Z, not Y."), so a model trained on
these traces slips under greedy decoding exactly where the data does. Phrasing and the number of spot
checks are functions of the question, so the settled moment moves around from question to question.

Run `python -m adaptive_think.tasks.arithmetic` to print a few examples.
"""

from __future__ import annotations

import random

from .question import Question

MOD = 10
FAMILY = "last_digit"
# The shortcut slips when the subtrahend exceeds the running value by this much: ~30% of level-6 items slip.
SLIP_GAP = 4
OPENERS = (
    "Let me double-check.",
    "Wait, let me verify that.",
    "Let me recompute to be sure.",
    "Hmm, let me check again.",
)


def apply_op(a: int, op: str, b: int) -> int:
    """The exact step: `a op b` mod 10."""
    if op == "+":
        return (a + b) % MOD
    if op == "-":
        return (a - b) % MOD
    return (a * b) % MOD


def shortcut_op(a: int, op: str, b: int) -> int:
    """The quick first-pass step: right except `a - b` with b - a >= SLIP_GAP, where it writes b - a."""
    if op == "-" and b - a >= SLIP_GAP:
        return b - a
    return apply_op(a, op, b)


def _run(start: int, ops: list[tuple[str, int]], step) -> list[str]:
    lines, value = [], start
    for op, b in ops:
        new = step(value, op, b)
        lines.append(f"{value} {op} {b} = {new}")
        value = new
    return lines


def _value(line: str) -> int:
    return int(line.rsplit("= ", 1)[1])


def build_question(start: int, ops: list[tuple[str, int]]) -> Question:
    """The question, answer and trace for `start` followed by `ops` (a list of (op, operand))."""
    level = len(ops)
    expr = " ".join([str(start)] + [f"{op} {b}" for op, b in ops])
    text = f"Compute {expr} from left to right, keeping only the last digit."
    quick = _run(start, ops, shortcut_op)
    exact = _run(start, ops, apply_op)
    first, answer = _value(quick[-1]), _value(exact[-1])
    slip = first != answer

    lines = quick + [f"So the answer is {first}."]
    settled_line = len(lines) - 1
    lines.append(OPENERS[(start + level) % len(OPENERS)])
    lines += exact
    if slip:
        lines.append(f"So the answer is {answer}, not {first}.")
        settled_line = len(lines) - 1
    else:
        lines.append(f"Yes, the answer is {answer}.")
    # Spot checks after the answer is settled: pure overthinking, 0-2 of them set by the start digit.
    spots = [("last", exact[-1]), ("first", exact[0])][: start % 3]
    lines += [f"Check the {where} step again: {line}. Yes." for where, line in spots]

    thought = "\n".join(lines)
    settled_char = min(len(thought), sum(len(line) + 1 for line in lines[: settled_line + 1]))
    return Question(text, str(answer), level, FAMILY, thought, settled_char, slip)


def random_question(rng: random.Random, level: int) -> Question:
    """A level-`level` question drawn from `rng`."""
    start = rng.randrange(MOD)
    ops = []
    for _ in range(level):
        op = rng.choice("+-*")
        b = rng.randint(2, 9) if op == "*" else rng.randint(1, 9)
        ops.append((op, b))
    return build_question(start, ops)


def make_questions(n: int, seed: int, levels=range(1, 7)) -> list[Question]:
    """`n` questions, deterministic from `seed`, levels mixed evenly (cycled, then shuffled).

    >>> [q.level for q in make_questions(3, seed=0, levels=[1])]
    [1, 1, 1]
    """
    levels = list(levels)
    if n < 0 or not levels or any(not 1 <= lv <= 6 for lv in levels):
        raise ValueError(f"need n >= 0 and levels within 1..6, got n={n}, levels={levels}")
    rng = random.Random(seed)
    plan = [levels[i % len(levels)] for i in range(n)]
    rng.shuffle(plan)
    return [random_question(rng, level) for level in plan]


if __name__ == "__main__":
    for q in make_questions(4, seed=0, levels=[2, 6]):
        print(q.question, "->", q.answer, f"(level {q.level}, slip={q.slip})")
        print(q.thought[: q.settled_char] + "   <settled>\n" + q.thought[q.settled_char :], "\n")
