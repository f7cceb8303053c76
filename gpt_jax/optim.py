"""AdamW with warmup + cosine decay and global-norm clipping (optax)."""

import jax
import ml_collections
import optax


def schedule(optim: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
  """The learning rate of update s (0-based, the one that makes step s + 1): linear warmup to
  optim.lr over the first warmup_steps updates, then cosine decay to lr·min_lr_ratio at the last.

  Update s takes the value optax's warmup-cosine schedule has at s + 1, where that schedule
  starts at 0: the first update moves the parameters (lr/warmup_steps, as nanoGPT's
  lr·(it + 1)/warmup), warmup reaches lr at update warmup_steps − 1, and the last update,
  steps − 1, has the floor.
  """
  warmup = min(optim.warmup_steps, max(steps - 1, 0))
  warmup_cosine = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
      decay_steps=max(steps, warmup + 1), end_value=optim.lr * optim.min_lr_ratio)
  return lambda step: warmup_cosine(step + 1)


def decay_mask(params):
  """Weight decay on matrices (`kernel`s) only: not on norms, biases or embeddings."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == 'kernel', params)


def optimizer(optim: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
  """Global-norm clipping (grad_clip > 0), then AdamW. Its state has one structure whatever the
  settings, so a run resumed with other optimizer settings (allow_config_changes) still loads."""
  clip = optax.clip_by_global_norm(optim.grad_clip) if optim.grad_clip > 0 else optax.identity()
  return optax.chain(clip, optax.adamw(schedule(optim, steps), b1=optim.b1, b2=optim.b2,
                                       eps=optim.eps, weight_decay=optim.weight_decay,
                                       mask=decay_mask))
