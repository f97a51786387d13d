"""Think-marker registry: which tokens open and close a model's hidden chain of thought.

Known reasoning families are found from the tokenizer's added tokens and chat template; any other
model passes its markers as strings, which may tokenize to several ordinary tokens.

    >>> markers = resolve_markers(tokenizer)                       # Qwen3, R1, QwQ, GLM-4.5, Phi-4-reasoning ...
    >>> markers = resolve_markers(tokenizer, ("<reason>", "</reason>"))   # anything else
"""

from __future__ import annotations

from dataclasses import dataclass

# (open, close, families that use them). Order matters: the first pair the tokenizer knows wins.
KNOWN_MARKERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "<think>",
        "</think>",
        (
            "Qwen3",
            "QwQ",
            "DeepSeek-R1 and its distills",
            "DeepSeek-V3.1",
            "GLM-4.5/4.6",
            "Phi-4-reasoning",
        ),
    ),
    ("[THINK]", "[/THINK]", ("Magistral",)),
    ("<seed:think>", "</seed:think>", ("Seed-OSS",)),
)

HOW_TO_PASS = (
    'pass them explicitly, e.g. AdaptiveThinker(model, tokenizer, think_tokens=("<think>", "</think>")) '
    'or on the command line --think-tokens "<think>" "</think>"'
)


@dataclass(frozen=True)
class ThinkMarkers:
    """The open / close markers of a model as text and as token ids (one or several tokens each)."""

    open_text: str
    close_text: str
    open_ids: tuple[int, ...]
    close_ids: tuple[int, ...]
    source: str  # "detected: <families>" or "explicit"

    @property
    def single_token(self) -> bool:
        return len(self.open_ids) == 1 and len(self.close_ids) == 1


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def find_subsequence(seq, sub, start: int = 0) -> int:
    """Index of the first occurrence of token ids `sub` in `seq` at or after `start`; -1 when absent."""
    seq, sub = list(seq), list(sub)
    n = len(sub)
    for i in range(max(start, 0), len(seq) - n + 1):
        if seq[i : i + n] == sub:
            return i
    return -1


def _contains(haystack, needle) -> bool:
    return find_subsequence(haystack, needle) >= 0


def _single_added_id(tokenizer, text: str) -> int | None:
    """The id of `text` if the tokenizer has it as one token (added or in the vocabulary)."""
    vocab = tokenizer.get_vocab()
    if text in vocab:
        ids = _encode(tokenizer, text)
        if ids == [vocab[text]]:
            return vocab[text]
    return None


def markers_from_strings(tokenizer, open_text: str, close_text: str, source: str = "explicit") -> ThinkMarkers:
    """Tokenize explicit markers and check the model can actually write and read them in context."""
    for name, text in (("open", open_text), ("close", close_text)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"think_tokens: the {name} marker must be a non-empty string, got {text!r}; {HOW_TO_PASS}.")
    if open_text == close_text:
        raise ValueError(f"think_tokens: open and close markers are the same string {open_text!r}; they must differ.")
    open_ids = tuple(_encode(tokenizer, open_text))
    close_ids = tuple(_encode(tokenizer, close_text))
    for name, text, ids in (("open", open_text, open_ids), ("close", close_text, close_ids)):
        if not ids:
            raise ValueError(f"think_tokens: the {name} marker {text!r} tokenizes to no tokens with this tokenizer.")
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None and unk in ids:
            raise ValueError(
                f"think_tokens: the {name} marker {text!r} tokenizes to the unknown token; this model cannot write it. "
                "Use markers the tokenizer can represent."
            )
        # a marker whose tokens change with the text around it would never be matched in a thought
        in_context = _encode(tokenizer, f"x\n{text}\nx")
        if not _contains(in_context, ids):
            raise ValueError(
                f"think_tokens: the {name} marker {text!r} is not in the prompt's grammar: it tokenizes to {list(ids)} "
                f"alone but differently inside text ({in_context}), so the controller could never recognise it. "
                "Use a marker that tokenizes the same in context (for example one surrounded by newlines, or an added token)."
            )
    if _contains(list(close_ids), open_ids) or _contains(list(open_ids), close_ids):
        raise ValueError(
            f"think_tokens: one marker's tokens contain the other's ({list(open_ids)} vs {list(close_ids)}); "
            "pick markers that cannot be confused."
        )
    return ThinkMarkers(open_text, close_text, open_ids, close_ids, source)


def detect_markers(tokenizer) -> ThinkMarkers | None:
    """Find a known family's markers among the tokenizer's tokens; None when none is known."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = " ".join(str(v) for v in template.values())
    candidates = []
    for open_text, close_text, families in KNOWN_MARKERS:
        o, c = _single_added_id(tokenizer, open_text), _single_added_id(tokenizer, close_text)
        if o is not None and c is not None:
            in_template = open_text in template or close_text in template
            candidates.append((not in_template, open_text, close_text, families))
    if not candidates:
        return None
    # a pair named in the chat template beats one that only sits in the vocabulary
    candidates.sort(key=lambda c: c[0])
    _, open_text, close_text, families = candidates[0]
    return markers_from_strings(tokenizer, open_text, close_text, source="detected: " + ", ".join(families))


def resolve_markers(tokenizer, think_tokens: tuple[str, str] | None = None) -> ThinkMarkers:
    """Markers given explicitly, or detected from the tokenizer; a clear error when neither works."""
    if think_tokens is not None:
        if isinstance(think_tokens, str) or len(think_tokens) != 2:
            raise ValueError(f"think_tokens must be a pair (open, close) of strings, got {think_tokens!r}; {HOW_TO_PASS}.")
        return markers_from_strings(tokenizer, think_tokens[0], think_tokens[1])
    found = detect_markers(tokenizer)
    if found is None:
        known = "; ".join(f"{o} {c} ({', '.join(f)})" for o, c, f in KNOWN_MARKERS)
        raise ValueError(
            f"No think markers found in this tokenizer ({type(tokenizer).__name__}): none of the known pairs [{known}] "
            f"is one of its tokens. If the model thinks between other markers, {HOW_TO_PASS}."
        )
    return found
