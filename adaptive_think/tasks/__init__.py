"""Question sets with checkable answers and difficulty levels 1..6, for training and evaluating.

Three families (`families.py`): chained last-digit arithmetic (`arithmetic.py`, the bundled reasoner's
first family: level L applies L operations to a start digit, mod 10), arrow walks (`walk.py`) and long
labelled chains checked in several passes (`chain.py`, the long-thought family). Each `Question` carries
a reasoning trace with first-pass slips, re-checks and spot checks, its `category` (family) and `level`,
and `settled_char`, the point after which the answer no longer changes.

    from adaptive_think.tasks import make_questions, make_family_questions, checker_for, is_correct
    qs = make_questions(60, seed=1)          # last_digit only, 10 per level, deterministic
    is_correct("</think>\\n\\nThe answer is 3.", qs[0].answer)
    mixed = make_family_questions(90, seed=1)   # every family, levels mixed evenly
    checker_for(mixed[0].category)(text, mixed[0].answer)

`parse_answer` reads the answer after the think block (None when unparsed; never raises),
`ANSWER_STATED` finds where a thought states an answer (the "marker" baseline stops after the first).
Print examples with `python -m adaptive_think.tasks.arithmetic`.
"""

from .arithmetic import make_questions
from .families import FAMILIES, checker_for, make_family_questions
from .parse import ANSWER_STATED, is_correct, parse_answer
from .question import Question

__all__ = ["ANSWER_STATED", "FAMILIES", "Question", "checker_for", "is_correct", "make_family_questions",
           "make_questions", "parse_answer"]
