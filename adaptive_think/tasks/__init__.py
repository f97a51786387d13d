"""Question sets with checkable answers and difficulty levels 1..6, for training and evaluating.

The one family so far is chained last-digit arithmetic (`arithmetic.py`): level L applies L operations
to a start digit, mod 10. Each `Question` carries a reasoning trace with a deterministic first-pass
slip, re-checks and spot checks, and `settled_char`, the point after which the answer no longer changes.

    from adaptive_think.tasks import make_questions, is_correct
    qs = make_questions(60, seed=1)          # 10 per level, deterministic
    is_correct("</think>\\n\\nThe answer is 3.", qs[0].answer)

`parse_answer` reads the answer after the think block (None when unparsed; never raises),
`ANSWER_STATED` finds where a thought states an answer (the "marker" baseline stops after the first).
Print examples with `python -m adaptive_think.tasks.arithmetic`.
"""

from .arithmetic import make_questions
from .parse import ANSWER_STATED, is_correct, parse_answer
from .question import Question

__all__ = ["ANSWER_STATED", "Question", "is_correct", "make_questions", "parse_answer"]
