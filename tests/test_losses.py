"""The distillation loss α·T²·KL(teacher ‖ student) + (1 − α)·CE against a numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import losses
from gpt_jax.errors import UserError

B, L, V = 2, 5, 11


def random_case(seed=0):
  rng = np.random.RandomState(seed)
  student = rng.randn(B, L, V).astype(np.float32) * 2
  teacher = rng.randn(B, L, V).astype(np.float32) * 2
  targets = rng.randint(0, V, (B, L)).astype(np.int32)
  mask = (rng.rand(B, L) > 0.3).astype(np.float32)
  return student, teacher, targets, mask


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference(student, teacher, targets, mask, alpha, temperature, reverse=False):
  """The loss written out in numpy, in float64."""
  s, t = student.astype(np.float64), teacher.astype(np.float64)
  log_q, log_p = log_softmax(s / temperature), log_softmax(t / temperature)
  if reverse:
    log_p, log_q = log_q, log_p
  kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
  ce = -np.take_along_axis(log_softmax(s), targets[..., None], -1)[..., 0]
  n = mask.sum()
  return alpha * temperature**2 * (kl * mask).sum() / n + (1 - alpha) * (ce * mask).sum() / n


@pytest.mark.parametrize('alpha, temperature, reverse', [
    (0.5, 1.0, False), (0.3, 2.0, False), (0.9, 4.0, True), (1.0, 0.5, False)])
def test_matches_numpy_reference(alpha, temperature, reverse):
  student, teacher, targets, mask = random_case()
  loss, _ = losses.distillation_loss(student, teacher, targets, mask, alpha=alpha,
                                     temperature=temperature, reverse=reverse)
  np.testing.assert_allclose(loss, reference(student, teacher, targets, mask, alpha, temperature,
                                             reverse), rtol=1e-5)


def test_alpha_zero_is_exactly_the_cross_entropy():
  student, teacher, targets, mask = random_case(1)
  distilled, terms = losses.distillation_loss(student, teacher, targets, mask, alpha=0.0,
                                              temperature=3.0)
  ce, _ = losses.next_token_loss(student, targets, mask)
  assert float(distilled) == float(ce) == float(terms['ce'])


def test_student_equal_to_teacher_has_zero_kl_and_zero_kl_gradient():
  student, _, targets, mask = random_case(2)
  kl_only = lambda s: losses.distillation_loss(s, student, targets, mask, alpha=1.0,
                                               temperature=2.0)[0]
  assert abs(float(kl_only(student))) < 1e-6
  np.testing.assert_allclose(jax.grad(kl_only)(jnp.asarray(student)), 0.0, atol=1e-7)


def test_teacher_gets_no_gradient():
  student, teacher, targets, mask = random_case(3)
  grad = jax.grad(lambda t: losses.distillation_loss(student, t, targets, mask, alpha=0.5)[0])
  np.testing.assert_array_equal(grad(jnp.asarray(teacher)), 0.0)


def test_temperature_squared_keeps_the_gradient_size():
  """At high T, the gradient of T²·KL with respect to the student's logits tends to
  (z_s − z_t)/V for zero-mean logits (Hinton et al.'s logit matching), whatever T is."""
  rng = np.random.RandomState(4)
  zs, zt = rng.randn(1, 1, V), rng.randn(1, 1, V)
  zs, zt = (zs - zs.mean()).astype(np.float32), (zt - zt.mean()).astype(np.float32)
  ones, targets = np.ones((1, 1), np.float32), np.zeros((1, 1), np.int32)
  grad = lambda temperature: np.asarray(jax.grad(lambda s: losses.distillation_loss(
      s, zt, targets, ones, alpha=1.0, temperature=temperature)[0])(jnp.asarray(zs)))
  matching = (zs - zt) / V
  for temperature in (20.0, 40.0):
    np.testing.assert_allclose(grad(temperature), matching, atol=0.03 * np.abs(matching).max())
  # Without the T² factor the gradient would be 4x smaller at 2x the temperature.
  np.testing.assert_allclose(grad(20.0), grad(40.0), rtol=0.05, atol=1e-4)


def test_top_k_with_k_equal_to_vocab_is_the_full_loss():
  student, teacher, targets, mask = random_case(5)
  full, _ = losses.distillation_loss(student, teacher, targets, mask, alpha=0.7, temperature=2.0)
  top_all, _ = losses.distillation_loss(student, teacher, targets, mask, alpha=0.7,
                                        temperature=2.0, top_k=V)
  np.testing.assert_allclose(top_all, full, rtol=1e-6)


def test_top_k_renormalises_over_the_teachers_k_best():
  student, teacher, targets, mask = random_case(6)
  _, terms = losses.distillation_loss(student, teacher, targets, mask, alpha=1.0, top_k=3)
  t, s = teacher.astype(np.float64), log_softmax(student.astype(np.float64))
  index = np.argsort(-t, -1)[..., :3]
  log_p = log_softmax(np.take_along_axis(t, index, -1))
  kl = (np.exp(log_p) * (log_p - np.take_along_axis(s, index, -1))).sum(-1)
  np.testing.assert_allclose(terms['kl'], (kl * mask).sum() / mask.sum(), rtol=1e-5)


def test_reverse_kl_with_top_k_is_refused():
  student, teacher, targets, mask = random_case()
  with pytest.raises(UserError, match='reverse KL needs the whole teacher distribution'):
    losses.distillation_loss(student, teacher, targets, mask, alpha=0.5, reverse=True, top_k=4)
