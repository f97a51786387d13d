"""Is a collection usable? Rates over collected questions and the likely cause when it is not.

`collect` prints `summarise(...)` after its first batch and at the end, and stops with `diagnose(...)`'s
cause (naming `adaptive-think doctor`) before spending a run on a model that never thinks, answers
nothing the checker can read, or gets nothing right; `train-probe` uses the same diagnosis when a
collection holds too few thought checkpoints.

    s = summarise(records)      # records of one or several shards (one prompt record per question)
    print(format_summary(s))    # opened a thought 100%, closed on its own 97%, mean thought 81 tokens, ...
    cause = diagnose(s)         # None, or (key, sentence): "no_thought" | "no_parse" | "none_right"
"""

from __future__ import annotations

KIND_PROMPT, KIND_THOUGHT = 0, 1  # record kinds: the prompt's end (skip head), a thought checkpoint (ready head)

DOCTOR = "adaptive-think doctor --model DIR [--think-tokens OPEN CLOSE] [--questions q.jsonl --checker ...]"


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarise(records: list[dict]) -> dict:
    """Rates over questions: opened a thought, closed it on its own (of those opened), mean thought
    length (tokens, of those opened), answers the checker could read (None when it cannot say),
    accuracy with full thinking and with thinking skipped."""
    qs = [r for r in records if r["kind"] == KIND_PROMPT]
    # collections made before `opened` was recorded: a thought with tokens was opened
    opened = [bool(r.get("opened", r["thought_len"] > 0)) for r in qs]
    thinking = [r for r, o in zip(qs, opened) if o]
    parsed = [r[k] for r in qs for k in ("full_parsed", "nothink_parsed") if r.get(k) is not None]
    return {
        "questions": len(qs),
        "opened_rate": _rate(opened),
        "closed_rate": _rate([bool(r["closed"]) for r in thinking]),
        "mean_thought_len": sum(r["thought_len"] for r in thinking) / len(thinking) if thinking else 0.0,
        "parse_rate": _rate(parsed),
        "full_accuracy": _rate([bool(r["full_correct"]) for r in qs]),
        "nothink_accuracy": _rate([bool(r["nothink_correct"]) for r in qs]),
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def format_summary(s: dict) -> str:
    """One line: the rates of `summarise`."""
    parsed = "n/a (the checker only says right or wrong)" if s["parse_rate"] is None else _pct(s["parse_rate"])
    return (f"{s['questions']} questions: opened a thought {_pct(s['opened_rate'])}, closed it on its own "
            f"{_pct(s['closed_rate'])}, mean thought {s['mean_thought_len']:.0f} tokens, answers parsed {parsed}, "
            f"accuracy full {_pct(s['full_accuracy'])} / no-think {_pct(s['nothink_accuracy'])}")


def diagnose(s: dict, markers: tuple[str, str] | None = None, max_new_tokens: int | None = None) -> tuple[str, str] | None:
    """The likely reason probe training cannot work on these questions, or None when nothing blocks it.

    Checked in order, each subsuming the next: no thought opened, no answer parsed, nothing right.
    """
    if not s["questions"]:
        return None
    if not s["opened_rate"]:
        which = f"{markers[0]!r} ... {markers[1]!r}" if markers else "its think markers"
        return "no_thought", (
            f"no question opened a thought ({which} never appeared): the model is not thinking under this chat "
            "template, or thinks between other markers (pass --think-tokens OPEN CLOSE), or is not a reasoning model")
    if s["parse_rate"] == 0:
        return "no_parse", (
            "the checker read no answer from any output: the model answers in another format than the checker "
            "expects; pick a --checker that fits (boxed, last-number, exact, choice) or write your own")
    if not s["full_accuracy"]:
        if not s["closed_rate"]:
            budget = f" within --max-new-tokens {max_new_tokens}" if max_new_tokens else ""
            return "none_right", (
                f"full thinking got no question right because no thought closed{budget} "
                f"(mean thought {s['mean_thought_len']:.0f} tokens): raise --max-new-tokens")
        return "none_right", (
            "full thinking got no question right: the reference answers, the checker, or the answer format do not "
            "match what the model writes (or the questions are far too hard for it)")
    return None
