"""The fixed cost the resolution search reports: the intercept of latency against the pixel count."""

from __future__ import annotations

import pytest

from lpdet.design.flow_latency import fixed_cost_ms, fixed_cost_text


def test_fixed_cost_is_the_intercept_of_latency_against_pixels():
    # 0.8 ms that no input size removes, plus 4e-5 ms per pixel (hand-built: 300 -> 4.4 ms)
    medians = {r: 0.8 + 4e-5 * r * r for r in (300, 256, 224, 192)}
    assert fixed_cost_ms(medians) == pytest.approx(0.8)
    text = fixed_cost_text(medians, 300)
    assert "a = 0.80 ms, 18% of the 300 model's latency" in text and "at 82% of the rate" in text


def test_no_fixed_cost_and_too_few_points():
    assert fixed_cost_ms({300: 4.0, 200: 2.0}) is None and fixed_cost_text({300: 4.0, 200: 2.0}, 300) == ""
    proportional = {r: 5e-5 * r * r for r in (300, 240, 160)}
    assert fixed_cost_ms(proportional) == pytest.approx(0.0, abs=1e-9)
    assert "no fixed cost" in fixed_cost_text({300: 4.5, 240: 2.8, 160: 1.1}, 300)  # super-linear: negative intercept
