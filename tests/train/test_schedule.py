import math

import pytest

from lpdet.train.schedule import lr_at


def test_warmup_rises_linearly_to_base_lr():
    lrs = [lr_at(s, base_lr=0.1, total_steps=100, warmup_steps=10) for s in range(10)]
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[4] == pytest.approx(0.05)
    assert lrs[9] == pytest.approx(0.1)


def test_cosine_decays_from_base_to_floor():
    kwargs = dict(base_lr=0.1, total_steps=110, warmup_steps=10, min_lr_ratio=0.01)
    assert lr_at(10, **kwargs) == pytest.approx(0.1)
    # halfway through the cosine: mean of peak and floor
    assert lr_at(60, **kwargs) == pytest.approx((0.1 + 0.001) / 2)
    assert lr_at(110, **kwargs) == pytest.approx(0.001)
    values = [lr_at(s, **kwargs) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warm_restarts_jump_back_to_peak_each_period():
    kwargs = dict(base_lr=1.0, total_steps=100, warmup_steps=0, restart_steps=20)
    assert lr_at(0, **kwargs) == pytest.approx(1.0)
    assert lr_at(19, **kwargs) < 0.05
    assert lr_at(20, **kwargs) == pytest.approx(1.0)
    assert lr_at(30, **kwargs) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
