"""Question sources for probe collection and evaluation: the bundled tasks or a user's JSONL file.

A JSONL file holds one `{"question": ..., "answer": ...}` object per line (optional "id", "level", "category":
calibration can be stratified by either, see training/strata.py).
A checker is `fn(text, answer) -> bool`: a built-in one by name (tasks/checkers.py) or `module:function`;
the default parses "the answer is N" / a bare answer.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Item:
    """One question to think about: id (stable across runs, for resume), text, checkable answer, level, category."""

    id: str
    question: str
    answer: str
    level: int = 0
    category: str = ""


def question_hash(question: str) -> str:
    """A short content hash of a question's text (16 hex digits): how a probe records what it has seen."""
    return hashlib.sha256(" ".join(question.split()).encode("utf-8")).hexdigest()[:16]


def bundled_items(n: int, seed: int, levels=None, families=None) -> list[Item]:
    """`n` questions of the bundled tasks drawn with `seed` (levels mixed evenly; `levels`: only these).

    `families`: draw from these task families (tasks/families.py: last_digit, walk, long_chain), mixed evenly,
    each question's family as its category; None: the first family's own question sequence (`make_questions`).
    Ids name the seed, the levels when not all six and the families, so different draws never collide.
    """
    levels = sorted(set(levels)) if levels else list(range(1, 7))
    tag = "" if levels == list(range(1, 7)) else "L" + "".join(map(str, levels))
    if families:
        from adaptive_think.tasks.families import FAMILIES, make_family_questions

        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown task famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                             f"--families takes {', '.join(FAMILIES)}")
        families = list(dict.fromkeys(families))
        questions = make_family_questions(n, seed, families=families, levels=levels)
        tag += "F" + "+".join(families)
    else:
        from adaptive_think.tasks import make_questions

        questions = make_questions(n, seed, levels)
    return [Item(f"s{seed}{tag}-{i}", q.question, q.answer, q.level, q.category) for i, q in enumerate(questions)]


def load_jsonl(path) -> list[Item]:
    """Read a JSONL question file; a malformed line raises ValueError naming its line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Question file {str(path)!r} does not exist.")
    items, seen = [], set()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg}); each line must be one JSON object.") from None
            if not isinstance(obj, dict) or "question" not in obj or "answer" not in obj:
                raise ValueError(f'{path}:{lineno}: each line needs an object with "question" and "answer" fields.')
            if not isinstance(obj["question"], str) or not obj["question"].strip():
                raise ValueError(f'{path}:{lineno}: "question" must be a non-empty string.')
            item_id = str(obj.get("id", f"line{lineno}"))
            if item_id in seen:
                raise ValueError(f"{path}:{lineno}: duplicate id {item_id!r}; ids must be unique for resumable runs.")
            seen.add(item_id)
            level = obj.get("level", 0)
            if not isinstance(level, int):
                raise ValueError(f'{path}:{lineno}: "level" must be an integer, got {level!r}.')
            category = obj.get("category", "")
            if not isinstance(category, (str, int)) or isinstance(category, bool):
                raise ValueError(f'{path}:{lineno}: "category" must be a string, got {category!r}.')
            items.append(Item(item_id, obj["question"], str(obj["answer"]), level, str(category)))
    if not items:
        raise ValueError(f"{path} holds no questions.")
    return items


def load_checker(spec: str | None, think_tokens: tuple[str, str] | None = None) -> Callable[[str, str], bool]:
    """A checker (text, answer) -> bool from its CLI name.

    `boxed`, `last-number`, `exact`, `choice`, `answer-is`: the built-in ones (see tasks/checkers.py), told
    about explicit `think_tokens`; `package.module:function`: your own; None: `answer-is`.
    """
    from adaptive_think.tasks.checkers import CHECKERS, get_checker

    if spec is None or spec in CHECKERS:
        checker = get_checker(spec or "answer-is")
        return checker.with_markers(*think_tokens) if think_tokens else checker
    if ":" not in spec:
        raise ValueError(f"--checker {spec!r} is neither a built-in checker ({', '.join(CHECKERS)}) "
                         "nor of the form `package.module:function`.")
    mod, _, fn = spec.partition(":")
    try:
        checker = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--checker {spec!r} could not be loaded: {err}.") from None
    if not callable(checker):
        raise ValueError(f"--checker {spec!r} is not callable.")
    return checker


def check_answers(items: list[Item], checker) -> None:
    """Fail before any generation when a built-in checker cannot compare some reference answer."""
    if hasattr(checker, "check_truths"):
        checker.check_truths([(it.id, it.answer) for it in items])
