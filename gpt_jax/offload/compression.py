"""FlexGen's 4-bit compression (Sheng et al. 2023, §5) of the weights and the KV cache.

Weights: int4 with a zero point in groups of 64 inputs (WEIGHTS: min/max per group, FlexGen's
numerics), through gpt_jax.quant, so the model multiplies them as any quantized run (weight-only:
dequantized before each matmul).

KV cache: each group of `group`
consecutive features of one token's keys (or values), K·E features in all, is stored as 4-bit
codes q = round((x − min)/scale), scale = (max − min)/15, with its min and scale in bfloat16, and
decompressed, x ≈ q·scale + min, before attention reads it. 0.5 + 4/group bytes per value (0.5625
at FlexGen's group of 64) instead of 4 (float32) or 2 (bfloat16). The codes are packed two per
byte as gpt_jax.quant packs its int4 weights (quant.pack).

A compressed cache holds, in place of cached_key and cached_value (B, S, K, E), a dict each of
codes (B, S, K·E/2) uint8 and min, scale (B, S, K·E/group) bfloat16; positions and the write
index are as they were.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections

from gpt_jax import quant
from gpt_jax.model import head_size
from gpt_jax.errors import UserError

COMPRESSED = ('cached_key', 'cached_value')
WEIGHTS = quant.QuantSpec('int4', 64, True, 'none', False)


def quantized_config(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.model with its Dense kernels in WEIGHTS' format (UserError if already quantized)."""
  if quant.spec(model):
    raise UserError(f'the model is already quantized ({model.quant.format}); compress its '
                    'cache only, or start from the float run')
  out = model.copy_and_resolve_references()
  out.quant.update(format=WEIGHTS.format, group_size=WEIGHTS.group_size, zero_point=True,
                   activations=WEIGHTS.activations, embeddings=WEIGHTS.embeddings)
  return out


def quantize_layer(layer: dict, model: ml_collections.ConfigDict) -> dict:
  """One block's float parameters (model: config.model) in WEIGHTS' format, as
  quant.quantize_params gives them for a whole model."""
  one = model.copy_and_resolve_references()
  one.n_layer, one.scan_layers = 1, False
  return quant.quantize_params({'h_0': layer}, one, WEIGHTS)['h_0']


def cache_codec(model: ml_collections.ConfigDict, group: int = 64) -> 'CacheCodec':
  """The codec of a model's cache: groups of `group` features, or of the largest divisor of
  K·E below it."""
  return CacheCodec(math.gcd(group, model.n_kv_head * head_size(model)))


@dataclasses.dataclass(frozen=True)
class CacheCodec:
  """4-bit compression of a cache of K key/value heads of E features, in groups of `group`
  features (a divisor of K·E)."""
  group: int

  @property
  def bytes_per_value(self) -> float:
    return 0.5 + 4 / self.group  # a nibble, and a bfloat16 min and scale per group

  def compress(self, x_BSKE) -> dict:
    B, S, K, E = x_BSKE.shape
    x_BSGg = x_BSKE.astype(jnp.float32).reshape(B, S, K * E // self.group, self.group)
    low_BSG = jnp.min(x_BSGg, axis=-1).astype(jnp.bfloat16)
    scale_BSG = ((jnp.max(x_BSGg, axis=-1) - low_BSG) / 15).astype(jnp.bfloat16)
    # A constant group (scale 0, e.g. an empty slot) is its min exactly, with codes 0.
    safe_BSG = jnp.where(scale_BSG == 0, 1, scale_BSG).astype(jnp.float32)
    codes = jnp.round((x_BSGg - low_BSG[..., None].astype(jnp.float32)) / safe_BSG[..., None])
    codes_BSF = jnp.clip(codes, 0, 15).astype(jnp.uint8).reshape(B, S, K * E)
    return {'codes': quant.pack(codes_BSF), 'min': low_BSG, 'scale': scale_BSG}

  def decompress(self, parts: dict, heads: int, dtype):
    """(B, S, heads, K·E/heads) in `dtype` of compress's parts."""
    B, S, G = parts['min'].shape
    codes_BSGg = quant.unpack(parts['codes'], G * self.group).reshape(B, S, G, self.group)
    x_BSGg = (codes_BSGg.astype(jnp.float32) * parts['scale'][..., None].astype(jnp.float32)
              + parts['min'][..., None].astype(jnp.float32))
    return x_BSGg.reshape(B, S, heads, -1).astype(dtype)


@functools.partial(jax.jit, static_argnums=0)
def compress_cache(codec: CacheCodec, attention: dict) -> dict:
  """A Block's cache collection ({'attn': {...}}) or its slots, keys and values compressed."""
  return {'attn': {name: codec.compress(value) if name in COMPRESSED else value
                   for name, value in attention['attn'].items()}}


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def decompress_cache(codec: CacheCodec, compressed: dict, heads: int, dtype) -> dict:
  """compress_cache's inverse (up to the rounding), keys and values in `dtype`."""
  return {'attn': {name: codec.decompress(value, heads, dtype) if name in COMPRESSED else value
                   for name, value in compressed['attn'].items()}}
