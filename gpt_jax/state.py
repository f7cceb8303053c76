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


def state_shardings(param_axes, shapes: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
  """Where each part of the state lives: parameters and their optimizer moments by the logical
  axis rules, step, RNG and optimizer counters replicated. A moment is the optimizer state's
  leaf whose key path ends in a parameter's path, with its shape: read so rather than with
  optax.tree_map_params, which cannot follow the parameter-dependent partition of
  optax.contrib.muon."""
  params = sharding.param_shardings(param_axes, shapes.params, mesh)
  replicated = sharding.replicated(mesh)
  by_path = {path: (leaf.shape, params_sharding) for (path, leaf), params_sharding in zip(
      jax.tree_util.tree_flatten_with_path(shapes.params)[0], jax.tree.leaves(params))}

  def moment_sharding(path, leaf):
    for start in range(len(path)):
      shape, found = by_path.get(tuple(path[start:]), (None, None))
      if found is not None and shape == leaf.shape:
        return found
    return replicated

  opt_state = jax.tree_util.tree_map_with_path(moment_sharding, shapes.opt_state)
  return TrainState(step=replicated, params=params, opt_state=opt_state, rng=replicated)


def abstract_state(init_params, param_axes, tx: optax.GradientTransformation, seed: int,
                   mesh: jax.sharding.Mesh) -> TrainState:
  """The train state as shapes, dtypes and shardings on `mesh`, allocating nothing."""
  shapes = jax.eval_shape(functools.partial(init_state, init_params, tx, seed))
  shardings = state_shardings(param_axes, shapes, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
                      shardings)


def abstract_params(init_params, param_axes, mesh: jax.sharding.Mesh):
  """The parameters alone as shapes, dtypes and shardings on `mesh` (to restore them)."""
  shapes = jax.eval_shape(init_params, jax.random.PRNGKey(0))
  shardings = sharding.param_shardings(param_axes, shapes, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
                      shardings)
