"""eval's summaries per task family: per-category rows, the guard's fallback rate, each family's oracle share and
the printed per-category table (evaluation/report.py)."""

from __future__ import annotations

from adaptive_think.evaluation.report import format_levels, oracle_shares, oracle_shares_by_category, summarise


def _rows(thinks, category, correct=True, fallback=None):
    extra = {} if fallback is None else {"guard_fallback": fallback}
    return [dict(level=1, category=category, correct=correct, think=t, forward=t + 5, skipped=t == 0, **extra)
            for t in thinks]


def test_summaries_split_by_category_and_count_guard_fallbacks():
    one = summarise(_rows([10, 20], "walk"), 0.0)
    assert "per_category" not in one and "guard_fallback_rate" not in one  # one category: nothing to split
    rows = _rows([10, 30], "walk", fallback=True) + _rows([0, 40, 20], "long_chain", fallback=False)
    s = summarise(rows, 0.0)
    assert s["guard_fallback_rate"] == 2 / 5 and s["per_category"]["walk"]["guard_fallback_rate"] == 1.0
    assert s["per_category"]["long_chain"] == {"n": 3, "accuracy": 1.0, "think_tokens_mean": 20.0,
                                               "forward_tokens_mean": 25.0, "skip_rate": 1 / 3,
                                               "guard_fallback_rate": 0.0}


def test_summaries_count_each_route_group_per_category():
    rows = [dict(r, route_group=g) for r, g in zip(_rows([10, 30], "walk"), ["last_digit", "long_chain"])]
    rows += [dict(r, route_group="long_chain") for r in _rows([40, 20, 30], "long_chain")]
    s = summarise(rows, 0.0)
    assert s["route_groups"] == {"last_digit": 0.2, "long_chain": 0.8}
    assert s["per_category"]["walk"]["route_groups"] == {"last_digit": 0.5, "long_chain": 0.5}
    assert "route_groups" not in summarise(_rows([10], "walk"), 0.0)  # no route, no field


def test_oracle_share_per_family_and_the_table():
    results = {
        "full": summarise(_rows([100, 100], "walk") + _rows([400, 400], "long_chain"), 0.0),
        "oracle": summarise(_rows([20, 20], "walk") + _rows([100, 100], "long_chain"), 0.0),
        "effort:high": summarise(_rows([100, 100], "walk", fallback=True)
                                 + _rows([160, 160], "long_chain", fallback=False), 0.0),
        "effort:high+noguard": summarise(_rows([40, 40], "walk") + _rows([160, 160], "long_chain"), 0.0),
        "budget:50": summarise(_rows([50, 50], "walk") + _rows([50, 50], "long_chain"), 0.0),
    }
    by_family = oracle_shares_by_category(results)
    assert by_family["long_chain"] == {"effort:high": 0.8, "effort:high+noguard": 0.8}
    assert by_family["walk"] == {"effort:high": 0.0, "effort:high+noguard": 0.75}
    assert oracle_shares(results)["effort:high"] == (250 - 130) / (250 - 60)
    table = format_levels(results, ["full", "effort:high", "effort:high+noguard"], by="category").splitlines()
    assert table[0].split() == ["per", "category", "long_chain", "acc/think/skip/guard", "walk", "acc/think/skip/guard"]
    assert table[2].replace(" ", "") == "effort:high1.000/160.0/0.00/0.001.000/100.0/0.00/1.00"
    assert table[3].replace(" ", "") == "effort:high+noguard1.000/160.0/0.00/-1.000/40.0/0.00/-"
    assert format_levels(results, ["full"], by="nothing") == ""
