"""Training losses, computed in float32 whatever the compute dtype."""

import functools
import math

import jax
import jax.numpy as jnp

from gpt_jax import layers
from gpt_jax.errors import UserError

# The logit given to ids that are not tokens: finite, so 0·(log p − log q) terms stay 0, not NaN.
MASKED_LOGIT = -1e30


def mask_padded_vocab(logits, num_tokens: int | None, axis: int = -1):
  """Logits with every id >= num_tokens along `axis` (the vocabulary axis, of size V) set to
  MASKED_LOGIT, so they get probability 0; same shape and dtype.

  A model's vocabulary may be padded beyond its tokenizer's (vocab_size a multiple of 64 or 128
  for fast matmuls, as in nanoGPT's 50304 for GPT-2's 50257): those ids are not tokens, so they
  are never sampled, never trained towards and never part of a scored distribution.
  num_tokens = None or >= V leaves the logits unchanged.
  """
  V = logits.shape[axis]
  if num_tokens is None or num_tokens >= V:
    return logits
  shape = [1] * logits.ndim
  shape[axis] = V
  is_token = (jnp.arange(V) < num_tokens).reshape(shape)
  return jnp.where(is_token, logits, MASKED_LOGIT).astype(logits.dtype)


def token_nll(logits_BLV, targets_BL, num_tokens: int | None = None, *, with_log_z: bool = False):
  """The cross-entropy of each target, −log softmax(logits)[target] in nats, float32 (B, L): the
  one per-position loss that training, validation and gpt_jax.scoring all use. The softmax is
  over the first `num_tokens` ids (mask_padded_vocab). with_log_z=True also returns the log
  normaliser log Z (B, L), for the z-loss."""
  logits_BLV = mask_padded_vocab(logits_BLV.astype(jnp.float32), num_tokens)
  log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  nll_BL = log_z_BL - target_logit_BL
  return (nll_BL, log_z_BL) if with_log_z else nll_BL


def next_token_loss(logits_BLV, targets_BL, mask_BL, *, z_loss: float = 0.0, normalizer=None,
                    num_tokens: int | None = None):
  """Cross-entropy of the targets (token_nll), plus PaLM's z-loss z_loss·log(Z)², over unmasked
  targets.

  The sums are divided by `normalizer` (default: the number of unmasked targets); gradient
  accumulation passes the whole batch's count so microbatch losses add up to the batch mean.
  Returns (loss, {'ce': ..., 'z_loss': ...}) with each term divided the same way.
  """
  nll_BL, log_z_BL = token_nll(logits_BLV, targets_BL, num_tokens, with_log_z=True)
  mask_BL = mask_BL.astype(jnp.float32)
  if normalizer is None:
    normalizer = jnp.maximum(mask_BL.sum(), 1.0)
  ce = (nll_BL * mask_BL).sum() / normalizer
  zl = z_loss * (jnp.square(log_z_BL) * mask_BL).sum() / normalizer
  return ce + zl, {'ce': ce, 'z_loss': zl}


def distillation_loss(student_logits_BLV, teacher_logits_BLV, targets_BL, mask_BL, *,
                      alpha: float, temperature: float = 1.0, reverse: bool = False,
                      top_k: int = 0, normalizer=None, num_tokens: int | None = None):
  """α·T²·KL(teacher ‖ student) + (1 − α)·CE(targets, student), over unmasked targets.

  The KL is between the temperature-softened distributions softmax(logits / T). Its gradient
  shrinks like 1/T², so the T² factor keeps it the size it has at T = 1 (Hinton et al. 2015) and
  α weighs the two terms the same at any T. reverse=True uses KL(student ‖ teacher) instead.
  top_k > 0 keeps only the teacher's k largest logits, renormalised over them (the student's
  log-probabilities stay over the whole vocabulary); k = vocab is the full loss. Both
  distributions are over the first `num_tokens` ids (mask_padded_vocab). The teacher gets
  no gradient. Returns (loss, {'kl': ..., 'ce': ...}), all divided by `normalizer` (default: the
  number of unmasked targets) and computed in float32.
  """
  if reverse and top_k:
    raise UserError('reverse KL needs the whole teacher distribution; set distill.top_k=0 or '
                    'distill.reverse=False')
  mask_BL = mask_BL.astype(jnp.float32)
  if normalizer is None:
    normalizer = jnp.maximum(mask_BL.sum(), 1.0)
  student_logits_BLV = mask_padded_vocab(student_logits_BLV.astype(jnp.float32), num_tokens)
  teacher_BLV = mask_padded_vocab(
      jax.lax.stop_gradient(teacher_logits_BLV).astype(jnp.float32), num_tokens) / temperature
  log_student_BLV = jax.nn.log_softmax(student_logits_BLV / temperature)
  if top_k:
    teacher_BLK, index_BLK = jax.lax.top_k(teacher_BLV, top_k)
    log_teacher_BLK = jax.nn.log_softmax(teacher_BLK)
    log_student_BLK = jnp.take_along_axis(log_student_BLV, index_BLK, axis=-1)
    kl_BL = (jnp.exp(log_teacher_BLK) * (log_teacher_BLK - log_student_BLK)).sum(-1)
  else:
    log_teacher_BLV = jax.nn.log_softmax(teacher_BLV)
    p, log_p, log_q = ((jnp.exp(log_student_BLV), log_student_BLV, log_teacher_BLV) if reverse
                       else (jnp.exp(log_teacher_BLV), log_teacher_BLV, log_student_BLV))
    kl_BL = (p * (log_p - log_q)).sum(-1)
  kl = (kl_BL * mask_BL).sum() / normalizer
  _, terms = next_token_loss(student_logits_BLV, targets_BL, mask_BL, normalizer=normalizer)
  loss = alpha * temperature**2 * kl + (1 - alpha) * terms['ce']
  return loss, {'kl': kl, 'ce': terms['ce']}


def _head_ce_chunks(x_ND, w_VD, targets_N, weights_N, z_loss, softcap, chunk, num_tokens,
                    with_grads):
  """Scans row chunks: per chunk the (soft-capped) logits, their log-normaliser, the weighted terms
  and, with with_grads, the gradients of Σ weights·(ce + z_loss·log(Z)²) for x and w, in their
  dtypes."""
  N, D = x_ND.shape
  V = w_VD.shape[0]
  split = lambda a: a.reshape(N // chunk, chunk, *a.shape[1:])

  # Logits are computed transposed, (V, n): XLA:CPU's matmuls with the long vocabulary axis
  # as the output's rows run 1.5-2x faster than with it as the columns.
  w_DV = w_VD.T

  def body(dw_VD, xs):
    x_nD, t_n, m_n = xs
    capped_Vn = layers.soft_cap(jnp.dot(w_VD, x_nD.T, preferred_element_type=jnp.float32),
                                softcap)
    logits_Vn = mask_padded_vocab(capped_Vn, num_tokens, axis=0)
    lse_n = jax.nn.logsumexp(logits_Vn, axis=0)
    target_n = jnp.take_along_axis(logits_Vn, t_n[None, :], axis=0)[0]
    sums = jnp.stack([((lse_n - target_n) * m_n).sum(), (jnp.square(lse_n) * m_n).sum()])
    if not with_grads:
      return dw_VD, (sums, None)
    # d/dlogits of ce + z·lse² is softmax·(1 + 2z·lse) - onehot(target).
    probs_Vn = jnp.exp(logits_Vn - lse_n) * (1 + 2 * z_loss * lse_n)
    onehot_Vn = jnp.arange(V)[:, None] == t_n
    g_Vn = (probs_Vn - onehot_Vn) * m_n
    if softcap:  # through cap·tanh(l / cap)
      g_Vn = g_Vn * (1 - jnp.square(capped_Vn / softcap))
    g_Vn = g_Vn.astype(x_nD.dtype)
    dx_nD = jnp.dot(w_DV, g_Vn, preferred_element_type=jnp.float32).T
    return dw_VD + jnp.dot(g_Vn, x_nD, preferred_element_type=jnp.float32), (sums, dx_nD)

  dw_VD, (sums, dx) = jax.lax.scan(body, jnp.zeros((V, D), jnp.float32),
                                   (split(x_ND), split(targets_N), split(weights_N)))
  sums = sums.sum(0)
  if not with_grads:
    return sums[0], sums[1], None, None
  # A custom VJP's cotangents must have its primals' dtypes (bfloat16 parameters, activations).
  return sums[0], sums[1], dx.reshape(N, D).astype(x_ND.dtype), dw_VD.astype(w_VD.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _head_ce(x_ND, w_VD, targets_N, weights_N, z_loss, softcap, chunk, num_tokens):
  ce, z, _, _ = _head_ce_chunks(x_ND, w_VD, targets_N, weights_N, z_loss, softcap, chunk,
                                num_tokens, False)
  return ce + z_loss * z, ce, z


def _head_ce_fwd(x_ND, w_VD, targets_N, weights_N, z_loss, softcap, chunk, num_tokens):
  # The gradients come out of the same pass over the logits, so no (N, V) array is kept for the
  # backward pass; they are scaled by the cotangent there.
  ce, z, dx_ND, dw_VD = _head_ce_chunks(x_ND, w_VD, targets_N, weights_N, z_loss, softcap,
                                        chunk, num_tokens, True)
  return (ce + z_loss * z, ce, z), (dx_ND, dw_VD, targets_N, weights_N)


def _head_ce_bwd(z_loss, softcap, chunk, num_tokens, residuals, cotangents):
  dx_ND, dw_VD, targets_N, weights_N = residuals
  g = cotangents[0]  # only the total is differentiable; ce and z are for logging
  return ((g * dx_ND).astype(dx_ND.dtype), (g * dw_VD).astype(dw_VD.dtype), None, None)


_head_ce.defvjp(_head_ce_fwd, _head_ce_bwd)


def head_next_token_loss(x_ND, w_VD, targets_BL, mask_BL, *, z_loss: float = 0.0,
                         logit_softcap: float = 0.0, normalizer=None, chunk: int = 512,
                         num_tokens: int | None = None):
  """next_token_loss of logits soft_cap(x_ND · w_VDᵀ, logit_softcap) (layers.soft_cap; the
  model's config.logit_softcap) without materialising them: the rows go through in chunks of
  `chunk`, each chunk's logits live only inside the pass that also computes the gradients (a
  fused linear cross-entropy). x_ND are the final hidden states of the B·L targets in order; w_VD
  the output head (the tied embedding). Same value and gradients as next_token_loss of those
  logits, in the dtypes of x_ND and w_VD."""
  mask_N = mask_BL.reshape(-1).astype(jnp.float32)
  if normalizer is None:
    normalizer = jnp.maximum(mask_N.sum(), 1.0)
  N = x_ND.shape[0]
  chunk = math.gcd(N, chunk)
  total, ce, z = _head_ce(x_ND, w_VD.astype(x_ND.dtype), targets_BL.reshape(-1), mask_N,
                          float(z_loss), float(logit_softcap), chunk, num_tokens)
  ce, z = jax.lax.stop_gradient(ce), jax.lax.stop_gradient(z)
  return total / normalizer, {'ce': ce / normalizer, 'z_loss': z_loss * z / normalizer}
