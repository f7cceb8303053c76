"""AdamW with a learning-rate schedule (warmup + cosine, or warmup-stable-decay) and global-norm
clipping (optax)."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gpt_jax.errors import UserError

SCHEDULES = ('cosine', 'wsd')
DECAY_SHAPES = ('linear', 'sqrt')


def validate(optim: ml_collections.ConfigDict) -> None:
  """Raises UserError for a schedule setting that names nothing or cannot be built."""
  for key, allowed in (('schedule', SCHEDULES), ('decay_shape', DECAY_SHAPES)):
    if optim[key] not in allowed:
      raise UserError(f'optim.{key}={optim[key]!r} is not one of {allowed}; pick one of them')
  if not 0 < optim.decay_fraction <= 1:  # NaN fails too
    raise UserError(f'optim.decay_fraction={optim.decay_fraction} must be in (0, 1]: the fraction '
                    'of the updates that decay the learning rate (wsd)')


def schedule(optim: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
  """The learning rate of update s (0-based, the one that makes step s + 1), a float32 scalar:
  linear warmup to optim.lr over the first warmup_steps updates, then a decay to the floor
  lr·min_lr_ratio at the last update, by optim.schedule:

  - 'cosine': cosine decay over all the updates after warmup (GPT-3, Chinchilla);
  - 'wsd' (warmup-stable-decay: Hu et al. 2024, "MiniCPM: Unveiling the Potential of Small
    Language Models with Scalable Training Strategies"; Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations"): exactly lr until the last
    D = max(1, round(decay_fraction·steps)) updates, which decay it by optim.decay_shape at
    progress p = 1/D, ..., 1: 'linear' lr·(1 − (1 − min_lr_ratio)·p), or 'sqrt', Hägele's
    1 − sqrt cooldown lr·(1 − (1 − min_lr_ratio)·sqrt(p)).

  Update s takes the value an optax schedule starting at 0 has at s + 1: the first update moves
  the parameters (lr/warmup_steps, as nanoGPT's lr·(it + 1)/warmup), warmup reaches lr at update
  warmup_steps − 1, and the last update, steps − 1, has the floor. Warmup is cut short where the
  run has no room for it (before the last update, or before wsd's decay).

  The stable phase of 'wsd' is the same float32 lr bit for bit whatever `steps` is, so a run of
  `steps` updates is the first steps − D updates of any longer run with the same settings: its
  cooldown can branch from that run's checkpoint (checkpoint.branch).
  """
  floor = optim.lr * optim.min_lr_ratio
  if optim.schedule == 'cosine':
    warmup = min(optim.warmup_steps, max(steps - 1, 0))
    warmup_cosine = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1), end_value=floor)
    return lambda step: warmup_cosine(step + 1)
  decay = max(1, round(optim.decay_fraction * steps))
  warmup = min(optim.warmup_steps, steps - decay)
  shape = jnp.sqrt if optim.decay_shape == 'sqrt' else lambda p: p
  # lr·(1 − drop·shape(p)) rather than optax.linear_schedule's (lr − floor)·(1 − p) + floor: at
  # the boundary, p = 0, it is lr exactly, as the stable phase is.
  drop = 1 - optim.min_lr_ratio
  cooldown = lambda t: optim.lr * (1 - drop * shape(jnp.minimum(t / decay, 1)))
  wsd = optax.join_schedules(
      [optax.linear_schedule(0.0, optim.lr, warmup), optax.constant_schedule(optim.lr), cooldown],
      boundaries=[warmup, steps - decay])
  return lambda step: wsd(step + 1)


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
