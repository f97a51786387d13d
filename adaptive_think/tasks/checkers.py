"""Built-in answer checkers for user question sets: `boxed`, `last-number`, `exact`, `choice`, `answer-is`.

A checker is `fn(text, answer) -> bool` on a model's output (thought included). The built-in ones are
`AnswerChecker` objects that also say what they read (`read(text)`, None when nothing was found), which
`collect` and `doctor` use to report a parse rate. Each reads only the answer after the think block
(an open thought that never closed has no answer) and ignores end-of-turn tokens such as `<|im_end|>`.

    from adaptive_think.tasks.checkers import get_checker
    boxed = get_checker("boxed")
    boxed("<think>...</think> So \\boxed{\\frac{1}{2}}.", "0.5")      # True: numbers compare exactly
    get_checker("last-number").read("</think>It costs $1,000, not 900. Final: 1,000")   # '1,000'

Numbers compare as exact fractions: `1,000` = `1000.0`, `-3` = `−3`, `\\frac{1}{2}` = `0.5` = `1/2`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Callable

from adaptive_think.markers import KNOWN_MARKERS
from adaptive_think.tasks.parse import parse_answer

# End-of-turn and padding tokens that a decode with special tokens leaves after an answer.
_END_TOKENS = re.compile(r"(?:\s*(?:<\|[^|<>]{1,40}\|>|<｜[^｜<>]{1,40}｜>|</s>|<eos>|<pad>|<end_of_turn>))+\s*$")
_NUMBER = re.compile(r"(?<![\w.])[-−+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])[-−+]?\.\d+")
_FRAC = re.compile(r"([-+]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_CHOICE_LETTERS = "ABCDEFGHIJ"
# "Answer: C", "the answer is (B)", "correct option is D", "choice: A" (the last one stated wins)
_CHOICE_STATED = re.compile(r"(?i:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*\**\(?([A-J])\)?(?!\w)")
_CHOICE_PAREN = re.compile(r"\(([A-J])\)")
# the whole answer is a letter ("B", "(B)", "B.", "B) Paris", "**C**"); "A cat" is not
_CHOICE_LEAD = re.compile(r"\**\(?([A-J])(?:\)|\**(?:[.:]|\s*$))")


def strip_end_tokens(text: str) -> str:
    """`text` without trailing end-of-turn / padding tokens (`<|im_end|>`, `</s>`, `<eos>` ...)."""
    return _END_TOKENS.sub("", text)


def to_number(text: str) -> Fraction | None:
    """An exact number from `1,000`, `-3.5`, `−2`, `$5`, `50%`, `1/2`, `\\frac{1}{2}`; None if not a number."""
    s = text.strip().replace("−", "-").replace("\\!", "").replace("\\,", "").replace(" ", "")
    s = s.removeprefix("\\$").removeprefix("$").removesuffix("$").rstrip(".")
    s = s.removesuffix("\\%").removesuffix("%")
    s = re.sub(r"^([-+]?)\\\$", r"\1", s)
    frac = _FRAC.fullmatch(s)
    if frac:
        num, den = to_number(frac.group(2)), to_number(frac.group(3))
        if num is None or den is None or den == 0:
            return None
        return -num / den if frac.group(1) == "-" else num / den
    if s.count("/") == 1:
        a, b = s.split("/")
        num, den = to_number(a), to_number(b)
        return num / den if num is not None and den is not None and den != 0 else None
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if not re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", s):
        return None
    return Fraction(s)


def _same_number(got: str, truth: str) -> bool:
    a, b = to_number(got), to_number(truth)
    return a is not None and a == b


def _latex_form(text: str) -> str:
    # spacing and sizing commands do not change a boxed expression's meaning
    s = re.sub(r"\\(?:left|right|!|,|;|:|\s)", "", text)
    s = re.sub(r"\\[dt]frac", r"\\frac", s).replace("$", "")
    return re.sub(r"\s+", "", s).rstrip(".")


def _same_boxed(got: str, truth: str) -> bool:
    truth = read_boxed(truth) or truth
    a, b = to_number(got), to_number(truth)
    if a is not None and b is not None:
        return a == b
    return _latex_form(got) == _latex_form(truth)


def read_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces kept; None if none."""
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*\{", text))):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[m.end() : i - 1].strip()
    return None


def read_last_number(text: str) -> str | None:
    """The last number written in `text` (`1,000`, `-3`, `2.5`), as written; None if none."""
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def read_exact(text: str) -> str | None:
    """The whole answer with whitespace collapsed and a final period dropped; None if empty."""
    s = re.sub(r"\s+", " ", text).strip().rstrip(".").strip()
    return s or None


def _same_exact(got: str, truth: str) -> bool:
    return got.casefold() == (read_exact(truth) or "").casefold()


def read_choice(text: str) -> str | None:
    """A multiple-choice letter A-J: the last "answer/option is X", else the last "(X)", else a bare letter."""
    for pattern in (_CHOICE_STATED, _CHOICE_PAREN):
        found = [g.upper() for g in pattern.findall(text)]
        found = [g for g in found if g in _CHOICE_LETTERS]
        if found:
            return found[-1]
    lead = _CHOICE_LEAD.match(text.strip())
    return lead.group(1) if lead else None


def _same_choice(got: str, truth: str) -> bool:
    return got == read_choice(truth.strip().upper())


@dataclass(frozen=True)
class AnswerChecker:
    """A checker that can say what it read: `read(text)` -> answer string or None; `checker(text, truth)` -> bool.

    `open_markers` / `close_markers`: the thought is everything up to the last close marker; text with an
    open marker and no close marker holds no answer yet.
    """

    name: str
    read_answer: Callable[[str], str | None]  # on the answer part, after the think block
    same: Callable[[str, str], bool]  # (what was read, the truth) -> right?
    truth_ok: Callable[[str], bool]  # can this checker compare against that truth at all?
    truth_kind: str  # what a truth must look like, for error messages
    open_markers: tuple[str, ...] = tuple(o for o, _, _ in KNOWN_MARKERS)
    close_markers: tuple[str, ...] = tuple(c for _, c, _ in KNOWN_MARKERS)
    own_split: bool = False  # read_answer handles the think block itself (the bundled task's parser)

    def answer_part(self, text: str) -> str | None:
        """The text after the think block, end tokens removed; None when a thought opened and never closed."""
        cut = max((text.rfind(c) + len(c) for c in self.close_markers if c in text), default=-1)
        if cut >= 0:
            text = text[cut:]
        elif any(o in text for o in self.open_markers):
            return None
        return strip_end_tokens(text)

    def read(self, text: str) -> str | None:
        """What this checker reads as the answer in `text` (None: nothing it can read)."""
        if not isinstance(text, str):
            return None
        if self.own_split:
            return self.read_answer(text)
        part = self.answer_part(text)
        return None if part is None else self.read_answer(part)

    def __call__(self, text: str, answer: str) -> bool:
        got = self.read(text)
        return got is not None and self.same(got, str(answer))

    def with_markers(self, open_text: str, close_text: str) -> "AnswerChecker":
        """The same checker for a model whose thought sits between other markers."""
        return replace(self, open_markers=(*self.open_markers, open_text), close_markers=(*self.close_markers, close_text))

    def check_truths(self, answers: list[tuple[str, str]]) -> None:
        """Raise a clear error when a reference answer is not something this checker compares, e.g. a
        word under `last-number`; `answers` holds (where, answer) pairs."""
        bad = [(where, a) for where, a in answers if not self.truth_ok(str(a))]
        if bad:
            shown = ", ".join(f"{w}: {a!r}" for w, a in bad[:3])
            raise ValueError(f"--checker {self.name} compares {self.truth_kind}, but {len(bad)} answer(s) are not "
                             f"({shown}); fix the answers or pick another --checker ({', '.join(CHECKERS)}).")


def _answer_is_same(got: str, truth: str) -> bool:
    return got == (parse_answer(str(truth).strip()) or str(truth).strip())


CHECKERS: dict[str, AnswerChecker] = {
    "boxed": AnswerChecker("boxed", read_boxed, _same_boxed, lambda t: bool(t.strip()), "any non-empty answer"),
    "last-number": AnswerChecker("last-number", read_last_number, _same_number, lambda t: to_number(t) is not None,
                                 "numbers"),
    "exact": AnswerChecker("exact", read_exact, _same_exact, lambda t: read_exact(t) is not None, "non-empty text"),
    "choice": AnswerChecker("choice", read_choice, _same_choice, lambda t: read_choice(t.strip().upper()) is not None,
                            "choice letters A-J"),
    # the bundled task's parser: "the answer is N" after </think>, or a bare number
    "answer-is": AnswerChecker("answer-is", parse_answer, _answer_is_same, lambda t: bool(t.strip()),
                               "any non-empty answer", own_split=True),
}


def get_checker(name: str) -> AnswerChecker:
    """A built-in checker by name; a clear error listing the names otherwise."""
    if name not in CHECKERS:
        raise ValueError(f"Unknown checker {name!r}: the built-in ones are {', '.join(CHECKERS)}, "
                         "or pass your own as package.module:function.")
    return CHECKERS[name]
