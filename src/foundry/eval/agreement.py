"""Agreement between raters: Krippendorff's alpha (nominal, ordinal, interval) from a coincidence matrix.

Krippendorff, K. (2011). "Computing Krippendorff's Alpha-Reliability", Departmental Papers (ASC) 43,
University of Pennsylvania: alpha = 1 - D_o / D_e, with
- o_ck = sum over units u with m_u >= 2 values of (number of ordered c-k value pairs in u) / (m_u - 1),
  the coincidence matrix; n_c = sum_k o_ck, n = sum_c n_c (only pairable values count);
- D_o = sum_ck o_ck * delta2_ck / n and D_e = sum_ck n_c * n_k * delta2_ck / (n * (n - 1));
- delta2 (the metric): nominal 0/1; interval (c - k)^2; ordinal
  (sum_{g between c and k} n_g - (n_c + n_k) / 2)^2, which uses the ranks that the observed values
  take, not their distances.
Units rated by fewer than two raters carry no information on agreement and are left out. alpha = 1 is
perfect agreement, 0 is what chance gives, below 0 is systematic disagreement; it is None when there is
nothing to compare (fewer than two pairable values, or a single value throughout, D_e = 0).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Iterable, Mapping

METRICS = ("nominal", "ordinal", "interval")


def coincidences(units: Mapping[Hashable, Iterable[float]]) -> dict[tuple[float, float], float]:
    """The coincidence matrix o_ck (as a sparse dict) of the pairable values in `units`."""
    o: dict[tuple[float, float], float] = defaultdict(float)
    for values in units.values():
        vs = [v for v in values if v is not None]
        m = len(vs)
        if m < 2:
            continue
        for i, c in enumerate(vs):
            for j, k in enumerate(vs):
                if i != j:
                    o[(c, k)] += 1.0 / (m - 1)
    return dict(o)


def krippendorff_alpha(units: Mapping[Hashable, Iterable[float]], metric: str = "ordinal") -> float | None:
    """Krippendorff's alpha of `units` ({unit: the values its raters gave; None = not rated})."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    o = coincidences(units)
    n_c: dict[float, float] = defaultdict(float)
    for (c, _k), w in o.items():
        n_c[c] += w
    n = sum(n_c.values())
    values = sorted(n_c)
    if n < 2 or len(values) < 2:
        return None
    rank = {v: i for i, v in enumerate(values)}
    cumulative = [0.0]
    for v in values:
        cumulative.append(cumulative[-1] + n_c[v])

    def delta2(c: float, k: float) -> float:
        if metric == "nominal":
            return float(c != k)
        if metric == "interval":
            return (c - k) ** 2
        lo, hi = sorted((rank[c], rank[k]))
        return (cumulative[hi + 1] - cumulative[lo] - (n_c[c] + n_c[k]) / 2) ** 2

    observed = sum(w * delta2(c, k) for (c, k), w in o.items())
    expected = sum(n_c[c] * n_c[k] * delta2(c, k) for c in values for k in values)
    if expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def pairable_values(units: Mapping[Hashable, Iterable[float]]) -> int:
    """How many values sit in units with at least two (the n of alpha)."""
    counts = [sum(v is not None for v in values) for values in units.values()]
    return sum(c for c in counts if c >= 2)
