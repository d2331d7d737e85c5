"""Bootstrap intervals against slow and exact references, and their basic guarantees."""

import itertools

import numpy as np
import pytest

from enclip.errors import EnclipError
from enclip.eval.bootstrap import Estimate, bootstrap_ci, paired_bootstrap_diff


def _hits(n: int, p: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(np.float64)


def _linear_quantile(sorted_values: list[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    below = int(np.floor(position))
    above = min(below + 1, len(sorted_values) - 1)
    return sorted_values[below] + (position - below) * (sorted_values[above] - sorted_values[below])


def test_interval_contains_the_mean_and_reports_n():
    values = _hits(500, 0.4, seed=1)
    estimate = bootstrap_ci(values)
    assert estimate.mean == pytest.approx(values.mean())
    assert estimate.low < estimate.mean < estimate.high
    assert estimate.n == 500


def test_interval_narrows_as_queries_grow():
    small = bootstrap_ci(_hits(250, 0.4, seed=2))
    large = bootstrap_ci(_hits(4000, 0.4, seed=3))
    # Width scales like 1/sqrt(n): 16x the queries should give about a quarter of the width.
    assert (large.high - large.low) < 0.5 * (small.high - small.low)


def test_deterministic_for_a_seed_and_seed_dependent():
    values = _hits(300, 0.3, seed=4)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)


def test_constant_values_give_a_zero_width_interval():
    estimate = bootstrap_ci(np.full(100, 0.25))
    assert estimate.low == estimate.high == pytest.approx(0.25)
    assert estimate.mean == pytest.approx(0.25)


def test_matches_a_slow_loop_reference():
    values = np.array([0.0, 1.0, 0.5, 0.2, 1.0, 0.0, 0.7])
    n_resamples, seed = 50, 3
    # Same stream as the implementation: one (n_resamples, n) index draw from default_rng(seed).
    indices = np.random.default_rng(seed).integers(0, len(values), size=(n_resamples, len(values)))
    means = sorted(sum(values[i] for i in row) / len(row) for row in indices)
    estimate = bootstrap_ci(values, n_resamples=n_resamples, confidence=0.9, seed=seed)
    assert estimate.low == pytest.approx(_linear_quantile(means, 0.05))
    assert estimate.high == pytest.approx(_linear_quantile(means, 0.95))


def test_converges_to_the_exact_bootstrap_distribution():
    values = np.array([0.0, 1.0, 2.0, 10.0])
    # Exact bootstrap: all 4**4 index tuples are equally likely.
    exact = np.sort([values[list(t)].mean() for t in itertools.product(range(4), repeat=4)])
    cdf = np.arange(1, exact.size + 1) / exact.size
    exact_low, exact_high = exact[np.searchsorted(cdf, 0.025)], exact[np.searchsorted(cdf, 0.975)]
    estimate = bootstrap_ci(values, n_resamples=20000, seed=0)
    assert estimate.low == pytest.approx(exact_low)
    assert estimate.high == pytest.approx(exact_high)


def test_inputs_are_not_mutated_and_lists_are_accepted():
    values = _hits(50, 0.5, seed=5)
    before = values.copy()
    bootstrap_ci(values)
    paired_bootstrap_diff(values, values[::-1])
    assert np.array_equal(values, before)
    assert bootstrap_ci(list(values)) == bootstrap_ci(values)


def test_paired_difference_matches_a_slow_loop_reference():
    a = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    b = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    indices = np.random.default_rng(11).integers(0, 6, size=(40, 6))
    diffs = sorted(np.mean([a[i] for i in row]) - np.mean([b[i] for i in row]) for row in indices)
    estimate = paired_bootstrap_diff(a, b, n_resamples=40, seed=11)
    assert estimate.mean == pytest.approx(1 / 6)
    assert estimate.low == pytest.approx(_linear_quantile(diffs, 0.025))
    assert estimate.high == pytest.approx(_linear_quantile(diffs, 0.975))


def test_pairing_cancels_shared_query_difficulty():
    rng = np.random.default_rng(6)
    b = _hits(1000, 0.5, seed=7)
    a = b.copy()
    flipped = rng.choice(1000, size=40, replace=False)  # a differs from b on 4% of queries
    a[flipped] = 1.0 - a[flipped]
    paired = paired_bootstrap_diff(a, b)
    unpaired_width = (bootstrap_ci(a).high - bootstrap_ci(a).low) + (bootstrap_ci(b).high - bootstrap_ci(b).low)
    assert paired.mean == pytest.approx(a.mean() - b.mean())
    assert (paired.high - paired.low) < 0.3 * unpaired_width


def test_identical_systems_differ_by_exactly_zero():
    values = _hits(200, 0.4, seed=8)
    assert paired_bootstrap_diff(values, values.copy()) == Estimate(mean=0.0, low=0.0, high=0.0, n=200)


def test_estimate_formats_and_serialises():
    estimate = Estimate(mean=0.4123, low=0.39812, high=0.4266, n=4443)
    assert str(estimate) == "0.412 [0.398, 0.427]"
    assert estimate.to_dict() == {"mean": 0.4123, "low": 0.39812, "high": 0.4266, "n": 4443}


def test_bad_inputs_raise_enclip_error():
    with pytest.raises(EnclipError, match="non-empty"):
        bootstrap_ci(np.array([]))
    with pytest.raises(EnclipError, match="1-D"):
        bootstrap_ci(np.ones((3, 3)))
    with pytest.raises(EnclipError, match="NaN"):
        bootstrap_ci(np.array([0.1, np.nan]))
    with pytest.raises(EnclipError, match="confidence"):
        bootstrap_ci(np.ones(5), confidence=95)
    with pytest.raises(EnclipError, match="n_resamples"):
        bootstrap_ci(np.ones(5), n_resamples=0)
    with pytest.raises(EnclipError, match="one value per query"):
        paired_bootstrap_diff(np.ones(5), np.ones(6))
