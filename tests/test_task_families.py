"""Tests of the task families walk and long_chain, the family registry and the v2 tokenizer: fast, no training.

Run `pytest tests/test_task_families.py`.
"""

from __future__ import annotations

import statistics
from collections import Counter

import pytest

from adaptive_think.bundled.tokenizer import build_tokenizer
from adaptive_think.tasks import FAMILIES, checker_for, make_family_questions, make_questions
from adaptive_think.tasks import chain, walk
from adaptive_think.tasks.completions import full_completion, no_think_completion, truncated_completion
from adaptive_think.tasks.parse import ANSWER_STATED, last_stated_answer, parse_answer


def _chain_answer(question: str) -> int:
    # independent of chain.py's passes: plain left-to-right evaluation mod 10
    start, ops = chain.parse_question(question)
    value = start
    for op, b in ops:
        value = {"+": value + b, "-": value - b, "*": value * b}[op] % 10
    return value


def _walk_answer(question: str) -> int:
    arrows, at, n = walk.parse_question(question)
    for _ in range(n):
        at = arrows[at]
    return at


@pytest.fixture(scope="module")
def tok2():
    return build_tokenizer(2)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_generators_are_deterministic_per_seed(family):
    a = make_family_questions(24, seed=3, families=[family])
    assert a == make_family_questions(24, seed=3, families=[family])
    assert a != make_family_questions(24, seed=4, families=[family])
    assert {q.category for q in a} == {family}
    assert Counter(q.level for q in a) == {lv: 4 for lv in range(1, 7)}


def test_mix_cycles_families_and_levels_evenly_and_rejects_unknown_names():
    qs = make_family_questions(54, seed=0)
    assert Counter((q.category, q.level) for q in qs) == {(f, lv): 3 for f in FAMILIES for lv in range(1, 7)}
    with pytest.raises(ValueError, match="unknown task families"):
        make_family_questions(3, seed=0, families=["sudoku"])
    with pytest.raises(ValueError, match="unknown task family"):
        checker_for("sudoku")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_full_traces_end_right_and_parse_with_the_family_checker(family):
    check = checker_for(family)
    for q in make_family_questions(120, seed=1, families=[family]):
        assert last_stated_answer(q.thought) == q.answer  # the final "answer is" of the thought is the gold
        assert check(full_completion(q), q.answer) and check(no_think_completion(q), q.answer)
        assert not check(full_completion(q), str((int(q.answer) + 1) % 10))
        if family == chain.FAMILY:
            assert q.answer == str(_chain_answer(q.question))
        elif family == walk.FAMILY:
            assert q.answer == str(_walk_answer(q.question))


def test_checkers_read_only_the_answer_after_the_think_block():
    check = checker_for(chain.FAMILY)
    assert check("<think>\nSo the answer is 3.\n</think>\n\nThe answer is 4.", "4")
    assert not check("<think>\nSo the answer is 4.\n", "4")  # never closed: no answer
    assert not check("</think>\n\nThe answer is 14.", "4")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_settled_char_is_where_the_answer_stops_changing(family):
    for q in make_family_questions(90, seed=2, families=[family]):
        lines = q.thought.split("\n")
        cuts = [sum(len(x) + 1 for x in lines[: k + 1]) for k in range(len(lines))]
        cuts[-1] = len(q.thought)
        assert q.settled_char in cuts
        assert all(last_stated_answer(q.thought[:c]) == q.answer for c in cuts if c >= q.settled_char)
        before = [c for c in cuts if c < q.settled_char]
        assert last_stated_answer(q.thought[: before[-1]]) != q.answer
        assert q.slip == (ANSWER_STATED.search(q.thought).group(1) != q.answer)


def test_chain_slip_is_decided_by_the_running_value_not_the_operation():
    # the same step "- 9" slips when the running value is 1 (9 - 1 = 8 >= BORROW_GAP) and not when it is 8
    slipped = chain.build_question(1, [("-", 9)], level=1)
    assert slipped.slip and "a - 9: 1 to 8" in slipped.thought and slipped.answer == "2"
    assert not chain.build_question(8, [("-", 9)], level=1).slip
    # the value a slip reads is made mid-thought: 3 + 9 = 2 sets up 2 - 9, a borrow slip at step b
    q = chain.build_question(3, [("+", 9), ("-", 9)], level=1)
    assert "b - 9: 2 to 7" in q.thought and q.answer == "3" and chain.pass_slips(q)[0] == ["borrow"]
    assert chain.slipped_value(9, "*", 8, "tens") == 7 and chain.slipped_value(9, "+", 8, "carry") == 8


def test_chain_slip_rates_follow_the_operation_mix():
    qs = make_family_questions(600, seed=5, families=[chain.FAMILY])

    def rate(kind, op, lo, hi):
        group = [q for q in qs if lo <= sum(o == op for o, _ in chain.parse_question(q.question)[1]) <= hi]
        return sum(kind in chain.pass_slips(q)[0] for q in group) / len(group), len(group)

    for kind, op in (("borrow", "-"), ("carry", "+"), ("tens", "*")):
        few, n_few = rate(kind, op, 0, 2)
        many, n_many = rate(kind, op, 12, 99)
        assert n_few >= 20 and n_many >= 20, (kind, n_few, n_many)
        assert many >= few + 0.25, (kind, few, many)
    kinds = Counter(k for q in qs for k in set(chain.pass_slips(q)[0]))
    assert all(kinds[k] >= 60 for k in chain.SLIP_KINDS), kinds
    # the check pass makes only the `tens` slip
    assert {k for q in qs for k in chain.pass_slips(q)[1]} == {"tens"}
    # longer chains give the quick pass more chances to slip (a later `* 5` or `* 2` can undo a slip's harm)
    by_level = {lv: statistics.mean(bool(chain.pass_slips(q)[0]) for q in qs if q.level == lv) for lv in (1, 6)}
    assert by_level[6] > by_level[1] + 0.15, by_level
    assert all(chain.pass_slips(q)[0] for q in qs if q.slip)


def test_chain_settle_point_moves_and_verification_passes_follow_it():
    qs = make_family_questions(300, seed=6, families=[chain.FAMILY])
    settle_pass = Counter(q.thought[: q.settled_char].count("answer is") for q in qs)
    assert set(settle_pass) == {1, 2, 3} and min(settle_pass.values()) >= 15, settle_pass
    for q in qs:
        after = q.thought[q.settled_char :]
        assert 3 <= after.count("Yes, the answer is") <= 5  # verification passes after the answer settled
        assert "not" not in after


def test_chain_thoughts_are_long(tok2):
    qs = make_family_questions(600, seed=7, families=[chain.FAMILY])
    tokens = [len(tok2(q.thought, add_special_tokens=False)["input_ids"]) for q in qs]
    assert statistics.median(tokens) >= 600 and max(tokens) <= 2000, (statistics.median(tokens), max(tokens))
    longest = max(len(tok2(full_completion(q), add_special_tokens=False)["input_ids"]) +
                  len(tok2(q.question, add_special_tokens=False)["input_ids"]) for q in qs)
    assert longest + 16 <= tok2.model_max_length  # + chat markers and eos


def test_walk_slips_happen_where_the_walk_goes():
    # 6 points to 1, 9 points to 4: the quick pass at 6 reads 9's arrow and writes "6 to 4"
    arrows = [5, 2, 6, 0, 7, 8, 1, 3, 3, 4]
    q = walk.build_question(arrows, 2, level=1)  # 2 -> 6 -> 1 -> 2
    assert walk.walk_slips(q) == ["six"] and "2: 6 to 4" in q.thought and q.answer == "2"
    assert walk.walk_slips(walk.build_question(arrows, 3, level=1)) == []  # 3 -> 0 -> 5 -> 8 never meets 6
    home = walk.build_question([1, 0, 2, 3, 4, 5, 7, 8, 9, 6], 0, level=2)  # 0 -> 1 -> 0: back home at step 2
    assert walk.walk_slips(home) == ["home"] and "So the answer is 0." in home.thought and home.answer == "1"
    qs = make_family_questions(600, seed=8, families=[walk.FAMILY])
    kinds = Counter(k for q in qs for k in walk.walk_slips(q))
    assert kinds["six"] >= 60 and kinds["home"] >= 60, kinds
    for q in qs:  # each slip shows in the quick pass's own lines: a stop at 6, or an early stop at home
        _, start, n = walk.parse_question(q.question)
        quick = [line.split(": ")[1].split(" to ") for line in q.thought.split("\nSo the answer")[0].split("\n")]
        assert ("six" in walk.walk_slips(q)) == any(a == "6" for a, _ in quick)
        assert ("home" in walk.walk_slips(q)) == (len(quick) < n and quick[-1][1] == str(start))


def test_truncated_completion_answers_the_cut_thoughts_belief():
    q = chain.build_question(1, [("-", 9)], level=1)
    first_pass = 2  # the slipped step and "So the answer is 8."
    assert parse_answer(truncated_completion(q, first_pass)) == "8"
    assert parse_answer(truncated_completion(q, 100)) == q.answer == "2"


def test_v2_tokenizer_merges_what_a_lookup_reads_and_knows_every_family(tok2):
    # an operation with its operand, and a digit with the arrow word after it, are one token each
    assert tok2.tokenize("c - 2: 5 to 3") == ["c", " - 2", ":", " 5 to", " 3"]
    assert tok2.tokenize("Compute 3 * 4 from left to right") == ["Compute", " 3", " * 4", " from", " left", " to",
                                                                 " right"]
    assert tok2.tokenize("Arrows: 0 to 9, 1 to 4") == ["Arrows", ":", " 0 to", " 9", ",", " 1 to", " 4"]
    for q in make_family_questions(300, seed=9):
        ids = tok2(q.question + full_completion(q), add_special_tokens=False)["input_ids"]
        assert tok2.unk_token_id not in ids
        assert tok2.decode(ids) == q.question + full_completion(q)
    assert tok2.tokenize(" 1234") == [" 1", "2", "3", "4"]
    assert build_tokenizer(2).get_vocab() == tok2.get_vocab()
    with pytest.raises(ValueError, match="tokenizer version"):
        build_tokenizer(3)


def test_a_closed_vocabulary_answers_the_families_it_encodes(capsys):
    from adaptive_think.cli import main
    from adaptive_think.commands.demo import demo_questions
    from adaptive_think.tasks.families import families_answered_by

    v1, v2 = build_tokenizer(1), build_tokenizer(2)
    assert families_answered_by(v1) == ["last_digit"] and families_answered_by(v2) == list(FAMILIES)
    # the one-family reasoner's demo keeps that family's own question sequence; v2's mixes every family
    assert [q.question for q in demo_questions(v1, 3, 7)] == [q.question for q in make_questions(3, 7)]
    assert {q.category for q in demo_questions(v2, 6, 7)} == set(FAMILIES)
    assert {q.category for q in demo_questions(v2, 4, 7, ["long_chain"])} == {"long_chain"}
    assert main(["demo", "--model", "bundled-v1", "--families", "walk"]) == 2  # the one-family reasoner never saw a walk
    assert "the bundled reasoner was not trained on that family (it answers last_digit)" in capsys.readouterr().err


@pytest.mark.parametrize("command, floor", [("collect", 512), ("eval", 400)])
def test_the_decode_budget_follows_the_families_so_a_long_thought_is_not_cut(command, floor, tok2):
    from adaptive_think.cli import build_parser
    from adaptive_think.commands.collect import fill_max_new_tokens
    from adaptive_think.tasks.families import MAX_NEW_TOKENS

    required = ["--model", "bundled"] + (["--out", "unused"] if command == "collect" else [])

    def budget(*flags):
        args = build_parser().parse_args([command, *required, *flags])
        fill_max_new_tokens(args, floor)
        return args.max_new_tokens

    assert budget() == floor
    assert budget("--families", "last_digit", "walk") == floor
    assert budget("--families", "last_digit", "long_chain") == MAX_NEW_TOKENS["long_chain"]
    assert budget("--families", "long_chain", "--max-new-tokens", "900") == 900  # given: kept
    # the default holds every long_chain thought of the hardest level, with its answer
    qs = make_family_questions(40, seed=5, families=["long_chain"], levels=[6])
    longest = max(len(tok2(full_completion(q), add_special_tokens=False)["input_ids"]) for q in qs)
    assert longest + 16 < MAX_NEW_TOKENS["long_chain"]


def test_walk_tables_are_listed_in_a_drawn_order_and_parsed_by_digit():
    arrows = [5, 2, 6, 0, 7, 8, 1, 3, 3, 4]
    order = [3, 9, 0, 1, 8, 2, 7, 4, 6, 5]
    q = walk.build_question(arrows, 2, level=1, order=order)
    assert q.question.startswith("Arrows: 3 to 0, 9 to 4, 0 to 5,")
    assert walk.parse_question(q.question) == (arrows, 2, 3)
    assert q.thought == walk.build_question(arrows, 2, level=1).thought  # the order changes the text only
    firsts = {walk.parse_question(q.question)[0] and q.question.split(" to ")[0] for q in
              make_family_questions(60, seed=3, families=[walk.FAMILY])}
    assert len(firsts) == 10  # every digit leads some table
    with pytest.raises(ValueError, match="each digit 0-9 once"):
        walk.build_question(arrows, 2, level=1, order=[0] * 10)
    with pytest.raises(ValueError, match="arrow once"):
        walk.parse_question(q.question.replace("9 to 4", "3 to 4"))


def test_chain_steps_are_listed_in_a_drawn_order_and_parsed_by_label():
    ops = [("+", 4), ("*", 7), ("-", 2), ("+", 9)]
    q = chain.build_question(3, ops, level=1, order=[2, 0, 3, 1])
    assert q.question.split("\n")[1:] == ["c - 2", "a + 4", "d + 9", "b * 7"]
    assert chain.parse_question(q.question) == (3, ops)
    assert q.thought == chain.build_question(3, ops, level=1).thought  # the order changes the text only
    assert q.thought.startswith("a + 4: 3 to 7\nb * 7: 7 to 9")  # the trace still goes in label order
    firsts = {q.question.split("\n")[1][0] for q in make_family_questions(60, seed=3, families=[chain.FAMILY])}
    assert len(firsts) > 5  # many labels lead some list
    with pytest.raises(ValueError, match="each of the 4 steps once"):
        chain.build_question(3, ops, level=1, order=[0, 0, 1, 2])
    with pytest.raises(ValueError, match="twice"):
        chain.parse_question(q.question.replace("d + 9", "a + 9"))
    with pytest.raises(ValueError, match="without a gap"):
        chain.parse_question(q.question.replace("d + 9", "e + 9"))


def test_in_order_lists_tables_by_label_and_draws_no_order():
    # the reasoner's first training stages: the same draws as before tables were shuffled
    for family, parse in ((walk.FAMILY, walk.parse_question), (chain.FAMILY, chain.parse_question)):
        drawn = make_family_questions(12, seed=5, families=[family])
        listed = make_family_questions(12, seed=5, families=[family], in_order=True)
        assert parse(drawn[0].question) == parse(listed[0].question)  # the first question: same content
        assert drawn[0].question != listed[0].question
        assert any(parse(a.question) != parse(b.question) for a, b in zip(drawn, listed))  # then the draws part
    lines = make_family_questions(1, seed=5, families=[chain.FAMILY], in_order=True)[0].question.split("\n")[1:]
    assert [line[0] for line in lines] == list(chain.LABELS[: len(lines)])
    table = make_family_questions(1, seed=5, families=[walk.FAMILY], in_order=True)[0].question
    assert table.startswith("Arrows: 0 to ")
