"""Built-in answer checkers on hand-written model outputs: boxed, last-number, exact, choice, answer-is."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_think.training.items import Item, check_answers, load_checker
from adaptive_think.tasks.checkers import get_checker, read_boxed, to_number

BOXED, LAST, EXACT, CHOICE = (get_checker(n) for n in ("boxed", "last-number", "exact", "choice"))


def test_boxed_reads_nested_braces_and_compares_numbers_exactly():
    out = "<think>\nhalf of 1 is \\boxed{3} no wait\n</think>\n\nSo the result is $\\boxed{\\frac{1}{2}}$.<|im_end|>"
    assert BOXED.read(out) == "\\frac{1}{2}"  # the last box after the thought, braces balanced
    assert BOXED(out, "0.5") and BOXED(out, "1/2") and BOXED(out, "\\dfrac{1}{2}") and BOXED(out, "\\boxed{0.5}")
    assert not BOXED(out, "3") and not BOXED(out, "0.25")
    assert read_boxed("\\boxed{\\sqrt{\\frac{a}{b}} + 1}") == "\\sqrt{\\frac{a}{b}} + 1"
    assert BOXED("</think>\\boxed{ \\left( 1, 2 \\right) }", "(1,2)")  # non-numbers compare as normalised LaTeX
    assert BOXED("</think>\\boxed{1,000}", "1000.0") and BOXED("</think>\\boxed{-7}", "−7")
    assert BOXED.read("</think>The answer is 4.") is None
    assert BOXED.read("</think>\\boxed{1 + {2}") is None  # unbalanced: nothing read


def test_numbers_compare_numerically():
    assert to_number("1,000") == to_number("1000.0") == 1000
    assert to_number("-3") == to_number("−3") == -3
    assert to_number("$1,234.50") == to_number("1234.5")
    assert to_number("50%") == 50 and to_number("\\frac{3}{4}") == to_number(".75")
    assert to_number("-\\frac{1}{2}") == to_number("-0.5")
    assert to_number("1,00") is None and to_number("four") is None and to_number("1/0") is None


def test_last_number_takes_the_last_number_of_the_answer():
    out = "<think>\n12 * 3 = 36, minus 40 is -4\n</think>\n\nFirst 12 apples, then 3 more: 1,015 in total.<eos>"
    assert LAST.read(out) == "1,015"
    assert LAST(out, "1015") and LAST(out, "1015.0") and not LAST(out, "15")
    assert LAST("</think>It drops to -4 degrees.", "-4") and not LAST("</think>It drops to -4 degrees.", "4")
    assert LAST.read("</think>10-3 leaves 7") == "7"  # a minus between numbers is not a sign
    assert LAST.read("</think>2.5 then 3.75 km") == "3.75"
    assert LAST.read("<think>\nit is 4 or 5") is None  # the thought never closed: no answer yet
    assert LAST.read("</think>No idea.") is None
    assert LAST("I think it is 12.", "12")  # no think block at all: the whole text is the answer


def test_exact_compares_the_whole_answer():
    assert EXACT("<think>\nParis? Lyon?\n</think>\n\n  Paris.<|im_end|><|endoftext|>", "paris")
    assert not EXACT("</think>\n\nParis, France", "Paris")
    assert EXACT.read("</think>\n\n  New   York \n") == "New York"
    assert EXACT.read("</think>\n\n <|im_end|>") is None


@pytest.mark.parametrize("text,letter", [
    ("</think>\n\nAnswer: C", "C"),
    ("</think>\n\nThe answer is (B).", "B"),
    ("</think>\n\nI would say (A) at first, but the correct option is D.", "D"),
    ("</think>\n\n(E)", "E"),
    ("</think>\n\nB", "B"),
    ("</think>\n\nB) 42 apples", "B"),
    ("</think>\n\n**C**", "C"),
])
def test_choice_reads_letters(text, letter):
    assert CHOICE.read(text) == letter
    assert CHOICE(text, letter) and CHOICE(text, f"({letter})") and CHOICE(text, letter.lower())
    assert not CHOICE(text, "F")


def test_choice_does_not_read_words_as_letters():
    assert CHOICE.read("</think>\n\nA cat sat on the mat.") is None
    assert CHOICE.read("</think>\n\nthe answer is a dog") is None


def test_custom_markers_and_loading_by_name():
    checker = load_checker("last-number", ("<reason>", "</reason>"))
    assert checker.read("<reason>\n3 + 4 = 8? no, 7\n</reason>\n\nSo 7, final.") == "7"
    assert checker.read("<reason>\nmaybe 8") is None
    assert load_checker(None)("</think>\n\nThe answer is 07.", "7")  # the bundled parser stays the default
    with pytest.raises(ValueError, match="built-in checker.*boxed, last-number, exact, choice"):
        load_checker("numbers")


def test_reference_answers_are_checked_before_any_generation():
    items = [Item("a", "q", "12"), Item("b", "q", "twelve")]
    with pytest.raises(ValueError, match=r"last-number compares numbers.*b: 'twelve'"):
        check_answers(items, LAST)
    with pytest.raises(ValueError, match="choice letters"):
        check_answers([Item("a", "q", "Paris")], CHOICE)
    check_answers(items, EXACT)
    check_answers(items, lambda text, answer: True)  # a user's function is trusted as is


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**9, 10**9), st.integers(0, 99))
def test_any_integer_reads_back_in_every_spelling(n, cents):
    spelled = f"{n:,}"
    assert to_number(spelled) == to_number(str(n)) == to_number(f"{n}.0") == n
    assert LAST.read(f"</think>First 3, then {spelled}.") == spelled and LAST(f"</think>So {spelled}", str(n))
    assert BOXED(f"</think>\\boxed{{{spelled}}}", f"{n}.00")
    decimal = f"{n}.{cents:02d}"
    assert LAST(f"</think>Total: ${decimal} due", decimal) and not LAST(f"</think>Total: {decimal}", str(n + 1))
