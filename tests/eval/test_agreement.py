"""Krippendorff's alpha against the published example and hand-computed cases."""

import pytest

from foundry.eval.agreement import coincidences, krippendorff_alpha, pairable_values

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four observers, twelve
# units, values 1..5, None = missing. Published: nominal 0.743, ordinal 0.815, interval 0.849.
OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
UNITS = {u: [obs[u] for obs in OBSERVERS] for u in range(12)}


@pytest.mark.parametrize("metric, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorffs_published_example(metric, published):
    assert krippendorff_alpha(UNITS, metric) == pytest.approx(published, abs=5e-4)


def test_coincidence_matrix_of_the_example():
    o = coincidences(UNITS)
    # Unit 12 has one value and is not pairable: n = 40 of the 41 values.
    assert pairable_values(UNITS) == 40 and sum(o.values()) == pytest.approx(40)
    # The paper's matrix: n_1 = 9, n_2 = 13, n_3 = 10, n_4 = 5, n_5 = 3; o_11 = 7, o_12 = 4/3.
    n = {c: sum(w for (a, _), w in o.items() if a == c) for c in range(1, 6)}
    assert n == pytest.approx({1: 9, 2: 13, 3: 10, 4: 5, 5: 3})
    assert o[(1, 1)] == pytest.approx(7) and o[(1, 2)] == pytest.approx(4 / 3)


def test_hand_computed_two_raters():
    # Two raters, three units: (1, 1), (2, 3), (3, 3). Values 1: 2, 2: 1, 3: 3, n = 6.
    # o_11 = 2, o_23 = o_32 = 1, o_33 = 2. Ordinal: delta(2,3) = (n2 + n3 - (n2 + n3)/2)^2 = 2^2 = 4;
    # delta(1,2) = (1.5)^2 = 2.25; delta(1,3) = (2 + 1 + 3 - 2.5)^2 = 12.25.
    # D_o * n = 2 * 4 = 8; sum n_c n_k delta = 2 * (2*1*2.25 + 2*3*12.25 + 1*3*4) = 2 * 90 = 180.
    # alpha = 1 - (n - 1) * 8 / 180 = 1 - 40 / 180.
    units = {"a": [1, 1], "b": [2, 3], "c": [3, 3]}
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(1 - 40 / 180)
    assert krippendorff_alpha({"a": [1, 1], "b": [4, 4]}) == 1.0  # perfect agreement
    assert krippendorff_alpha({"a": [1, 5], "b": [5, 1]}) < 0  # systematic disagreement
    assert krippendorff_alpha({"a": [3, 3], "b": [3, 3]}) is None  # one value: no variation to agree on
    assert krippendorff_alpha({"a": [3], "b": [4]}) is None  # nobody rated the same unit twice
