"""The spread of a number over training seeds: mean and a 95% Student-t interval.

Generative models trained from different seeds differ by more than most of the differences people
report between them, so every table that puts runs side by side (`genlab report`, sweep results,
the benchmarks' pages) shows mean ± the interval's half-width over seeds, says "1 seed" where there
is only one, and marks two numbers whose intervals overlap as within noise of each other.
"""

from __future__ import annotations

import math

from scipy import stats

CONFIDENCE = 0.95


def interval(values: list[float], confidence: float = CONFIDENCE) -> dict:
    """Mean, sample standard deviation and the two-sided Student-t confidence interval of the mean
    of ``values`` (``half_width`` = t_{(1+c)/2, n-1} * s / sqrt(n)); with one value the interval is
    unknown (``half_width`` None)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("an interval of no values")
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "std": None, "half_width": None, "low": None, "high": None, "n": 1,
                "confidence": confidence}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "half_width": half, "low": mean - half, "high": mean + half, "n": n,
            "confidence": confidence}


def overlaps(a: dict, b: dict) -> bool | None:
    """Whether two intervals overlap (a difference within noise); None when either has one seed."""
    if a["half_width"] is None or b["half_width"] is None:
        return None
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def format_interval(spread: dict, digits: int = 4) -> str:
    """"71.0 ± 3.2 (3 seeds, 95% t)" or "71.0 (1 seed)"."""
    mean = f"{spread['mean']:.{digits}g}"
    if spread["half_width"] is None:
        return f"{mean} (1 seed)"
    return f"{mean} ± {spread['half_width']:.2g} ({spread['n']} seeds, {spread['confidence']:.0%} t)"


def rank_within_noise(spreads: dict[str, dict], higher_is_better: bool = False) -> tuple[str | None, dict[str, str]]:
    """The best entry by mean, and for each other entry whether it is within noise of the best
    ("within noise", "worse", or "1 seed: no interval")."""
    if not spreads:
        return None, {}
    best = (max if higher_is_better else min)(spreads, key=lambda k: spreads[k]["mean"])
    marks = {}
    for name, spread in spreads.items():
        if name == best:
            marks[name] = "best"
            continue
        overlap = overlaps(spread, spreads[best])
        marks[name] = "1 seed: no interval" if overlap is None else "within noise" if overlap else "worse"
    return best, marks


def ranks_with_ties(spreads: dict[str, dict], higher_is_better: bool = False) -> dict[str, int]:
    """A leaderboard's ranks: 1 + the number of entries clearly better than this one, where clearly
    better means a better mean with intervals that do not overlap. Entries within noise of each
    other therefore share a rank unless a third separates them; an entry with one seed (no
    interval) is ranked by its mean alone."""
    def better(a: dict, b: dict) -> bool:
        ahead = a["mean"] > b["mean"] if higher_is_better else a["mean"] < b["mean"]
        overlap = overlaps(a, b)
        return ahead and not overlap if overlap is not None else ahead

    return {name: 1 + sum(better(other, spread) for key, other in spreads.items() if key != name)
            for name, spread in spreads.items()}
