"""`adaptive-think demo --show N` on the one-family reasoner (bundled-v1): the thought with the probe's stop and the
settled point marked, and the score plot."""

import re

import pytest

from adaptive_think.cli import main
from adaptive_think.commands.show import SETTLED_MARK, STOP_MARK, marked_thought, ready_trace
from tiny import make_tokenizer


def test_marks_land_after_the_right_tokens():
    tok = make_tokenizer()
    ids = tok.encode("so.wait.yes.", add_special_tokens=False)
    assert marked_thought(tok, ids, {2: "|A|", 4: "|B|"}) == "so.|A|wait.|B|yes."
    # step s of the trace reads token s - 1: with the thought starting at generated index 1, token k's score is s = k + 1
    assert ready_trace([0.9, 0.0, 0.1, 0.2, 0.3], body=1, length=3) == [0.1, 0.2, 0.3]


def _shown(capsys) -> tuple[str, str]:
    """(the printed report, the marked thought between its two rules)."""
    out = capsys.readouterr().out
    parts = out.split("-" * 80)
    assert len(parts) == 3, out
    return out, parts[1]


def test_demo_show_marks_the_probe_stop(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "show.png"
    assert main(["demo", "--model", "bundled-v1", "--show", "1", "--n", "2", "--seed", "5", "--png", str(png)]) == 0
    out, thought = _shown(capsys)
    # the shipped probe stops this question's thought mid-way, and the stop is marked where the report says
    ended = re.search(r"thought ended by (\w+) after (\d+) of (\d+) tokens", out)
    assert ended and ended.group(1) == "probe", out
    stop, total = int(ended.group(2)), int(ended.group(3))
    settled = int(re.search(r"settled after (\d+) tokens", out).group(1))
    assert 0 < stop < total and 0 <= settled <= total
    assert thought.count(STOP_MARK) == 1 and thought.count(SETTLED_MARK.strip()) == 1
    at_stop, at_settled = thought.index(STOP_MARK), thought.index(SETTLED_MARK.strip())
    if stop == settled:
        assert STOP_MARK + SETTLED_MARK in thought
    else:
        assert (at_stop < at_settled) == (stop < settled)
    assert png.is_file() and png.stat().st_size > 1000


def test_demo_show_reports_a_skip(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "show.png"
    assert main(["demo", "--model", "bundled-v1", "--show", "0", "--n", "2", "--seed", "5", "--png", str(png)]) == 0
    out, thought = _shown(capsys)
    # the shipped probe skips this question's thinking: no stop to mark, the saved thought shown whole
    assert "the probe SKIPPED thinking" in out and "ended by" not in out
    assert STOP_MARK.strip() not in thought and thought.count(SETTLED_MARK.strip()) == 1


@pytest.mark.parametrize("family, flagged", [("walk", True), ("long_chain", False)])
def test_demo_show_says_when_the_guard_flagged_the_prompt(tmp_path, capsys, family, flagged):
    pytest.importorskip("matplotlib")
    png = tmp_path / "show.png"
    assert main(["demo", "--families", family, "--show", "0", "--n", "1", "--seed", "3", "--png", str(png)]) == 0
    out, _ = _shown(capsys)
    # the shipped probe never saw `walk`: its guard sends the row to full thinking, which never stops early
    assert ("guard flagged this prompt" in out) == flagged
    ended = re.search(r"thought ended by (\w+) after (\d+) of (\d+) tokens", out)
    assert ended.group(1) == ("natural" if flagged else "probe"), out


def test_demo_show_refuses_a_question_out_of_range(capsys):
    assert main(["demo", "--show", "2", "--n", "2"]) == 2
    assert "pick a question number from 0 to 1" in capsys.readouterr().err


def test_demo_marks_the_rows_the_guard_sends_to_full_thinking(capsys):
    """The shipped probe never saw `walk`: the demo marks each row its guard flagged and counts them per family;
    a flagged row thinks as long as full thinking does."""
    from adaptive_think.cli import main

    assert main(["demo", "--families", "walk", "last_digit", "--n", "4", "--seed", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line[:2].strip().isdigit()]
    flagged = [line for line in rows if line.endswith("(guard)")]
    assert len(rows) == 4 and flagged and all(" walk " in line for line in flagged)
    for line in flagged:  # full and adaptive thought lengths agree on a flagged row
        full, adaptive = line.split("|")[1].split()[-1], line.split("|")[2].split()[2]
        assert full == adaptive
    assert f"guard fell back on {len(flagged)}" in out and "(guard): the probe's out-of-distribution guard" in out
