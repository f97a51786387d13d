"""Following arrows between digits: the table-lookup family (`walk`).

A question gives each digit 0-9 an arrow to a digit (a random function), listed in a random order, and asks
where a walk of H = 2L + 1 arrows from a start digit ends (level L, so 3 to 13 arrows). The order is shuffled so
that finding an arrow means matching its digit: in a table always listed 0-9, a small model learns to read an
arrow by where it sits, and that reading fails on a few digits (scripts/measure_lookups.py --by-key). Each trace
line is one arrow, `4: 6 to 2` (step number, from, to): it reads the previous line's digit and that digit's arrow
in the question, so every step is one lookup.

The quick first pass slips in two ways, both decided by where the walk goes (only the thought shows it):
  six    at digit 6 it reads the arrow of 9 ("6 looks like 9");
  home   when the walk comes back to its start digit before the end it takes itself to be done.
It states its answer, a full careful re-walk follows ("So the answer is Z, not Y." or "Yes, the answer
is Y."), then 0-2 spot checks of single steps (a function of the question). Every thought ends right.

Run `python -m adaptive_think.tasks.walk` to print an example.
"""

from __future__ import annotations

import random

from .arithmetic import MOD
from .question import Question
from .settle import settled_char

FAMILY = "walk"
CONFUSED = (6, 9)  # the quick pass reads the arrow of 9 when it stands on 6
OPENERS = ("Let me walk it again carefully.", "Let me retrace the arrows.", "Wait, let me follow them again.")
SLIP_KINDS = ("six", "home")


def hops(level: int) -> int:
    """Arrows a level-`level` walk follows (3 at level 1, 13 at level 6)."""
    return 2 * level + 1


def run_walk(arrows: list[int], start: int, n: int, quick: bool) -> tuple[list[str], list[str], int]:
    """(lines `4: 6 to 2`, slip kinds made, end digit) of a walk of `n` arrows; `quick` makes the slips."""
    lines, made, at = [], [], start
    for step in range(1, n + 1):
        src = at
        if quick and at == CONFUSED[0]:
            src = CONFUSED[1]
            made.append("six")
        nxt = arrows[src]
        lines.append(f"{step}: {at} to {nxt}")
        at = nxt
        if quick and at == start and step < n:
            made.append("home")
            break
    return lines, made, at


def build_question(arrows: list[int], start: int, level: int, order: list[int] | None = None) -> Question:
    """The question, answer and trace for the arrow table `arrows` (arrows[d] = where d points), listed in
    `order` (a permutation of the digits; default 0-9)."""
    if len(arrows) != MOD or any(not 0 <= a < MOD for a in arrows):
        raise ValueError(f"arrows must map each digit 0-9 to a digit, got {arrows}")
    order = list(range(MOD)) if order is None else list(order)
    if sorted(order) != list(range(MOD)):
        raise ValueError(f"order must list each digit 0-9 once, got {order}")
    n = hops(level)
    table = ", ".join(f"{d} to {arrows[d]}" for d in order)
    text = f"Arrows: {table}. Start at {start} and follow {n} arrows. Where do you end?"
    quick, _, first = run_walk(arrows, start, n, quick=True)
    exact, _, answer = run_walk(arrows, start, n, quick=False)

    lines = quick + [f"So the answer is {first}."]
    lines.append(OPENERS[(start + level) % len(OPENERS)])
    lines += exact
    lines.append(f"So the answer is {answer}, not {first}." if first != answer else f"Yes, the answer is {answer}.")
    spots = (exact[-1], exact[0])[: (start + arrows[start]) % 3]
    lines += [f"Check step {line.split(':')[0]} again: {line.split(': ')[1]}. Yes." for line in spots]
    thought = "\n".join(lines)
    return Question(text, str(answer), level, FAMILY, thought, settled_char(thought, str(answer)), first != answer)


def random_question(rng: random.Random, level: int, in_order: bool = False) -> Question:
    """A level-`level` question drawn from `rng`; `in_order` lists the table 0-9 and draws no order."""
    arrows = [rng.randrange(MOD) for _ in range(MOD)]
    start = rng.randrange(MOD)
    return build_question(arrows, start, level, order=None if in_order else rng.sample(range(MOD), MOD))


def parse_question(text: str) -> tuple[list[int], int, int]:
    """(arrows, start, arrows to follow) back from a question's text; ValueError when not a `walk` question."""
    if not text.startswith("Arrows: ") or " arrows. Where do you end?" not in text:
        raise ValueError(f"not a {FAMILY} question: {text[:60]!r}")
    table, rest = text.removeprefix("Arrows: ").split(". Start at ")
    pairs = [tuple(int(x) for x in part.split(" to ")) for part in table.split(", ")]
    if sorted(d for d, _ in pairs) != list(range(MOD)):
        raise ValueError(f"a {FAMILY} question lists each digit's arrow once, got {table!r}")
    arrows = [a for _, a in sorted(pairs)]
    start, n = rest.removesuffix(" arrows. Where do you end?").split(" and follow ")
    return arrows, int(start), int(n)


def walk_slips(q: Question) -> list[str]:
    """The slip kinds the quick pass of `q`'s trace made (re-derived from its question)."""
    arrows, start, n = parse_question(q.question)
    return run_walk(arrows, start, n, quick=True)[1]


if __name__ == "__main__":
    q = random_question(random.Random(5), 4)
    print(q.question, "->", q.answer, f"(level {q.level}, slip={q.slip})")
    print(q.thought[: q.settled_char] + "   <settled>\n" + q.thought[q.settled_char :])
