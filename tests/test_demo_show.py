"""`adaptive-think demo --show N` on the bundled reasoner: the thought with the probe's stop and the settled
point marked, and the score plot."""

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


def test_demo_show_marks_the_decision(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "show.png"
    assert main(["demo", "--show", "1", "--n", "2", "--seed", "5", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert SETTLED_MARK.strip() in out and "settled after" in out
    assert STOP_MARK.strip() in out or "SKIPPED" in out or "ended by natural" in out
    assert png.is_file() and png.stat().st_size > 1000
    assert main(["demo", "--show", "2", "--n", "2"]) == 2
    assert "pick a question number from 0 to 1" in capsys.readouterr().err
