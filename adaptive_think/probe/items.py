"""Question sources for probe collection and evaluation: the bundled tasks or a user's JSONL file.

A JSONL file holds one `{"question": ..., "answer": ...}` object per line (optional "id", "level").
A checker is `fn(text, answer) -> bool`; the default parses "the answer is N" / a bare answer.
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
    """One question to think about: id (stable across runs, for resume), text, checkable answer, level."""

    id: str
    question: str
    answer: str
    level: int = 0


def question_hash(question: str) -> str:
    """A short content hash of a question's text (16 hex digits): how a probe records what it has seen."""
    return hashlib.sha256(" ".join(question.split()).encode("utf-8")).hexdigest()[:16]


def bundled_items(n: int, seed: int) -> list[Item]:
    """`n` questions of the bundled task family drawn with `seed` (levels mixed evenly)."""
    from adaptive_think.tasks import make_questions

    return [Item(f"s{seed}-{i}", q.question, q.answer, q.level) for i, q in enumerate(make_questions(n, seed))]


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
            items.append(Item(item_id, obj["question"], str(obj["answer"]), level))
    if not items:
        raise ValueError(f"{path} holds no questions.")
    return items


def default_checker(text: str, answer: str) -> bool:
    from adaptive_think.tasks import is_correct

    return is_correct(text, answer)


def load_checker(spec: str | None) -> Callable[[str, str], bool]:
    """`module:function` -> that function (text, answer) -> bool; None -> the default checker."""
    if spec is None:
        return default_checker
    if ":" not in spec:
        raise ValueError(f"--checker {spec!r} must look like `package.module:function`.")
    mod, _, fn = spec.partition(":")
    try:
        checker = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--checker {spec!r} could not be loaded: {err}.") from None
    if not callable(checker):
        raise ValueError(f"--checker {spec!r} is not callable.")
    return checker
