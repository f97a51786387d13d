"""scripts/transfer_table.py: each probe's rung per task family, read back from eval JSON files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from adaptive_think.evaluation.report import oracle_shares_by_category, summarise

_SPEC = importlib.util.spec_from_file_location(
    "transfer_table", Path(__file__).resolve().parents[1] / "scripts" / "transfer_table.py")
transfer_table = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(transfer_table)


def _rows(thinks, family, right=2, fallback=None):
    extra = {} if fallback is None else {"guard_fallback": fallback}
    return [dict(level=1, category=family, correct=i < right, think=t, forward=t, skipped=False, **extra)
            for i, t in enumerate(thinks)]


def _payload(probe, high):
    policies = {"full": summarise(_rows([100, 100, 100, 100], "walk") + _rows([400, 400], "long_chain"), 0),
                "oracle": summarise(_rows([20, 20, 20, 20], "walk") + _rows([100, 100], "long_chain"), 0),
                "effort:high": summarise(high, 0)}
    return {"probe": probe, "policies": policies, "oracle_share_per_category": oracle_shares_by_category(policies)}


def test_one_row_per_probe_one_column_per_family(tmp_path, capsys):
    a = _payload("probe-long_chain", _rows([50, 50, 50, 50], "walk", right=1, fallback=False)
                 + _rows([160, 160], "long_chain", fallback=False))
    b = _payload("probe-walk", _rows([60, 60, 60, 60], "walk") + _rows([400, 400], "long_chain", fallback=True))
    paths = []
    for i, p in enumerate((a, b)):
        paths.append(tmp_path / f"e{i}.json")
        paths[-1].write_text(json.dumps(p))
    out = tmp_path / "t.json"
    assert transfer_table.main([str(p) for p in paths] + ["--out", str(out)]) == 0
    table = json.loads(out.read_text())["table"]
    assert table["probe-long_chain"]["walk"]["accuracy_points_lost"] == 25.0
    assert table["probe-long_chain"]["long_chain"]["oracle_share"] == 0.8
    assert table["probe-walk"]["walk"]["think_saved"] == 0.4 and table["probe-walk"]["walk"]["oracle_share"] == 0.5
    assert table["probe-walk"]["long_chain"]["guard_fallback_rate"] == 1.0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| probe (effort:high) | long_chain | walk |"
    assert lines[2] == "| probe-long_chain | 0.0 pts lost, 60% saved, 80% of oracle, fell back 0% | " \
                       "25.0 pts lost, 50% saved, 62% of oracle, fell back 0% |"
    with pytest.raises(SystemExit, match="no 'effort:low' run"):
        transfer_table.main([str(paths[0]), "--rung", "effort:low"])
