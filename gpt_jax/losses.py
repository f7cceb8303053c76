"""Training losses, computed in float32 whatever the compute dtype."""

import jax
import jax.numpy as jnp

from gpt_jax.errors import UserError


def next_token_loss(logits_BLV, targets_BL, mask_BL, *, z_loss: float = 0.0, normalizer=None):
  """Cross-entropy of the targets, plus PaLM's z-loss z_loss·log(Z)², over unmasked targets.

  The sums are divided by `normalizer` (default: the number of unmasked targets); gradient
  accumulation passes the whole batch's count so microbatch losses add up to the batch mean.
  Returns (loss, {'ce': ..., 'z_loss': ...}) with each term divided the same way.
  """
  logits_BLV = logits_BLV.astype(jnp.float32)
  mask_BL = mask_BL.astype(jnp.float32)
  log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
  target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
  if normalizer is None:
    normalizer = jnp.maximum(mask_BL.sum(), 1.0)
  ce = ((log_z_BL - target_logit_BL) * mask_BL).sum() / normalizer
  zl = z_loss * (jnp.square(log_z_BL) * mask_BL).sum() / normalizer
  return ce + zl, {'ce': ce, 'z_loss': zl}


def distillation_loss(student_logits_BLV, teacher_logits_BLV, targets_BL, mask_BL, *,
                      alpha: float, temperature: float = 1.0, reverse: bool = False,
                      top_k: int = 0, normalizer=None):
  """α·T²·KL(teacher ‖ student) + (1 − α)·CE(targets, student), over unmasked targets.

  The KL is between the temperature-softened distributions softmax(logits / T). Its gradient
  shrinks like 1/T², so the T² factor keeps it the size it has at T = 1 (Hinton et al. 2015) and
  α weighs the two terms the same at any T. reverse=True uses KL(student ‖ teacher) instead.
  top_k > 0 keeps only the teacher's k largest logits, renormalised over them (the student's
  log-probabilities stay over the whole vocabulary); k = vocab is the full loss. The teacher gets
  no gradient. Returns (loss, {'kl': ..., 'ce': ...}), all divided by `normalizer` (default: the
  number of unmasked targets) and computed in float32.
  """
  if reverse and top_k:
    raise UserError('reverse KL needs the whole teacher distribution; set distill.top_k=0 or '
                    'distill.reverse=False')
  mask_BL = mask_BL.astype(jnp.float32)
  if normalizer is None:
    normalizer = jnp.maximum(mask_BL.sum(), 1.0)
  teacher_BLV = jax.lax.stop_gradient(teacher_logits_BLV).astype(jnp.float32) / temperature
  log_student_BLV = jax.nn.log_softmax(student_logits_BLV.astype(jnp.float32) / temperature)
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
