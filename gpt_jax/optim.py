"""The optimizer (optax): global-norm clipping, then AdamW, or Muon on the hidden matrices with
AdamW on the rest; a learning-rate schedule (warmup + cosine, or warmup-stable-decay)."""

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import PartitionSpec
from optax.contrib import MuonDimensionNumbers

from gpt_jax.errors import UserError

NAMES = ('adamw', 'muon')
SCHEDULES = ('cosine', 'wsd')
DECAY_SHAPES = ('linear', 'sqrt')


def validate(optim: ml_collections.ConfigDict) -> None:
  """Raises UserError for an optimizer or schedule setting that names nothing or cannot be
  built."""
  for key, allowed in (('name', NAMES), ('schedule', SCHEDULES), ('decay_shape', DECAY_SHAPES)):
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


def muon_dimension_numbers(param_axes) -> dict:
  """The parameters Muon orthogonalises, and how, as optax's MuonDimensionNumbers (None for the
  rest, which AdamW updates): the hidden matrices, the Dense kernels that map the residual
  stream (logical axis 'embed') to features or features back to it, their inputs the reduction
  axes and their outputs the output axes, a leading 'layers' axis (model.scan_layers) a batch
  axis. The token embedding, the LM head (an axis 'vocab') and a task's head (an unnamed axis)
  are not hidden matrices (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural
  networks"). `param_axes` is the tree of the parameters' logical axes (PartitionSpec leaves,
  model.logical_axes)."""

  def numbers(path, spec):
    names = tuple(spec)
    if path[-1].key != 'kernel' or 'vocab' in names or None in names:  # None: a task's head
      return None
    first = 1 if names[:1] == ('layers',) else 0
    axes = tuple(range(first, len(names)))
    if names[first] == 'embed':  # embed -> features (query, key, value, fc, gate, up)
      return MuonDimensionNumbers(axes[:1], axes[1:])
    if names[-1] == 'embed':  # features -> embed (out, proj)
      return MuonDimensionNumbers(axes[:-1], axes[-1:])
    return None

  return jax.tree_util.tree_map_with_path(
      numbers, param_axes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def optimizer(optim: ml_collections.ConfigDict, steps: int,
              param_axes=None) -> optax.GradientTransformation:
  """Global-norm clipping (grad_clip > 0), then AdamW; or, for optim.name 'muon', Muon
  (optax.contrib.muon: Nesterov momentum optim.muon_momentum, orthogonalised by 5 Newton-Schulz
  steps, scaled by sqrt(max(1, fan_out/fan_in)), peak learning rate optim.muon_lr, weight decay
  optim.weight_decay) on the hidden matrices of `param_axes` (muon_dimension_numbers; required
  then) and AdamW (Nesterov, at optim.lr, no weight decay) on the rest, both on the schedule's
  shape. The AdamW state has one structure whatever its settings, so a run resumed with other
  optimizer settings (allow_config_changes) still loads."""
  clip = optax.clip_by_global_norm(optim.grad_clip) if optim.grad_clip > 0 else optax.identity()
  if optim.name == 'adamw':
    return optax.chain(clip, optax.adamw(schedule(optim, steps), b1=optim.b1, b2=optim.b2,
                                         eps=optim.eps, weight_decay=optim.weight_decay,
                                         mask=decay_mask))
  if param_axes is None:
    raise ValueError("optim.name='muon' needs the parameters' logical axes (param_axes)")
  muon = ml_collections.ConfigDict({**optim.to_dict(), 'lr': optim.muon_lr})
  return optax.chain(clip, optax.contrib.muon(
      schedule(muon, steps), beta=optim.muon_momentum, eps=optim.eps,
      weight_decay=optim.weight_decay, adam_b1=optim.b1, adam_b2=optim.b2,
      adam_learning_rate=schedule(optim, steps),
      muon_weight_dimension_numbers=muon_dimension_numbers(param_axes)))
