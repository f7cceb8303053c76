"""The device mesh and the one table that maps the model's logical axes onto it.

Mesh axes: `data` (batch only: data parallel), `fsdp` (batch, and the `embed` dimension of every
parameter and its optimizer state: ZeRO-3 / FSDP) and `tensor` (attention heads, MLP hidden and
vocab: Megatron-style tensor parallelism). Every strategy and their mixes come from RULES with
different mesh sizes: `--config.mesh.fsdp=8` is FSDP, `--config.mesh.tensor=2` adds TP.

flax resolves a logical name to the first rule whose mesh axes the array does not use yet, so an
activation (batch, length, embed) puts `fsdp` on the batch and leaves `embed` whole, while a
parameter (embed, mlp) shards `embed` over `fsdp`.
"""

import math
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from gpt_jax.errors import UserError

MESH_AXES = ('data', 'fsdp', 'tensor')

RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('vocab', 'tensor'),
    ('kv', None),
    ('length', None),
    ('layers', None),
)


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """(data, fsdp, tensor) sizes; one size may be -1: the devices the others leave."""
  sizes = [mesh_config[axis] for axis in MESH_AXES]
  described = ', '.join(f'{a}={s}' for a, s in zip(MESH_AXES, sizes))
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise UserError(f'mesh {described}: sizes must be positive, with at most one -1 (the rest of '
                    'the devices); fix --config.mesh')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise UserError(f'mesh {described}: {num_devices} devices do not divide by {known}; '
                      'choose mesh sizes whose product divides the device count')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UserError(f'mesh {described} has {math.prod(sizes)} devices but there are '
                    f'{num_devices}; make the product of --config.mesh sizes {num_devices}')
  return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  shape = mesh_shape(mesh_config, jax.device_count())
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def data_parallel_mesh() -> jax.sharding.Mesh:
  """Every device on the data axis: the mesh for running a finished model (sampling, scoring)."""
  return make_mesh(ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1}))


def single_device_mesh() -> jax.sharding.Mesh:
  """The first device alone: for work that places arrays itself (offloaded generation)."""
  return jax.make_mesh((1,) * len(MESH_AXES), MESH_AXES, devices=jax.devices()[:1],
                       axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_sharding(logical_spec: PartitionSpec, mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(logical_spec), RULES))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sequences split over data × fsdp; each row whole."""
  return logical_sharding(PartitionSpec('batch'), mesh)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_divisible(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """UserErrors for shapes the mesh cannot split evenly, before anything is compiled."""
  tensor, batch_ways = mesh.shape['tensor'], mesh.shape['data'] * mesh.shape['fsdp']
  for key in ('n_head', 'n_kv_head'):
    if config.model[key] % tensor:
      raise UserError(f'model.{key}={config.model[key]} is not divisible by mesh.tensor={tensor}: '
                      'tensor parallelism splits the heads; change one of them')
  micro_batch = config.batch_size // config.grad_accum
  if micro_batch % batch_ways:
    raise UserError(f'batch_size={config.batch_size} / grad_accum={config.grad_accum} = '
                    f'{micro_batch} sequences do not split over mesh data × fsdp = {batch_ways} '
                    'devices; make the (micro)batch a multiple of it')


def param_shardings(logical_specs, abstract_params, mesh: jax.sharding.Mesh):
  """NamedShardings of the parameters; UserError for a dimension the mesh cannot split evenly."""

  def sharding(path, spec, param):
    named = logical_sharding(spec, mesh)
    for dim, axes in zip(param.shape, named.spec):
      ways = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
      if dim % ways:
        raise UserError(f'parameter {jax.tree_util.keystr(path)} of shape {param.shape} cannot be '
                        f'split {ways} ways ({named.spec}); choose model sizes divisible by the '
                        'mesh axes or a smaller mesh')
    return named

  return jax.tree_util.tree_map_with_path(sharding, logical_specs, abstract_params,
                                          is_leaf=lambda x: isinstance(x, PartitionSpec))


def device_memory() -> int:
  """Bytes one device can hold: its reported limit on accelerators; on CPU, the machine's memory
  shared by its CPU devices."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'bytes_limit' in stats:
    return stats['bytes_limit']
  return host_memory() // jax.local_device_count()


def host_memory() -> int:
  """Bytes of this machine's memory (RAM)."""
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def bytes_per_device(abstract_tree, shardings) -> int:
  """Bytes each device holds of a tree of arrays laid out by `shardings` (from shapes only)."""
  total = 0
  for leaf, named in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    shard = named.shard_shape(leaf.shape)
    total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return total
