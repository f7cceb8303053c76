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

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gpt_jax import model
from gpt_jax.offload import compression
from gpt_jax.offload.disk import DiskStore


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


def to_host_cpu(tree):
  """tree on the host's CPU, to compute there (FlexGen's CPU delegation); on a CPU backend the
  device itself."""
  return jax.device_put(tree, jax.devices('cpu')[0])


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
  """The KV cache of every (layer, batch) of a block, each layer's on its tier, compressed to 4
  bits on every tier when a `codec` is given (offload.compression).

  `load(j, k)` gives batch k's cache of layer j on the device, as a model.Block reads it (the
  flax 'cache' collection), or, with attention_on_host, a host or disk layer's on the host's
  CPU, where its attention runs (`on_host(j)`); `store_step(j, k, cache, slots, start)` keeps
  what a step changed: uncompressed on the device, the whole new cache; else only the new token
  slots (`slots`: cached_key, cached_value and cached_positions at [start, start + L) of axis
  1), compressed if so, written into the device's or host's arrays or in place on disk.
  """

  def __init__(self, tiers: list[str], empty, num_batches: int, store: DiskStore | None,
               codec: compression.CacheCodec | None = None, attention_on_host: bool = False):
    """empty: one batch's empty cache of one layer (numpy; see empty_block_cache)."""
    self.tiers, self.store, self.codec = tiers, store, codec
    self.attention_on_host = attention_on_host
    key = empty['attn']['cached_key']
    self.heads, self.dtype = key.shape[2], key.dtype
    stored = flat(compression.compress_cache(codec, empty) if codec else empty)
    self.caches = {}
    for j, tier in enumerate(tiers):
      for k in range(num_batches):
        if tier == 'device':
          self.caches[j, k] = to_device(nested(stored))
        elif tier == 'host':
          # numpy: slots are written in place; device_put reads it as it is at load time.
          self.caches[j, k] = {name: np.array(value) for name, value in stored.items()}
        else:
          store.write(self._group(j, k), stored)

  def _group(self, j: int, k: int) -> str:
    return f'cache_{j}_{k}'

  def on_host(self, j: int) -> bool:
    """Whether layer j's attention runs on the host, over its cache where it is."""
    return self.attention_on_host and self.tiers[j] != 'device'

  def load(self, j: int, k: int):
    tier = self.tiers[j]
    move = to_host_cpu if self.on_host(j) else to_device
    if tier == 'disk':
      cache = move(nested(self.store.read(self._group(j, k))))
    elif tier == 'host':
      cache = move(nested(self.caches[j, k]))
    else:
      cache = self.caches[j, k]
    if self.codec:
      return compression.decompress_cache(self.codec, cache, self.heads, self.dtype)
    return cache

  def store_step(self, j: int, k: int, cache, slots: dict, start: int) -> None:
    tier = self.tiers[j]
    if tier == 'device' and not self.codec:
      self.caches[j, k] = cache
      return
    slots = {'attn': slots}
    if self.codec:
      slots = compression.compress_cache(self.codec, slots)
    if tier == 'device':
      self.caches[j, k] = _write_slots(self.caches[j, k], slots, start)
      return
    values = flat(slots)
    index = np.asarray(start + next(iter(values.values())).shape[1], np.int32)
    if tier == 'host':
      stored = self.caches[j, k]
      for name, value in values.items():
        stored[name][:, start:start + value.shape[1]] = value
      stored['attn/index'] = index
    else:
      group = self._group(j, k)
      for name, value in values.items():
        self.store.write_slots(group, name, value, start)
      self.store.write_slots(group, 'attn/index', index, None)


@functools.partial(jax.jit, donate_argnums=0)
def _write_slots(cache, slots, start):
  """cache (on the device) with slots written at [start, start + L) of axis 1, index moved."""
  attn = dict(cache['attn'])
  for name, value in slots['attn'].items():
    attn[name] = jax.tree.map(
        lambda a, v: jax.lax.dynamic_update_slice_in_dim(a, v.astype(a.dtype), start, axis=1),
        attn[name], value)
  length = slots['attn']['cached_positions'].shape[1]
  attn['index'] = jnp.asarray(start + length, attn['index'].dtype)
  return {'attn': attn}


def empty_block_cache(block, batch_size: int, length: int, n_embd: int, dtype):
  """An empty cache (numpy) of one model.Block for batch_size rows of `length` slots."""
  shapes = jax.eval_shape(
      lambda: block.init(jax.random.key(0), jnp.zeros((batch_size * length, n_embd), dtype),
                         jnp.zeros((batch_size, length), jnp.int32), None, True, True))['cache']
  return jax.tree.map(np.asarray, model.empty_cache(shapes))
