"""The optimizer: the learning-rate schedules (warmup-stable-decay values, its exact stable
phase, bad settings) and Muon (which parameters, its orthogonalised update, a few steps)."""

import jax
import numpy as np
import pytest
from optax.contrib import MuonDimensionNumbers

from gpt_jax import config, model, network, optim, trainer
from gpt_jax.errors import UserError
from gpt_jax.objectives import lm


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
    ({'name': 'sgd'}, r"optim.name='sgd' is not one of \('adamw', 'muon'\)"),
])
def test_bad_schedule_settings(settings, message):
  with pytest.raises(UserError, match=message):
    optim.validate(wsd(**settings))


# --- Muon ---------------------------------------------------------------------------------------


def logical_axes(**model_settings):
  c = config.base_config()
  c.model.update(vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=16, block_size=8)
  c.model.update(model_settings)
  gpt = network.build(c.model)
  return c, gpt, model.logical_axes(gpt, 8)


def flat(tree):
  return {jax.tree_util.keystr(path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None or isinstance(
              x, MuonDimensionNumbers))[0]}


def test_muon_takes_the_hidden_matrices_with_their_input_and_output_axes():
  _, _, axes = logical_axes()
  numbers = {k: tuple(v) for k, v in flat(optim.muon_dimension_numbers(axes)).items() if v}
  per_layer = {"['attn']['query']['kernel']": ((0,), (1, 2)),  # (D, H, E): D -> H·E
               "['attn']['key']['kernel']": ((0,), (1, 2)),
               "['attn']['value']['kernel']": ((0,), (1, 2)),
               "['attn']['out']['kernel']": ((0, 1), (2,)),  # (H, E, D): H·E -> D
               "['mlp']['fc']['kernel']": ((0,), (1,)), "['mlp']['proj']['kernel']": ((0,), (1,))}
  assert numbers == {f"['h_{i}']{k}": v for i in (0, 1) for k, v in per_layer.items()}
  _, _, scanned = logical_axes(scan_layers=True, tie_embeddings=False, mlp='swiglu')
  numbers = {k: tuple(v) for k, v in flat(optim.muon_dimension_numbers(scanned)).items() if v}
  assert numbers["['layers']['attn']['out']['kernel']"] == ((1, 2), (3,))  # axis 0: the layers
  assert numbers["['layers']['mlp']['gate']['kernel']"] == ((1,), (2,))
  assert "['lm_head']['kernel']" not in numbers and "['wte']['embedding']" not in numbers


def newton_schulz(g: np.ndarray, steps: int = 5) -> np.ndarray:
  """Muon's quintic Newton-Schulz iteration (Jordan et al. 2024), in float64 numpy."""
  a, b, c = 3.4445, -4.7750, 2.0315
  x = g / (np.linalg.norm(g) + 1e-8)
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  for _ in range(steps):
    s = x @ x.T
    x = a * x + (b * s + c * s @ s) @ x
  return x.T if tall else x


def test_the_first_muon_update_of_a_kernel_is_its_orthogonalised_gradient():
  """With zero momentum, Nesterov gives (1 + β)·g, which Newton-Schulz normalises away: the
  update is −muon_lr · sqrt(max(1, fan_out/fan_in)) · NS(g), g the kernel's gradient as the
  (inputs × outputs) matrix, here of the attention output (H, E, D) and the MLP's fc (D, F)."""
  c, gpt, axes = logical_axes()
  c.optim.update(name='muon', muon_lr=0.05, weight_decay=0.0, grad_clip=0.0, warmup_steps=0,
                 schedule='wsd')
  params = model.init_params(gpt, jax.random.PRNGKey(0), 8)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  tx = optim.optimizer(c.optim, 100, axes)
  updates, _ = tx.update(grads, tx.init(params), params)
  for layer, fan_in in ((('attn', 'out'), 16), (('mlp', 'fc'), 16)):
    g = np.asarray(grads['h_0'][layer[0]][layer[1]]['kernel'], np.float64)
    matrix = g.reshape(fan_in, -1)
    want = -0.05 * max(1, (matrix.shape[1] / fan_in)) ** 0.5 * newton_schulz(matrix)
    got = np.asarray(updates['h_0'][layer[0]][layer[1]]['kernel']).reshape(fan_in, -1)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-5)


def test_muon_steps_lower_the_loss_of_a_small_model():
  c, gpt, axes = logical_axes()
  c.optim.update(name='muon', lr=1e-2, muon_lr=0.05, warmup_steps=2)
  objective = lm.LanguageModeling.without_data(c)
  tx = optim.optimizer(c.optim, 30, axes)
  state = jax.jit(lambda: trainer.new_state(objective, tx, c))()
  step = jax.jit(trainer.make_train_step(objective, tx, c))
  batch = {'tokens': jax.random.randint(jax.random.PRNGKey(2), (4, 9), 0, 64)}
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.5 * losses[0]


def test_muon_needs_the_logical_axes():
  o = config.base_config().optim
  o.name = 'muon'
  with pytest.raises(ValueError, match="optim.name='muon' needs the parameters' logical axes"):
    optim.optimizer(o, 10)
