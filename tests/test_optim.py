"""The learning-rate schedules: warmup-stable-decay values, its exact stable phase, bad settings."""

import numpy as np
import pytest

from gpt_jax import config, optim
from gpt_jax.errors import UserError


def wsd(**settings):
  o = config.base_config().optim
  o.update(lr=1e-3, warmup_steps=2, min_lr_ratio=0.1, schedule='wsd', decay_fraction=0.4)
  o.update(**settings)
  return o


@pytest.mark.parametrize('shape, cooldown', [
    ('linear', [0.775, 0.55, 0.325, 0.1]),  # 1 − 0.9·p, p = 1/4, 2/4, 3/4, 1
    ('sqrt', [0.55, 0.3636039, 0.2205771, 0.1]),  # 1 − 0.9·sqrt(p)
])
def test_wsd_warms_up_holds_then_decays_the_last_fraction(shape, cooldown):
  lr = optim.schedule(wsd(decay_shape=shape), 10)  # 4 decay updates: 6, 7, 8, 9
  expected = 1e-3 * np.array([0.5, 1, 1, 1, 1, 1, *cooldown])
  np.testing.assert_allclose([lr(s) for s in range(10)], expected, rtol=1e-6)


def test_wsd_stable_phase_is_lr_exactly_whatever_the_length():
  o = wsd(lr=3e-3)
  short, long = optim.schedule(o, 10), optim.schedule(o, 100)
  for lr in (short, long):
    np.testing.assert_array_equal([lr(s) for s in range(1, 6)], np.float32(3e-3))
  np.testing.assert_array_equal([short(s) for s in range(6)], [long(s) for s in range(6)])
  assert long(6) == long(59) == np.float32(3e-3) > long(60)  # 40 decay updates: 60 to 99


def test_wsd_decays_at_least_the_last_update():
  lr = optim.schedule(wsd(decay_fraction=0.1, warmup_steps=0), 3)  # round(0.3) = 0 -> 1
  np.testing.assert_allclose([lr(0), lr(1), lr(2)], [1e-3, 1e-3, 1e-4], rtol=1e-6)


@pytest.mark.parametrize('settings, message', [
    ({'decay_fraction': 0.0}, r'optim.decay_fraction=0.0 must be in \(0, 1\]'),
    ({'decay_fraction': 1.5}, r'optim.decay_fraction=1.5 must be in \(0, 1\]'),
    ({'decay_fraction': float('nan')}, r'optim.decay_fraction=nan must be in \(0, 1\]'),
    ({'schedule': 'linear'}, r"optim.schedule='linear' is not one of \('cosine', 'wsd'\)"),
    ({'decay_shape': 'cosine'}, r"optim.decay_shape='cosine' is not one of \('linear', 'sqrt'\)"),
])
def test_bad_schedule_settings(settings, message):
  with pytest.raises(UserError, match=message):
    optim.validate(wsd(**settings))
