"""Strata of calibration questions: the groups in each of which a rung's Learn-then-Test must pass.

    --strata none        one stratum: the calibration questions as drawn (the promise holds for that mix)
    --strata level       the question's `level` (the bundled task's 1-6; a question file's "level")
    --strata category    the question's `category` (a question file's "category")
    --strata length:K    K quantile bins of the full thought's length; the cut points come from the training and
                         validation questions, never from the calibration ones

With strata, a threshold pair is accepted only if its test passes in every stratum (calibrate.py). Why that is
valid and why every stratum tests at the same delta (no union bound over strata):

- The claim for one rung under one decoding is about the one pair the walk keeps: with probability >= 1 - delta,
  its loss is at most epsilon in EVERY stratum at once. Its null hypothesis at a pair is "some stratum loses more
  than epsilon", a union of the per-stratum nulls; rejecting it when every stratum's test rejects its own null
  at level delta is an intersection-union test (Berger 1982), itself of level delta: if stratum s truly loses
  more than epsilon, the pair passes only if s's test rejects wrongly, which happens with probability <= delta.
  No split of delta is needed because there is one claim to make, not one per stratum; Bonferroni is needed
  across rungs and decodings because each of those keeps its own pair.
- The fixed-sequence walk stays valid with these p-values (the largest of the strata's): the first pair on the
  path where some stratum loses more than epsilon is fixed before the calibration questions are seen (the path
  and the strata's definitions come from other questions), and the walk keeps a bad pair only by passing it.
- Conditionally on which stratum each calibration question falls in, the questions of a stratum are independent
  draws from that stratum's distribution, so each stratum's binomial test is exact given its count. Which strata
  are large enough to be tested (below) depends on those counts only, never on the outcomes.
- Loss at most epsilon in every stratum means loss at most epsilon for ANY mix of them: a mix's loss is the
  weighted mean of the strata's. Thresholds stay global (per route group with --route); nothing changes at inference time.

A stratum too small to be tested alone at a rung's epsilon (fewer questions than a loss-free pair needs, see
calibrate.min_questions) is reported and tested together with the other too-small ones as one group: the
promise then covers those strata only at their calibration mix. (Given the strata's counts, that group's
losses are a sum of binomials of different rates, whose lower tail is no heavier than the binomial's of the same
mean at counts at least one below that mean (Hoeffding 1956): where a test at a small delta rejects, but for
edge cases of a few expected losses.) Where even that group is too small, it is left out of the test and
recorded as not covered. Either way the log and the probe's calibration record say so.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

STRATA_BY = ("none", "level", "category", "length")
SPEC_HELP = "none | level | category | length:K"


@dataclass(frozen=True)
class Strata:
    """How calibration questions are grouped; `cuts` (length bins) are set by `fit`."""

    by: str = "none"
    bins: int = 0  # length:K
    cuts: tuple[int, ...] | None = None  # length bin edges (bin j: cuts[j-1] <= length < cuts[j]); None: not fitted

    @property
    def spec(self) -> str:
        return f"length:{self.bins}" if self.by == "length" else self.by

    def to_dict(self) -> dict:
        out = {"by": self.by, "spec": self.spec}
        if self.by == "length":
            out["cuts"] = list(self.cuts or ())
        return out

    def fit(self, path_qs: list[dict]) -> "Strata":
        """Length bins: cut points at the K-quantiles of the full thought's length of `path_qs` (the training and
        validation questions); equal cut points merge (fewer bins). Other strata, or length bins already placed: unchanged."""
        if self.by != "length" or self.cuts is not None:
            return self
        lengths = sorted(q["length"] for q in path_qs)
        if not lengths:
            raise ValueError("--strata length:K needs training or validation questions to place its cut points.")
        n = len(lengths)
        cuts = sorted({lengths[min(n - 1, round(i * n / self.bins))] for i in range(1, self.bins)} - {lengths[0]})
        return Strata(self.by, self.bins, tuple(cuts))

    def label(self, q: dict) -> str:
        """The stratum of one question (calibrate.questions_of's dict)."""
        if self.by == "none":
            return "all"
        if self.by == "level":
            return f"level {q['level']}"
        if self.by == "category":
            return f"category {q['category']}"
        if not self.cuts:
            return "all"
        j = bisect_right(self.cuts, q["length"])
        lo = self.cuts[j - 1] if j > 0 else 0
        hi = self.cuts[j] if j < len(self.cuts) else "inf"
        return f"length bin {j + 1} [{lo}, {hi})"

    def check(self, qs: list[dict]) -> None:
        """Fail clearly when the calibration questions do not carry what these strata read."""
        if self.by == "level" and qs and all(not q.get("level") for q in qs):
            raise ValueError("--strata level: the calibration questions carry no level (every one is 0; a question "
                             'file needs a "level" field per line). Use --strata length:4 or --strata none.')
        if self.by == "category":
            missing = sum(q.get("category") in (None, "") for q in qs)
            if missing:
                raise ValueError(f"--strata category: {missing} of {len(qs)} calibration questions carry no category "
                                 '(a question file needs a "category" field per line, and collections made before '
                                 "categories were recorded have none: collect again). Use --strata level, length:4 or "
                                 "none.")


def natural_order(labels) -> list[str]:
    """Labels sorted with their numbers read as numbers ("level 2" before "level 10")."""
    return sorted(labels, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])


def parse_strata(spec) -> Strata:
    """"none" | "level" | "category" | "length:K" (K >= 2) -> Strata; a Strata passes through."""
    if isinstance(spec, Strata):
        return spec
    text = str(spec if spec is not None else "none")
    by, _, k = text.partition(":")
    if by not in STRATA_BY or (by == "length") != bool(k):
        raise ValueError(f"--strata {text!r} is not one of {SPEC_HELP} (e.g. --strata level, --strata length:4).")
    if by != "length":
        return Strata(by)
    try:
        bins = int(k)
    except ValueError:
        bins = 0
    if bins < 2:
        raise ValueError(f"--strata {text!r}: K must be a whole number >= 2 (the number of length bins).")
    return Strata(by, bins)


def strata_from_record(d: dict | None) -> Strata:
    """A Strata back from its `to_dict` (cut points included); None or {}: none."""
    if not d:
        return Strata()
    s = parse_strata(d.get("spec", d.get("by", "none")))
    if s.by == "length" and "cuts" not in d:  # a routed probe's bins, placed per group (its `by_group`)
        return Strata()
    return Strata(s.by, s.bins, tuple(int(c) for c in d.get("cuts", ())) if s.by == "length" else None)
