"""Training losses, computed in float32 whatever the compute dtype."""

import jax
import jax.numpy as jnp


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
