"""Long chains of last-digit operations, checked over and over: the long-thought family (`long_chain`).

A level-L question lists N = 8 + 3L labelled operations (`a + 4`, `b * 7`, `c - 2`, ..., letters a-z), one per
line in an order drawn with the question, to apply to a start digit in label order, keeping only the last digit.
Each trace line is one step, `c - 2: 7 to 5`: it copies the step's line from the question, then takes the
previous line's value to the new one. The lines are listed out of order so that finding a step means matching
its label: in a list always in label order a small model learns to find a step by where it sits, and that
reading slips on the late labels (the same by-place reading tasks/walk.py describes).

The thought is a series of passes over all N steps, each ending in a stated answer:
- pass 1 is quick and slips in three ways, each decided by the running value at that step (so only the
  thought shows whether it happens) and so each as frequent as its operation is in the question (the
  operation mix is drawn per question):
  borrow  `a - b` with b - a >= BORROW_GAP writes b - a;
  carry   `a + b` with a + b >= CARRY_SUM writes one more than the last digit;
  tens    `a * b` with a * b >= TENS_PRODUCT writes the tens digit;
- pass 2 is a check that still makes the `tens` slip; passes 3 and later are exact;
- once a pass states the right answer and no later pass changes it, 3-5 more verification passes follow
  (how many is a function of the question).
So the settle point falls after pass 1, 2 or 3, and a thought holds 4-8 passes (median about 700 tokens).
A pass whose answer differs from the last one says "So the answer is Z, not Y."; an agreeing one says
"Yes, the answer is Y.". Every thought ends on the right answer.

Run `python -m adaptive_think.tasks.chain` to print an example.
"""

from __future__ import annotations

import random
import string

from .arithmetic import MOD, apply_op
from .question import Question
from .settle import settled_char

FAMILY = "long_chain"
PREAMBLE = "Start at {start} and apply these steps in order, keeping only the last digit:"
LABELS = string.ascii_lowercase
BORROW_GAP = 7
CARRY_SUM = 16
TENS_PRODUCT = 56
# Operation mixes (weights of +, -, *): the mix sets which slips a question invites, and how often.
MIXES = ((1, 1, 1), (3, 1, 1), (1, 3, 1), (1, 1, 3), (2, 2, 0), (1, 0, 2))
OPENERS = (
    "Let me go through all the steps again.",
    "Let me check every step once more.",
    "Wait, let me verify the whole chain.",
    "Let me recompute it carefully.",
)
SLIP_KINDS = ("borrow", "carry", "tens")
# Which slips each pass makes: the quick pass all three, the first check only `tens`, later passes none.
PASS_SLIPS = ({"borrow", "carry", "tens"}, {"tens"})


def n_ops(level: int) -> int:
    """How many operations a level-`level` question chains (11 at level 1, 26 at level 6)."""
    return 8 + 3 * level


def slip_kind(a: int, op: str, b: int) -> str | None:
    """The slip that the step `a op b` invites, or None."""
    if op == "-" and b - a >= BORROW_GAP:
        return "borrow"
    if op == "+" and a + b >= CARRY_SUM:
        return "carry"
    if op == "*" and a * b >= TENS_PRODUCT:
        return "tens"
    return None


def slipped_value(a: int, op: str, b: int, kind: str) -> int:
    """What a step worth slipping writes instead of the right value."""
    if kind == "borrow":
        return b - a
    if kind == "carry":
        return (a + b + 1) % MOD
    return a * b // MOD


def run_pass(start: int, ops: list[tuple[str, int]], slips: set[str]) -> tuple[list[str], list[str]]:
    """One pass: (lines `c - 2: 7 to 5`, the slip kinds it made, in order); only kinds in `slips` happen."""
    lines, made, value = [], [], start
    for label, (op, b) in zip(LABELS, ops):
        kind = slip_kind(value, op, b)
        if kind in slips:
            new = slipped_value(value, op, b, kind)
            made.append(kind)
        else:
            new = apply_op(value, op, b)
        lines.append(f"{label} {op} {b}: {value} to {new}")
        value = new
    return lines, made


def _result(lines: list[str]) -> int:
    return int(lines[-1].rsplit(" to ", 1)[1])


def extra_checks(start: int, ops: list[tuple[str, int]]) -> int:
    """Verification passes after the answer has settled (3-5), a function of the question."""
    return 3 + (start + len(ops) + sum(b for _, b in ops)) % 3


def build_question(start: int, ops: list[tuple[str, int]], level: int, order: list[int] | None = None) -> Question:
    """The question, answer and trace for `start` followed by labelled `ops` (a list of (op, operand)), their
    lines listed in `order` (a permutation of range(len(ops)); default label order)."""
    if not 1 <= len(ops) <= len(LABELS):
        raise ValueError(f"a chain holds 1..{len(LABELS)} operations, got {len(ops)}")
    order = list(range(len(ops))) if order is None else list(order)
    if sorted(order) != list(range(len(ops))):
        raise ValueError(f"order must list each of the {len(ops)} steps once, got {order}")
    steps = "\n".join(f"{LABELS[i]} {ops[i][0]} {ops[i][1]}" for i in order)
    text = f"{PREAMBLE.format(start=start)}\n{steps}"
    answer = _result(run_pass(start, ops, set())[0])

    # Passes 1, 2 and 3 (exact); keep them up to the first one from which every later one is right.
    tried = [run_pass(start, ops, slips)[0] for slips in (*PASS_SLIPS, set())]
    last_wrong = max((i for i, lines in enumerate(tried) if _result(lines) != answer), default=-1)
    passes = tried[: last_wrong + 2] + [tried[-1]] * extra_checks(start, ops)

    out, belief = [], None
    for i, lines in enumerate(passes):
        result = _result(lines)
        if i:
            out.append(OPENERS[(start + i) % len(OPENERS)])
        out += lines
        if belief is None:
            out.append(f"So the answer is {result}.")
        elif result != belief:
            out.append(f"So the answer is {result}, not {belief}.")
        else:
            out.append(f"Yes, the answer is {result}.")
        belief = result
    thought = "\n".join(out)
    first = _result(passes[0])
    return Question(text, str(answer), level, FAMILY, thought, settled_char(thought, str(answer)), first != answer)


def random_question(rng: random.Random, level: int, in_order: bool = False) -> Question:
    """A level-`level` question drawn from `rng` (its operation mix drawn first, its listing order last);
    `in_order` lists the steps in label order and draws no order."""
    weights = rng.choice(MIXES)
    start = rng.randrange(MOD)
    ops = []
    for _ in range(n_ops(level)):
        op = rng.choices("+-*", weights=weights)[0]
        ops.append((op, rng.randint(2, 9) if op == "*" else rng.randint(1, 9)))
    return build_question(start, ops, level, order=None if in_order else rng.sample(range(len(ops)), len(ops)))


def pass_slips(q: Question) -> list[list[str]]:
    """The slip kinds each of the first two passes of `q`'s trace made (re-derived from its question)."""
    start, ops = parse_question(q.question)
    return [run_pass(start, ops, slips)[1] for slips in PASS_SLIPS]


def parse_question(text: str) -> tuple[int, list[tuple[str, int]]]:
    """(start, ops) back from a question's text; ValueError when it is not a `long_chain` question."""
    head, *steps = text.split("\n")
    start = head.removeprefix("Start at ").partition(" ")[0]
    if not steps or not start.isdigit() or head != PREAMBLE.format(start=start):
        raise ValueError(f"not a {FAMILY} question: {text[:60]!r}")
    by_label = {}
    for part in steps:
        label, op, b = part.split(" ")
        if label in by_label:
            raise ValueError(f"a {FAMILY} question lists step {label!r} twice")
        by_label[label] = (op, int(b))
    if sorted(by_label) != list(LABELS[: len(by_label)]):
        raise ValueError(f"a {FAMILY} question labels its steps a, b, c, ... without a gap, got {sorted(by_label)}")
    return int(start), [by_label[label] for label in LABELS[: len(by_label)]]


if __name__ == "__main__":
    q = random_question(random.Random(3), 2)
    print(q.question, "->", q.answer, f"(level {q.level}, slip={q.slip})")
    print(q.thought[: q.settled_char] + "   <settled>\n" + q.thought[q.settled_char :])
