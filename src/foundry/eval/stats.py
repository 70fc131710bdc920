"""Small statistics for evaluation tables: means with confidence intervals, standard errors.

Convention: a 95% interval on a mean is the Student-t interval, mean +- t(0.975, n-1) * s / sqrt(n),
with s the sample standard deviation (ddof=1). It assumes the per-item scores are independent draws;
for n = 1 there is no interval (None). Accuracy standard errors follow lm-evaluation-harness
(`mean_stderr`: s / sqrt(n) with ddof=1).
"""

from __future__ import annotations

import math
from typing import Sequence


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict:
    """{"mean", "n", "std", "ci_low", "ci_high", "half_width"}; the interval is None below two values."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return {"mean": None, "n": 0, "std": None, "ci_low": None, "ci_high": None, "half_width": None}
    mean = sum(xs) / n
    if n < 2:
        return {"mean": mean, "n": 1, "std": None, "ci_low": None, "ci_high": None, "half_width": None}
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "n": n, "std": std, "ci_low": mean - half, "ci_high": mean + half, "half_width": half}


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of the mean (ddof=1), as lm-evaluation-harness reports next to acc."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def paired_proportions_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Interval for p_a - p_b from paired 0/1 outcomes: Agresti & Min (2005), "Simple improved confidence
    intervals for comparing matched proportions" (a Wald interval after adding 0.5 to each cell of the 2x2
    table). Unlike the t interval of the differences it does not collapse to a point when every pair
    differs the same way (60 of 60 against 0 of 60)."""
    from scipy.stats import norm

    n10 = sum(1 for x, y in zip(a, b) if x and not y) + 0.5
    n01 = sum(1 for x, y in zip(a, b) if y and not x) + 0.5
    n = len(a) + 2.0  # four cells, 0.5 each
    diff = (n10 - n01) / n
    se = math.sqrt(((n10 + n01) - (n10 - n01) ** 2 / n) / n ** 2)
    z = float(norm.ppf(0.5 + level / 2))
    return max(-1.0, diff - z * se), min(1.0, diff + z * se)

