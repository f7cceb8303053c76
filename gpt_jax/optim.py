"""AdamW with warmup + cosine decay and global-norm clipping (optax)."""

import jax
import ml_collections
import optax


def schedule(optim: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
  """Linear warmup to optim.lr, then cosine decay to lr·min_lr_ratio at `steps`."""
  warmup = min(optim.warmup_steps, max(steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
      decay_steps=max(steps, warmup + 1), end_value=optim.lr * optim.min_lr_ratio)


def decay_mask(params):
  """Weight decay on matrices (`kernel`s) only: not on norms, biases or embeddings."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == 'kernel', params)


def optimizer(optim: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
  adamw = optax.adamw(schedule(optim, steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                      weight_decay=optim.weight_decay, mask=decay_mask)
  if optim.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip), adamw)
  return adamw
