"""The train state, and where its parts live on a device mesh.

The trained parameters are whatever the objective trains (the model's, or the model's and a task
head's): the functions here take its `init_params(rng)` and their logical axis names.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from gpt_jax import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer steps taken
  params: Any
  opt_state: Any
  rng: jax.Array  # the dropout key of step s is fold_in(rng, s)


def init_state(init_params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  param_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(param_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=dropout_rng)


def state_shardings(param_axes, tx: optax.GradientTransformation, shapes: TrainState,
                    mesh: jax.sharding.Mesh) -> TrainState:
  """Where each part of the state lives: parameters and their optimizer moments by the logical
  axis rules, step, RNG and optimizer counters replicated."""
  params = sharding.param_shardings(param_axes, shapes.params, mesh)
  replicated = sharding.replicated(mesh)
  opt_state = optax.tree_map_params(tx, lambda _, s: s, shapes.opt_state, params,
                                    transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=params, opt_state=opt_state, rng=replicated)


def abstract_state(init_params, param_axes, tx: optax.GradientTransformation, seed: int,
                   mesh: jax.sharding.Mesh) -> TrainState:
  """The train state as shapes, dtypes and shardings on `mesh`, allocating nothing."""
  shapes = jax.eval_shape(functools.partial(init_state, init_params, tx, seed))
  shardings = state_shardings(param_axes, tx, shapes, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
                      shardings)


def abstract_params(init_params, param_axes, mesh: jax.sharding.Mesh):
  """The parameters alone as shapes, dtypes and shardings on `mesh` (to restore them)."""
  shapes = jax.eval_shape(init_params, jax.random.PRNGKey(0))
  shardings = sharding.param_shardings(param_axes, shapes, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
                      shardings)
