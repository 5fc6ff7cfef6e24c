"""The statistics of the latency harness, on synthetic samples (no timing: deterministic on any CPU)."""

import math

import numpy as np
import pytest

from lpdet.deploy.latency_stats import (Interval, StopRule, cycle_means, median_interval, ratio_interval,
                                        separation, stop_reason)


def _ranks_by_brute_force(n, confidence=0.95):
    """Independent reference: the widest symmetric (j, n-j+1) whose exact binomial coverage
    1 - 2 P(B <= j-1) still reaches `confidence`, by summing math.comb."""
    best = 0
    for j in range(1, n // 2 + 1):
        tail = sum(math.comb(n, i) for i in range(j)) / 2 ** n
        if 1 - 2 * tail >= confidence:
            best = j
    return best


@pytest.mark.parametrize("n", [6, 7, 10, 25, 50, 100, 333])
def test_interval_ranks_match_the_exact_binomial(n):
    x = np.arange(1.0, n + 1)  # sorted samples equal their ranks
    iv = median_interval(x[::-1])  # order of the input does not matter
    j = _ranks_by_brute_force(n)
    assert (iv.low, iv.high) == (float(j), float(n - j + 1))
    assert iv.value == pytest.approx(np.median(x)) and iv.samples == n


def test_known_ranks_for_100_samples():
    # textbook value: the 95% interval of the median of 100 samples is x(40)..x(61)
    iv = median_interval(np.arange(1.0, 101))
    assert (iv.low, iv.high) == (40.0, 61.0)


def test_too_few_samples_give_no_interval():
    iv = median_interval([3.0, 1.0, 2.0, 4.0, 5.0])  # 5 samples cannot reach 95% (coverage 1 - 2/32)
    assert iv.low is None and iv.half_width == math.inf and iv.value == 3.0
    assert "no CI, n=5" in iv.text()
    with pytest.raises(ValueError):
        median_interval([])


def test_coverage_on_a_skewed_distribution():
    """Lognormal with known median 1: the interval covers it in at least ~95% of seeded trials."""
    rng = np.random.default_rng(0)
    hits = sum(median_interval(rng.lognormal(0.0, 0.5, 40)).contains(1.0) for _ in range(2000))
    assert 0.94 <= hits / 2000 <= 0.99  # exact coverage for n=40 is 0.9615


def test_paired_ratio_cancels_drift():
    drift = np.linspace(1.0, 3.0, 60)  # the machine slows down 3x during the measurement
    a = 10.0 * drift
    b = 7.0 * drift * (1 + 0.001 * np.sin(np.arange(60)))
    ratio = ratio_interval(b, a)
    assert ratio.value == pytest.approx(0.7, rel=2e-3) and ratio.half_width < 0.002
    assert median_interval(a).half_width > 0.1  # while each median alone is all over the place
    with pytest.raises(ValueError, match="not paired"):
        ratio_interval(a, a[:-1])


def test_cycle_means_group_complete_passes():
    times = [1, 5, 3, 10, 50, 30, 7]  # two complete cycles of 3, then a partial one (dropped)
    assert cycle_means(times, 3).tolist() == [3.0, 30.0]
    assert cycle_means([1, 2, 6, 3], 2).tolist() == [1.5, 4.5]
    assert cycle_means(times, 1).tolist() == [float(t) for t in times]
    assert cycle_means([1, 2], 3).tolist() == [1.0, 2.0]  # not one complete cycle: the runs themselves


def _noisy(rng, n, scale, spread):
    return scale * (1 + spread * rng.standard_normal(n))


def test_stop_rule_precise_only_after_min_rounds():
    rule = StopRule(target=0.03, min_rounds=20, time_cap_s=100)
    rng = np.random.default_rng(1)
    tight = [_noisy(rng, 30, 5.0, 0.005), _noisy(rng, 30, 4.0, 0.005)]
    assert stop_reason([t[:10] for t in tight], 10, 1.0, rule) is None  # too early
    assert stop_reason(tight, 30, 1.0, rule) == "precise"


def test_stop_rule_goes_on_while_noisy_until_the_time_cap():
    rule = StopRule(target=0.03, min_rounds=20, time_cap_s=100)
    rng = np.random.default_rng(2)
    noisy = [_noisy(rng, 40, 5.0, 0.4), _noisy(rng, 40, 4.0, 0.4)]
    assert stop_reason(noisy, 40, 99.0, rule) is None
    assert stop_reason(noisy, 40, 100.0, rule) == "time cap"
    assert stop_reason([noisy[0][:5]], 5, 100.0, rule) == "time cap"  # the cap holds before min_rounds too
    capped = StopRule(min_rounds=20, max_rounds=40, time_cap_s=100)
    assert stop_reason(noisy, 40, 1.0, capped) == "max rounds"
    assert stop_reason(noisy, 7, 1e9, StopRule.fixed(7)) == "fixed rounds"


def test_stop_rule_needs_the_ratios_tight_too():
    """Two medians each within ±3% whose paired ratio is not: keep going."""
    rule = StopRule(target=0.03, min_rounds=10, time_cap_s=100)
    n = 400
    rng = np.random.default_rng(3)
    a = _noisy(rng, n, 5.0, 0.15)  # independent noise: the ratio's spread is wider than each median's
    b = _noisy(rng, n, 5.0, 0.15)
    assert median_interval(a).half_width <= 0.03 and median_interval(b).half_width <= 0.03
    assert ratio_interval(b, a).half_width > 0.03
    assert stop_reason([a, b], n, 1.0, rule) is None


def test_stop_rule_on_cycles():
    """Images with different costs (1 and 3 ms, alternating) but no noise: each cycle's mean is the same."""
    times = np.tile([1.0, 3.0, 3.0], 12)
    rule = StopRule(min_rounds=18, time_cap_s=100)
    assert stop_reason([times], 36, 1.0, rule, cycle=3) == "precise"


def test_bad_rules():
    with pytest.raises(ValueError):
        StopRule(target=0)
    with pytest.raises(ValueError):
        StopRule(min_rounds=10, max_rounds=5)


def test_separation_says_when_noise_hides_the_difference():
    rng = np.random.default_rng(4)
    base = _noisy(rng, 60, 5.0, 0.02)
    faster = base * 0.8 * (1 + 0.01 * rng.standard_normal(60))
    s = separation([base, faster], 0, 1)
    assert s.separated and s.faster == 1 and s.ratio.value == pytest.approx(0.8, rel=0.02)
    same = base * (1 + 0.2 * rng.standard_normal(60))
    s = separation([base, same], 0, 1)
    assert not s.separated and s.faster is None and s.ratio.contains(1.0)
    few = separation([base[:4], faster[:4]], 0, 1)  # no interval: never claimed separated
    assert not few.separated


def test_interval_text_and_width():
    iv = Interval(4.0, 3.9, 4.2)
    assert iv.text() == "4.00 [3.90, 4.20]" and iv.half_width == pytest.approx(0.05)


def test_stop_rule_uses_each_models_own_baseline():
    rng = np.random.default_rng(5)
    a, a_int8 = _noisy(rng, 100, 5.0, 0.005), _noisy(rng, 100, 2.5, 0.005)
    b = _noisy(rng, 100, 9.0, 0.3)  # a noisy model, paired with itself
    rule = StopRule(min_rounds=10, time_cap_s=100)
    assert stop_reason([a, a_int8, b], 100, 1.0, rule, baseline=[0, 0, 2]) is None  # b's own median is wide
    assert stop_reason([a, a_int8], 100, 1.0, rule, baseline=[0, 0]) == "precise"
