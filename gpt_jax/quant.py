"""Post-training quantization of the model's matmul weights: INT8, INT4 and NF4, stored quantized
in the parameters and dequantized inside the matmul (gpt_jax.quantize writes such runs;
config.model.quant says how).

A kernel W with its input axes flattened to I and its output axes to O is cut along I into
G = I/g groups of g consecutive rows (g = quant.group_size; 0 = all I rows, G = 1); each group of
each output column has its own scale s (G × O scales):
  int8  symmetric absmax: q = round(w/s) in [-128, 127], s = max|w| / 127.5
  int4  symmetric absmax: q = round(w/s) in [-8, 7], s = max|w| / 7.5, stored as q + 8; or with
        zero points (quant.zero_point): q = round(w/s) + z in [0, 15], w = (q − z)·s, with
        s = (max w − min w)/15 over a range that holds 0, and z the code of 0
  nf4   NormalFloat4 (Dettmers et al. 2023, "QLoRA", §3 and App. E): w = NF4[q]·s with s = max|w|
        and q the nearest of the 16 code points; the scales are double-quantized as QLoRA's
        are: less their mean, FP8 (e4m3) in blocks of 256 with a float32 scale per block.
The numerics are qwix's (qwix.quantize on W viewed as (G, g, O)). Its symmetric bound is
q_max + 0.5: every level is used, and the largest |w| of a group ends half a step from its level.

The parameters of a quantized Dense (its bias, if any, stays as it was):
  kernel_q            the codes, in the kernel's shape and logical names: int8; int4 and nf4 as
                      uint8, two 4-bit codes per byte along the last axis (see pack), so that
                      axis is halved and so are the device bytes
  kernel_scale        (G, *features) float32, logical names (None, *out_names); nf4: e4m3
  kernel_zero         (G, *features) uint8, int4 with zero points
  kernel_scale_scale  nf4: (ceil(G·O / 256),) float32, one per block of 256 scales
  kernel_scale_mean   nf4: () float32
The token embedding (quant.embeddings) is stored as the tied head's kernel, its transpose
(D × V, grouped along D): the head is one more quantized matmul, and a token's embedding is a
column of codes and scales, dequantized alone.
In the network the quantized model is the float one under QuantPlan (a gpt_jax.layers.Plan):
every Dense gets a QuantMatmul, and with quant.embeddings the token table is Embed and the untied
head a QuantMatmul too; gpt_jax.network builds it when config.model.quant says so.

The matmul (quant.activations): 'none' dequantizes W to the compute dtype and contracts as the
float model does; 'int8' also quantizes each row of x (per token, absmax, at run time) and
multiplies integers, int8 × int8 -> int32 per group of g inputs, then applies both scales; int4
weights enter it as q − z in [-15, 15]. On XLA:CPU, over the weights of the 10M-parameter GPT-2
shape at decoding's batch sizes (2 shared cores, noisy): int8 weights with int8 activations run
1.2-2x float32's speed at batch 1 and 2-3.8x at batch 8, int4 with int8 activations 0.7-0.9x and
1-1.6x, weight-only 0.1-0.4x: XLA:CPU fuses no dequantization into its matmuls, so it writes out
4 bytes per weight first.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import qwix
from qwix._src.core import numerics

from gpt_jax import layers, model
from gpt_jax.errors import UserError

FORMATS = ('int8', 'int4', 'nf4')
ACTIVATIONS = ('none', 'int8')
QTYPES = {'int8': jnp.int8, 'int4': jnp.int4, 'nf4': 'nf4'}
SCALE_BLOCK = 256  # scales per block of NF4's double quantization (QLoRA)
PREFIXES = ('kernel', 'embedding')  # the quantized parameters: Dense kernels, the Embed table


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  format: str  # one of FORMATS
  group_size: int  # input rows per scale; 0 = all of them
  zero_point: bool  # int4 only
  activations: str  # one of ACTIVATIONS
  embeddings: bool  # also the token embedding and the output head


def spec(model_config: ml_collections.ConfigDict) -> QuantSpec | None:
  """The quantization of a model config (config.model.quant), or None for float weights (also
  for a saved config from before quantization existed)."""
  quant = model_config.get('quant')
  if quant is None or not quant.format:
    return None
  return QuantSpec(quant.format, quant.group_size, quant.zero_point, quant.activations,
                   quant.embeddings)


# --- numerics ---------------------------------------------------------------------------------


def nf4_code_points() -> jax.Array:
  """The 16 NormalFloat4 values of QLoRA's App. E, ascending, float32 (qwix's table)."""
  return numerics.get_nf4_buckets().astype(jnp.float32)


def pack(codes):
  """uint8 codes in [0, 16) (..., n) -> (..., ceil(n/2)) bytes: byte j holds code j in its low
  nibble and code ceil(n/2) + j in its high one (0 past the end). Halves, not neighbours: the
  int4 matmuls run twice as fast on XLA:CPU, unpacking to two contiguous halves; a mesh that
  splits the last axis regroups the unpacked columns (correct, at some communication)."""
  half = -(-codes.shape[-1] // 2)
  high = jnp.pad(codes[..., half:], [(0, 0)] * (codes.ndim - 1) + [(0, 2 * half - codes.shape[-1])])
  return codes[..., :half] | (high << 4)


def unpack(packed, n: int):
  """The n codes along the last axis of pack's bytes."""
  return jnp.concatenate([packed & 15, packed >> 4], axis=-1)[..., :n]


def quantize(w, n_in: int, quant: QuantSpec) -> dict:
  """The stored parts {'q', 'scale', ...} (module docstring, without the 'kernel_' prefix) of a
  float kernel w whose first n_in axes are its inputs; group_size must divide their size."""
  shape, features = w.shape, w.shape[n_in:]
  I = math.prod(shape[:n_in])
  G = I // quant.group_size if quant.group_size else 1
  w_GgO = jnp.asarray(w, jnp.float32).reshape(G, I // G, -1)
  qw = qwix.quantize(w_GgO, QTYPES[quant.format], channelwise_axes=(0, 2),
                     calibration_method='minmax' if quant.zero_point else 'absmax')
  scale = qw.scale.reshape((G,) + features)
  if quant.format == 'int8':
    return {'q': qw.qvalue.reshape(shape), 'scale': scale}
  # int4's [-8, 7] is stored from 0, as nf4's codes are: every 4-bit code is unsigned.
  offset = 8 if quant.format == 'int4' else 0
  unsigned = lambda q: (q.astype(jnp.int8) + offset).astype(jnp.uint8)
  parts = {'q': pack(unsigned(qw.qvalue).reshape(shape)), 'scale': scale}
  if quant.zero_point:
    parts['zero'] = unsigned(qw.zero_point).reshape(scale.shape)
  if quant.format == 'nf4':
    parts.update(_double_quantize(scale))
  return parts


def _scale_blocks(scale):
  flat = scale.reshape(-1)
  return jnp.pad(flat, (0, -flat.size % SCALE_BLOCK)).reshape(-1, SCALE_BLOCK)


def _double_quantize(scale) -> dict:
  """QLoRA's second quantization of the (positive) scales: mean subtracted, FP8 per block."""
  mean = jnp.mean(scale)
  blocks = qwix.quantize(_scale_blocks(scale - mean), jnp.float8_e4m3fn, channelwise_axes=(0,))
  q = blocks.qvalue.reshape(-1)[:scale.size].reshape(scale.shape)
  return {'scale': q, 'scale_scale': blocks.scale[:, 0], 'scale_mean': mean}


def scales(parts: dict):
  """The float32 (G, *features) scales of stored parts (NF4's double quantization undone)."""
  scale = parts['scale']
  if 'scale_mean' not in parts:
    return scale
  blocks = _scale_blocks(scale.astype(jnp.float32)) * parts['scale_scale'][:, None]
  return blocks.reshape(-1)[:scale.size].reshape(scale.shape) + parts['scale_mean']


def codes(parts: dict):
  """The stored codes in the kernel's shape: int8, or uint8 in [0, 16) unpacked."""
  q = parts['q']
  return q if q.dtype == jnp.int8 else unpack(q, parts['scale'].shape[-1])


def _grouped(codes, scale, zero):
  """codes (I..., O...) as (G, g, O), scales (G, O...) as (G, O), zero points as (G, 1, O)."""
  G, O = scale.shape[0], math.prod(scale.shape[1:])
  return (codes.reshape(G, -1, O), scale.reshape(G, O),
          None if zero is None else zero.reshape(G, 1, O))


def _integers(codes_GgO, zero_G1O, quant: QuantSpec):
  """The integer weights: int8's q, or int4's q − z (z the stored zero point or 8), int8."""
  if quant.format == 'int8':
    return codes_GgO
  zero = 8 if zero_G1O is None else zero_G1O.astype(jnp.int8)
  return codes_GgO.astype(jnp.int8) - zero


def _dequantize(codes, scale, zero, quant: QuantSpec):
  codes_GgO, scale_GO, zero_G1O = _grouped(codes, scale, zero)
  if quant.format == 'nf4':
    values_GgO = nf4_code_points()[codes_GgO]
  else:
    values_GgO = _integers(codes_GgO, zero_G1O, quant).astype(jnp.float32)
  return (values_GgO * scale_GO[:, None, :]).reshape(codes.shape)


def dequantize(parts: dict, quant: QuantSpec):
  """The float32 kernel of stored parts (see quantize): codes × scales, group by group."""
  return _dequantize(codes(parts), scales(parts), parts.get('zero'), quant)


def matmul(x, parts: dict, n_in: int, quant: QuantSpec, dtype):
  """x · W over the last n_in axes of x, W the kernel of stored parts, as quant.activations
  says (module docstring); the result in `dtype`. Differentiable in x and the float parts: the
  int8-activation matmul by the straight-through estimator (_int8_matmul)."""
  if quant.activations == 'none':
    return _weight_only_matmul(x, parts, n_in, quant, dtype)
  return _int8_matmul(x, parts, n_in, quant, dtype)


def _weight_only_matmul(x, parts: dict, n_in: int, quant: QuantSpec, dtype):
  return layers.contract(x, dequantize(parts, quant).astype(dtype), n_in, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _int8_matmul(x, parts: dict, n_in: int, quant: QuantSpec, dtype):
  """x rounded to int8 per row (per token, absmax), times the integer weights, int32 sums per
  group of inputs, then both scales. Rounding has a zero derivative almost everywhere, so the
  backward pass is the weight-only matmul's, x · dequantize(W) (the straight-through estimator,
  Bengio et al. 2013): LoRA on an int8-activation base (QLoRA) trains with the gradients of the
  matmul the integer one approximates, not with those of its scales alone."""
  w_codes = codes(parts)
  codes_GgO, scale_GO, zero_G1O = _grouped(w_codes, scales(parts), parts.get('zero'))
  (G, g, _), batch_shape = codes_GgO.shape, x.shape[:-n_in]
  x_NI = x.reshape(-1, G * g).astype(jnp.float32)
  N = x_NI.shape[0]
  if N == 1:  # XLA:CPU's batch-1 integer dot is 20x slower than the same dot over two rows
    x_NI = jnp.concatenate([x_NI, x_NI])
  qx = qwix.quantize(x_NI, jnp.int8, channelwise_axes=(0,))
  # Not qwix.dot_general's tiled path: the same sums, but at 8 rows this einsum is 2x faster.
  y_GNO = jnp.einsum('ngi,gio->gno', qx.qvalue.reshape(-1, G, g),
                     _integers(codes_GgO, zero_G1O, quant), preferred_element_type=jnp.int32)
  y_NO = jnp.einsum('gno,go->no', y_GNO.astype(jnp.float32), scale_GO) * qx.scale
  return y_NO[:N].reshape(batch_shape + w_codes.shape[n_in:]).astype(dtype)


def _int8_matmul_forward(x, parts, n_in, quant, dtype):
  return _int8_matmul(x, parts, n_in, quant, dtype), (x, parts)


def _int8_matmul_backward(n_in, quant, dtype, residuals, dy):
  _, pullback = jax.vjp(lambda x, parts: _weight_only_matmul(x, parts, n_in, quant, dtype),
                        *residuals)
  return pullback(dy)


_int8_matmul.defvjp(_int8_matmul_forward, _int8_matmul_backward)


# --- the model's parameters -------------------------------------------------------------------


def declare(module: nn.Module, prefix: str, shape: tuple, names: tuple, n_in: int,
            quant: QuantSpec) -> dict:
  """Declares the stored parts of a kernel of `shape` and logical `names` (first n_in inputs) as
  params f'{prefix}_q', f'{prefix}_scale', ... of `module`, and returns them. Their initial
  values are zeros: a quantized model is restored, never trained from its init. UserError
  naming the layer if group_size does not divide its inputs."""
  I = math.prod(shape[:n_in])
  if quant.group_size and I % quant.group_size:
    fits = math.gcd(I, quant.group_size)
    raise UserError(f'group_size={quant.group_size} does not divide the {I} inputs of layer '
                    f'{"/".join(module.scope.path)} (kernel {shape}); pick a group size that '
                    f"divides every layer's input size (e.g. {fits}, or a divisor of it)")
  abstract = jax.eval_shape(functools.partial(quantize, n_in=n_in, quant=quant),
                            jax.ShapeDtypeStruct(shape, jnp.float32))
  scale_names = (None,) + names[n_in:]
  part_names = {'q': names, 'scale': scale_names, 'zero': scale_names, 'scale_scale': (None,),
                'scale_mean': ()}
  return {key: module.param(f'{prefix}_{key}',
                            nn.with_logical_partitioning(nn.initializers.zeros, part_names[key]),
                            part.shape, part.dtype)
          for key, part in abstract.items()}


@dataclasses.dataclass(frozen=True)
class QuantMatmul:
  """A Dense layer's matmul (layers.Matmul) on its kernel stored quantized: params kernel_q,
  kernel_scale, ... (module docstring), dequantized inside the matmul."""
  quant: QuantSpec

  def __call__(self, module: layers.Dense, x, shape: tuple, names: tuple, deterministic: bool):
    del deterministic
    n_in = len(module.in_names)
    return matmul(x, declare(module, 'kernel', shape, names, n_in, self.quant), n_in, self.quant,
                  module.dtype)


@dataclasses.dataclass(frozen=True)
class QuantPlan(layers.Plan):
  """The quantized network: every Dense's kernel quantized, and with quant.embeddings the token
  table (Embed) and the untied head too."""
  quant: QuantSpec

  def dense(self, layer: str) -> layers.Matmul:
    del layer
    return QuantMatmul(self.quant)

  def head(self) -> layers.Matmul:
    return QuantMatmul(self.quant) if self.quant.embeddings else super().head()

  def embed(self, num_embeddings: int, features: int, std: float, dtype: str, param_dtype: str,
            name: str) -> nn.Module:
    if not self.quant.embeddings:
      return super().embed(num_embeddings, features, std, dtype, param_dtype, name)
    return Embed(num_embeddings, features, self.quant, dtype, name=name)


class Embed(nn.Module):
  """nn.Embed's lookup (__call__) and tied head (attend) over a quantized table, stored as the
  head's kernel (features × num_embeddings, grouped along features; params embedding_q, ...)."""
  num_embeddings: int
  features: int
  quant: QuantSpec
  dtype: str

  def setup(self):
    self.parts = declare(self, 'embedding', (self.features, self.num_embeddings),
                         ('embed', 'vocab'), 1, self.quant)

  def __call__(self, tokens):
    """(...) int -> (..., features) in dtype: the dequantized columns of `tokens`."""
    ids_N, q = tokens.reshape(-1), self.parts['q']
    if q.dtype == jnp.int8:
      codes_DN = jnp.take(q, ids_N, axis=1)
    else:  # see pack: column t is in byte t % half, high nibble from half on
      half = q.shape[1]
      bytes_DN = jnp.take(q, ids_N % half, axis=1)
      codes_DN = jnp.where(ids_N < half, bytes_DN & 15, bytes_DN >> 4)
    column = lambda a: None if a is None else jnp.take(a, ids_N, axis=1)
    w_DN = _dequantize(codes_DN, column(scales(self.parts)), column(self.parts.get('zero')),
                       self.quant)
    return w_DN.T.reshape(tokens.shape + (self.features,)).astype(self.dtype)

  def attend(self, x):
    """x (..., features) -> logits (..., num_embeddings) in dtype."""
    return matmul(x, self.parts, 1, self.quant, self.dtype)


def parts(module_params: dict, prefix: str) -> dict:
  """The stored parts {'q', 'scale', ...} among a module's params f'{prefix}_q', ..."""
  start = len(prefix) + 1
  return {key[start:]: value for key, value in module_params.items()
          if key.startswith(prefix + '_')}


def _map_modules(convert, params: dict, path: tuple = ()) -> dict:
  """params with the dict of each module (one holding arrays only) replaced by
  convert(path, module_params, scanned); scanned: its arrays carry nn.scan's layer axis."""
  if not any(isinstance(value, dict) for value in params.values()):
    return convert(path, params, 'layers' in path)
  return {key: _map_modules(convert, value, path + (key,)) if isinstance(value, dict) else value
          for key, value in params.items()}


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _quantize_jit(w, n_in: int, quant: QuantSpec, scanned: bool) -> dict:
  """quantize, compiled once per shape, of each layer's kernel if scanned (nn.scan's stack);
  _dequantize_jit likewise."""
  fn = functools.partial(quantize, n_in=n_in, quant=quant)
  return (jax.vmap(fn) if scanned else fn)(w)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _dequantize_jit(stored: dict, quant: QuantSpec, scanned: bool):
  fn = functools.partial(dequantize, quant=quant)
  return (jax.vmap(fn) if scanned else fn)(stored)


def quantize_params(params, model_config: ml_collections.ConfigDict, quant: QuantSpec):
  """The float parameters of a model (config.model without quant) with every Dense kernel, and
  with quant.embeddings the embedding and the untied head, quantized: the tree that the model
  under QuantPlan(quant) declares. UserError naming the first layer whose inputs group_size does
  not divide."""
  gpt = model.GPT(ml_collections.FrozenConfigDict(model_config.to_dict()), QuantPlan(quant))
  target = jax.eval_shape(lambda: model.init_params(gpt, jax.random.key(0), 1))

  def convert(path, module_params, scanned):
    target_module = functools.reduce(dict.__getitem__, path, target)
    out = {key: value for key, value in module_params.items() if key in target_module}
    for prefix in PREFIXES:
      if f'{prefix}_q' in target_module:
        w = module_params[prefix]
        w = w.T if prefix == 'embedding' else w  # (V, D) -> the head's kernel (D, V)
        n_out = target_module[f'{prefix}_scale'].ndim - 1 - scanned
        stored = _quantize_jit(w, w.ndim - scanned - n_out, quant, scanned)
        out.update({f'{prefix}_{key}': part for key, part in stored.items()})
    return out

  return _map_modules(convert, params)


def dequantize_params(params, model_config: ml_collections.ConfigDict, dtype=None):
  """The float parameters (in dtype, by default model_config.param_dtype) of a quantized
  model's: each quantized kernel and table dequantized, as the model without quant declares
  them."""
  quant = spec(model_config)
  dtype = dtype or model_config.param_dtype

  def convert(path, module_params, scanned):
    out = {key: value for key, value in module_params.items()
           if not key.startswith(tuple(f'{prefix}_' for prefix in PREFIXES))}
    for prefix in PREFIXES:
      stored = parts(module_params, prefix)
      if stored:
        w = _dequantize_jit(stored, quant, scanned).astype(dtype)
        out[prefix] = w.T if prefix == 'embedding' else w
    return out

  return _map_modules(convert, params)
