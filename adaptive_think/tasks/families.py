"""The task families the bundled reasoner answers, by name, and questions drawn across them.

    last_digit  chained last-digit arithmetic, 1-6 operations (tasks/arithmetic.py): short thoughts
    walk        following arrows between digits, 3-13 arrows (tasks/walk.py): table lookups
    long_chain  10-25 labelled last-digit operations checked in 2-6 passes (tasks/chain.py): long thoughts

Every family answers "The answer is N." after the think block and has its own checker, `checker_for(name)`.

    from adaptive_think.tasks.families import make_family_questions, checker_for
    qs = make_family_questions(30, seed=1)                 # 10 per family, levels mixed evenly
    checker_for(qs[0].category)(text, qs[0].answer)
"""

from __future__ import annotations

import random
from typing import Callable

from . import arithmetic, chain, walk
from .parse import parse_answer
from .question import Question

# name -> random_question(rng, level); the order is the family index used to mix them.
FAMILIES: dict[str, Callable[[random.Random, int], Question]] = {
    arithmetic.FAMILY: arithmetic.random_question,
    walk.FAMILY: walk.random_question,
    chain.FAMILY: chain.random_question,
}

# Families whose questions list a table (arrows, labelled steps) in an order drawn with the question; their
# random_question(rng, level, in_order=True) lists it in label order instead and draws no order.
LISTED = (walk.FAMILY, chain.FAMILY)

# Thought + answer tokens that hold a whole full thought of the family with room to spare: the decode budget
# eval and collect use when --max-new-tokens is not given (a cut thought would be labelled as a wrong one).
MAX_NEW_TOKENS: dict[str, int] = {arithmetic.FAMILY: 256, walk.FAMILY: 384, chain.FAMILY: 2200}


def max_new_tokens_for(families, floor: int) -> int:
    """The decode budget for questions of `families` (None: the first family): `floor` or, when a family's
    thoughts run longer, what that family needs.

    >>> max_new_tokens_for(["last_digit", "long_chain"], floor=512)
    2200
    """
    return max([floor, *(MAX_NEW_TOKENS[f] for f in families or () if f in MAX_NEW_TOKENS)])


def _digit_checker(name: str) -> Callable[[str, str], bool]:
    def check(text: str, answer: str) -> bool:
        got = parse_answer(text)
        return got is not None and len(got) == 1 and got == str(answer).strip()

    check.__name__ = f"check_{name}"
    check.__doc__ = f"True when `text` answers the {name} question with its one-digit `answer` after the think block."
    return check


CHECKERS: dict[str, Callable[[str, str], bool]] = {name: _digit_checker(name) for name in FAMILIES}


def checker_for(family: str) -> Callable[[str, str], bool]:
    """The checker `fn(text, answer) -> bool` of a family (a question's `category`); clear error otherwise."""
    if family not in CHECKERS:
        raise ValueError(f"unknown task family {family!r}; the families are {', '.join(FAMILIES)}")
    return CHECKERS[family]


def families_answered_by(tokenizer) -> list[str]:
    """The families whose questions `tokenizer` encodes without an unknown token: a closed-vocabulary reasoner (the
    bundled ones) answers exactly those. A tokenizer without an unknown token encodes every family."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return list(FAMILIES)
    out = []
    for name, draw in FAMILIES.items():
        q = draw(random.Random(0), 6)
        # the question and the start of its thought hold every word of the family (and stay under any length cap)
        if unk not in tokenizer(q.question + "\n" + q.thought[:300], add_special_tokens=False)["input_ids"]:
            out.append(name)
    return out


def make_family_questions(n: int, seed: int, families=None, levels=range(1, 7), in_order: bool = False) -> list[Question]:
    """`n` questions deterministic from `seed`: (family, level) pairs cycled evenly, shuffled, then drawn.

    `families`: names from FAMILIES (default all). One family alone gives other questions than
    `arithmetic.make_questions` with the same seed (that one keeps its own sequence). `in_order`: the LISTED
    families list their tables in label order (the reasoner's first training stages; other questions).

    >>> sorted({q.category for q in make_family_questions(6, seed=0)})
    ['last_digit', 'long_chain', 'walk']
    """
    families, levels = list(families or FAMILIES), list(levels)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; the families are {', '.join(FAMILIES)}")
    if n < 0 or not families or not levels or any(not 1 <= lv <= 6 for lv in levels):
        raise ValueError(f"need n >= 0, some families and levels within 1..6, got n={n}, levels={levels}")
    rng = random.Random(seed)
    pairs = [(f, lv) for lv in levels for f in families]
    plan = [pairs[i % len(pairs)] for i in range(n)]
    rng.shuffle(plan)
    return [FAMILIES[f](rng, lv, in_order=True) if in_order and f in LISTED else FAMILIES[f](rng, lv) for f, lv in plan]
