"""The train state, and where its parts live on a device mesh."""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from gpt_jax import model, sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer steps taken
  params: Any
  opt_state: Any
  rng: jax.Array  # the dropout key of step s is fold_in(rng, s)


def init_state(gpt: model.GPT, tx: optax.GradientTransformation, config) -> TrainState:
  param_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  params = model.init_params(gpt, param_rng, config.seq_len)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=dropout_rng)


def state_shardings(gpt: model.GPT, tx: optax.GradientTransformation, shapes: TrainState,
                    mesh: jax.sharding.Mesh, seq_len: int) -> TrainState:
  """Where each part of the state lives: parameters and their optimizer moments by the logical
  axis rules, step, RNG and optimizer counters replicated."""
  params = sharding.param_shardings(model.logical_axes(gpt, seq_len), shapes.params, mesh)
  replicated = sharding.replicated(mesh)
  opt_state = optax.tree_map_params(tx, lambda _, s: s, shapes.opt_state, params,
                                    transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=params, opt_state=opt_state, rng=replicated)


def abstract_state(gpt: model.GPT, tx: optax.GradientTransformation, config,
                   mesh: jax.sharding.Mesh) -> TrainState:
  """The train state as shapes, dtypes and shardings on `mesh`, allocating nothing."""
  shapes = jax.eval_shape(functools.partial(init_state, gpt, tx, config))
  shardings = state_shardings(gpt, tx, shapes, mesh, config.seq_len)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
                      shardings)
