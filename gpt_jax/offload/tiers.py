"""Where each layer's weights and KV cache live (the device, host memory or disk), and their moves
to the device and back, as a FlexGen policy places them (offload.policy).

A policy gives fractions; the tiers hold whole layers: of l layers, the first floor(l·f_device)
are on the device, the next floor(l·(f_device + f_host)) − that on the host, the rest on disk, so
no tier holds more than its share (a share with no disk at all goes to the host instead).

The host tier is JAX's 'pinned_host' memory kind, copied to the device's memory with
jax.device_put, on every backend: on a GPU or TPU page-locked host memory the device's DMA engines
read, on a CPU (where both are the same RAM) a copy within it. The disk tier is offload.disk,
read past the page cache.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gpt_jax import model
from gpt_jax.offload.disk import DiskStore

TIERS = ('device', 'host', 'disk')


def layer_tiers(fractions: tuple[float, float, float], n_layer: int) -> list[str]:
  """The tier of each of n_layer layers, from the fractions (device, host, disk)."""
  device = math.floor(n_layer * fractions[0] + 1e-9)
  host = math.floor(n_layer * (fractions[0] + fractions[1]) + 1e-9) - device
  disk = n_layer - device - host
  if disk and fractions[2] < 1e-9:
    host, disk = host + disk, 0
  return ['device'] * device + ['host'] * host + ['disk'] * disk


def _memory(kind: str) -> jax.sharding.Sharding:
  return jax.sharding.SingleDeviceSharding(jax.devices()[0], memory_kind=kind)


def to_host(tree):
  """tree (arrays) in host memory (the 'pinned_host' memory kind)."""
  return jax.device_put(tree, _memory('pinned_host'))


def to_device(tree):
  """tree (numpy or host arrays) in the device's own memory."""
  return jax.device_put(tree, _memory('device'))


def flat(tree) -> dict:
  return {name: np.asarray(value) for name, value in
          traverse_util.flatten_dict(tree, sep='/').items()}


def nested(flat: dict) -> dict:
  return traverse_util.unflatten_dict(flat, sep='/')


class LayerWeights:
  """Each layer's weights on its tier. `load(j)` returns layer j's on the device (a copy, for an
  offloaded layer: the caller drops it after use, so the device holds only what is in flight)."""

  def __init__(self, tiers: list[str], store: DiskStore | None, prefix: str = 'weights'):
    self.tiers, self.store, self.prefix = tiers, store, prefix
    self.resident = {}

  def put(self, j: int, params) -> None:
    """Places layer j's parameters (a tree of arrays) on its tier."""
    tier = self.tiers[j]
    if tier == 'device':
      self.resident[j] = to_device(params)
    elif tier == 'host':
      self.resident[j] = to_host(params)
    else:
      self.store.write(self.group(j), flat(params))

  def group(self, j: int) -> str:
    """The disk store's name for layer j's weights."""
    return f'{self.prefix}_{j}'

  def load(self, j: int):
    if self.tiers[j] == 'disk':
      return to_device(nested(self.store.read(self.group(j))))
    return to_device(self.resident[j])


class LayerCache:
  """The KV cache of every (layer, batch) of a block, each layer's on its tier.

  `load(j, k)` gives batch k's cache of layer j on the device (the flax 'cache' collection of a
  model.Block); `store(j, k, cache, slots, start)` keeps what a step changed: on the device the
  whole new cache, elsewhere only the new token slots (`slots`: cached_key, cached_value and
  cached_positions at [start, start + L) of axis 1), written into host memory or in place on disk.
  """

  def __init__(self, tiers: list[str], empty, num_batches: int, store: DiskStore | None):
    """empty: one batch's empty cache of one layer (model.init_cache's form for a Block)."""
    self.tiers, self.store, self.num_batches = tiers, store, num_batches
    self.caches = {}
    for j, tier in enumerate(tiers):
      for k in range(num_batches):
        if tier == 'device':
          self.caches[j, k] = to_device(empty)
        elif tier == 'host':
          # numpy: slots are written in place; device_put reads it as it is at load time.
          self.caches[j, k] = jax.tree.map(np.array, empty)
        else:
          store.write(self._group(j, k), flat(empty))

  def _group(self, j: int, k: int) -> str:
    return f'cache_{j}_{k}'

  def load(self, j: int, k: int):
    if self.tiers[j] == 'disk':
      return to_device(nested(self.store.read(self._group(j, k))))
    return to_device(self.caches[j, k])

  def store_step(self, j: int, k: int, cache, slots: dict, start: int) -> None:
    tier = self.tiers[j]
    if tier == 'device':
      self.caches[j, k] = cache
      return
    index = int(start) + next(iter(slots.values())).shape[1]
    if tier == 'host':
      attn = self.caches[j, k]['attn']
      for name, value in slots.items():
        value = np.asarray(value)
        attn[name][:, start:start + value.shape[1]] = value
      attn['index'] = np.asarray(index, np.int32)
    else:
      group = self._group(j, k)
      for name, value in slots.items():
        self.store.write_slots(group, f'attn/{name}', np.asarray(value), start)
      self.store.write_slots(group, 'attn/index', np.asarray(index, np.int32), None)


def empty_block_cache(block, batch_size: int, length: int, n_embd: int, dtype):
  """An empty cache (numpy) of one model.Block for batch_size rows of `length` slots."""
  shapes = jax.eval_shape(
      lambda: block.init(jax.random.key(0), jnp.zeros((batch_size * length, n_embd), dtype),
                         jnp.zeros((batch_size, length), jnp.int32), None, True, True))['cache']
  return jax.tree.map(np.asarray, model.empty_cache(shapes))
