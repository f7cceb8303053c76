"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a frozen weight
W (I × O) is adapted by a trained low-rank update, x·W + (alpha/r)·(x·A)·B with A (I × r) and
B (r × O), so each target layer trains r·(I + O) parameters instead of I·O.

A starts random (Kaiming-uniform, bound 1/sqrt(I), as PEFT does) and B at zero, so the adapted
model equals its base at step 0. A carries the input axes' logical names and B the output
axes', so the adapters shard with the weight they adapt (sharding.RULES).

A LoRA run (config.lora.rank > 0, objectives.lora) trains and checkpoints the adapters alone
(and a task head, if its objective has one, and the trainable tokens below); its base,
config.init_from, stays frozen and is named in DIR/lora.json (by its path, absolute and relative
to DIR) with a fingerprint of its parameters, which every load checks. runs.load gives such a run
merged, W + (alpha/r)·A·B, so sampling, evaluation, export, init_from and distillation read it
like any run (on a quantized base, QLoRA, with the adapters apart), and
`python -m gpt_jax.lora merge --workdir=DIR --out=DIR2` (gpt_jax/lora/__main__.py) writes that
merged model as an ordinary run.

Trainable tokens (PEFT's `trainable_token_indices`): with lora.trainable_tokens_from = F > 0, the
rows of token ids F.. of the embedding table (and the same columns of an untied head) are a
parameter of their own, `trainable_tokens`, trained in full beside the adapters while rows 0..F-1
stay frozen. This is how the new pieces of a vocabulary expansion (gpt_jax.vocab_expansion) learn
under LoRA: a low-rank update of the Dense layers never reaches a token's embedding. Merging
writes them into the table.

In the network, an adapted model is its base's plan (float, or quantized: QLoRA) wrapped in a
LoraPlan (gpt_jax.layers, gpt_jax.network): the model never names LoRA.
"""

import dataclasses
import functools
import hashlib
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from gpt_jax import files, layers
from gpt_jax.errors import UserError

ATTENTION_LAYERS = ('query', 'key', 'value', 'out')
MLP_LAYERS = ('fc', 'gate', 'up', 'proj')
TARGETS = {'attn': ATTENTION_LAYERS, 'mlp': MLP_LAYERS, 'all': ATTENTION_LAYERS + MLP_LAYERS}
ADAPTERS = ('lora_a', 'lora_b')  # the parameter names of a Dense layer's adapter
TRAINABLE_TOKENS = 'trainable_tokens'  # the trained rows (columns of a head) of ids F..
TRAINED = ADAPTERS + (TRAINABLE_TOKENS,)  # what a LoRA run trains of the model
BASE_FILE = 'lora.json'  # in a LoRA run's workdir: its base run and the base's fingerprint


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  rank: int
  alpha: float
  dropout: float
  trainable_tokens_from: int = 0  # F > 0: ids F.. train in full (module docstring); 0: none


def target_layers(targets: str) -> tuple[str, ...]:
  """The Dense layer names that `lora.targets` selects ('attn', 'mlp', 'all' or names)."""
  if targets in TARGETS:
    return TARGETS[targets]
  return tuple(name.strip() for name in targets.split(',') if name.strip())


@dataclasses.dataclass(frozen=True)
class LoraMatmul:
  """A Dense layer's matmul (layers.Matmul) with a trained low-rank update around another one:
  inner(x) + (alpha/r)·(dropout(x)·A)·B, PEFT's `base_layer` and qwix's LoraProvider. The inner
  matmul is float (LoRA) or quantized (QLoRA: gpt_jax.quant.QuantMatmul). Declares lora_a (the
  kernel's input axes + r) and lora_b (r + its output axes) after the inner matmul's params."""
  inner: layers.Matmul
  lora: LoraSpec

  def __call__(self, module: layers.Dense, x, shape: tuple, names: tuple, deterministic: bool):
    y = self.inner(module, x, shape, names, deterministic)
    n_in, lora = len(module.in_names), self.lora
    a_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform',
                                              in_axis=tuple(range(n_in)), out_axis=-1)
    lora_a = module.param('lora_a', nn.with_logical_partitioning(a_init, names[:n_in] + (None,)),
                          shape[:n_in] + (lora.rank,), module.param_dtype)
    lora_b = module.param('lora_b', nn.with_logical_partitioning(nn.initializers.zeros,
                                                                 (None,) + names[n_in:]),
                          (lora.rank,) + shape[n_in:], module.param_dtype)
    x = nn.Dropout(lora.dropout)(x, deterministic=deterministic)
    xa = layers.contract(x, lora_a, n_in, module.dtype)
    return y + layers.contract(xa, lora_b, 1, module.dtype) * (lora.alpha / lora.rank)


@dataclasses.dataclass(frozen=True)
class TrainableTokensMatmul:
  """The untied head's matmul (layers.Matmul, x · W with W (D, V)) whose output columns F.. come
  from `trainable_tokens` (D, V - F) instead of the inner matmul's kernel (float or quantized)."""
  inner: layers.Matmul
  first: int

  def __call__(self, module: layers.Dense, x, shape: tuple, names: tuple, deterministic: bool):
    y = self.inner(module, x, shape, names, deterministic)
    n_in = len(module.in_names)
    tokens = module.param(TRAINABLE_TOKENS, nn.with_logical_partitioning(
        nn.initializers.zeros, names[:-1] + (None,)), shape[:-1] + (shape[-1] - self.first,),
        module.param_dtype)
    return jnp.concatenate([y[..., :self.first], layers.contract(x, tokens, n_in, module.dtype)],
                           axis=-1)


class TrainableTokensEmbed(nn.Embed):
  """nn.Embed (ids -> rows, and the tied head `attend`) whose rows F.. (`first`) come from
  `trainable_tokens` (V - F, D) instead of `embedding`. Both start at zero here; the LoRA
  objective copies the base's rows into the trainable ones before the first step."""
  first: int = 0

  def setup(self):
    super().setup()
    self.trainable_tokens = self.param(
        TRAINABLE_TOKENS, nn.with_logical_partitioning(nn.initializers.zeros, (None, 'embed')),
        (self.num_embeddings - self.first, self.features), self.param_dtype)

  def __call__(self, inputs):
    rows = super().__call__(inputs)
    trained = jnp.take(self.trainable_tokens, jnp.maximum(inputs - self.first, 0), axis=0)
    return jnp.where((inputs >= self.first)[..., None], trained.astype(rows.dtype), rows)

  def attend(self, query):
    logits = super().attend(query)
    query, tokens = nn.dtypes.promote_dtype(query, self.trainable_tokens, dtype=self.dtype)
    return jnp.concatenate([logits[..., :self.first], query @ tokens.T], axis=-1)


@dataclasses.dataclass(frozen=True)
class LoraPlan(layers.Plan):
  """`inner` (a float or quantized network) with LoraMatmul around the Dense layers named in
  `targets`; the head and the token table stay inner's, but for their trainable tokens, if
  lora.trainable_tokens_from > 0."""
  inner: layers.Plan
  lora: LoraSpec
  targets: tuple[str, ...]

  def dense(self, layer: str) -> layers.Matmul:
    matmul = self.inner.dense(layer)
    return LoraMatmul(matmul, self.lora) if layer in self.targets else matmul

  def head(self) -> layers.Matmul:
    first = self.lora.trainable_tokens_from
    return TrainableTokensMatmul(self.inner.head(), first) if first > 0 else self.inner.head()

  def embed(self, num_embeddings: int, features: int, std: float, dtype: str, param_dtype: str,
            name: str) -> nn.Module:
    first = self.lora.trainable_tokens_from
    if first <= 0:
      return self.inner.embed(num_embeddings, features, std, dtype, param_dtype, name)
    if not 0 < first < num_embeddings:
      raise UserError(f'lora.trainable_tokens_from={first} is beyond the model\'s '
                      f'{num_embeddings}-token vocabulary; pass an id below it (or 0: none)')
    if type(self.inner).embed is not layers.Plan.embed:
      raise UserError('lora.trainable_tokens_from needs a float token table, and the base stores '
                      'its embeddings quantized; quantize the base without its embeddings, or '
                      'pass --config.lora.trainable_tokens_from=0')
    return TrainableTokensEmbed(num_embeddings, features, dtype=dtype, param_dtype=param_dtype,
                                embedding_init=layers.logical_normal(std, ('vocab', 'embed')),
                                first=first, name=name)


def plan(lora: ml_collections.ConfigDict, inner: layers.Plan) -> LoraPlan:
  """The LoraPlan of config.lora (rank > 0) around `inner`."""
  return LoraPlan(inner, LoraSpec(lora.rank, lora.alpha, lora.dropout,
                                  max(lora.get('trainable_tokens_from', 0), 0)),
                  target_layers(lora.targets))


def is_adapted(config: ml_collections.ConfigDict) -> bool:
  """Whether a run's config (config.json) describes a LoRA run."""
  return config.get('lora') is not None and config.lora.rank > 0


# --- settings ---------------------------------------------------------------------------------


def layer_names(mlp: str) -> tuple[str, ...]:
  """The Dense layers of a model whose MLP is `mlp` ('gelu' or 'swiglu')."""
  return ATTENTION_LAYERS + (('gate', 'up', 'proj') if mlp == 'swiglu' else ('fc', 'proj'))


def validate(lora: ml_collections.ConfigDict) -> None:
  """UserError for config.lora settings out of range (the targets: targeted_layers)."""
  if lora.rank < 0:
    raise UserError(f'lora.rank={lora.rank} must be >= 0 (0 turns LoRA off)')
  if not lora.alpha > 0 or not 0 <= lora.dropout < 1:  # NaN fails too
    raise UserError(f'lora.alpha={lora.alpha} must be > 0 and lora.dropout={lora.dropout} in '
                    '[0, 1); fix --config.lora')


def targeted_layers(targets: str, mlp: str) -> tuple[str, ...]:
  """The Dense layers that `targets` (config.lora.targets) selects in a model whose MLP is `mlp`;
  UserError if it names a layer the model lacks, or none."""
  valid = layer_names(mlp)
  names = target_layers(targets)
  unknown = [] if targets in TARGETS else [name for name in names if name not in valid]
  if unknown or not names:
    what = f': this model has no layer {", ".join(unknown)}' if unknown else ' names no layer'
    raise UserError(f'lora.targets={targets!r}{what}; use attn, mlp, all or layer names among '
                    f'{",".join(valid)}')
  return tuple(name for name in names if name in valid)


# --- parameter trees --------------------------------------------------------------------------


def split(params) -> tuple[dict, dict]:
  """(what a LoRA run trains: adapters and trainable tokens, the rest) of a model's parameter
  tree (nested dicts; also of trees of shapes or PartitionSpecs): two trees of the same nesting
  with no leaf in common."""
  flat = traverse_util.flatten_dict(params)
  part = lambda adapters: traverse_util.unflatten_dict(
      {path: leaf for path, leaf in flat.items() if (path[-1] in TRAINED) == adapters})
  return part(True), part(False)


def join(adapters, rest) -> dict:
  """The one tree of two with no leaf in common (split's inverse)."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(rest),
                                       **traverse_util.flatten_dict(adapters)})


def with_trainable_tokens(table, tokens, axis: int) -> jax.Array:
  """`table` (V rows on `axis`) with its last tokens.shape[axis] rows replaced by `tokens`."""
  first = table.shape[axis] - tokens.shape[axis]
  return jnp.concatenate([jax.lax.slice_in_dim(table, 0, first, axis=axis),
                          tokens.astype(table.dtype)], axis=axis)


def low_rank_product(a, b, kernel_ndim: int) -> jax.Array:
  """A·B in float32 with the kernel's shape: a (in axes + r), b (r + out axes), both with the
  leading 'layers' axis of scanned layers (model.scan_layers) if the kernel has it."""
  product = functools.partial(jnp.tensordot, axes=1, precision=jax.lax.Precision.HIGHEST)
  for _ in range(a.ndim + b.ndim - 2 - kernel_ndim):  # the stacked layers' axis, if any
    product = jax.vmap(product)
  return product(a.astype(jnp.float32), b.astype(jnp.float32))


def merge(params, lora: ml_collections.ConfigDict) -> dict:
  """The model's parameters with each adapted kernel W replaced by W + (alpha/r)·A·B (the paper's
  B·A, in this (in, out) layout; summed in float32, stored in W's dtype) and the adapters
  dropped, and trainable tokens written into their table (the token rows, or the head's
  columns): the plain model, computing what the adapted one does up to float rounding. UserError
  for an adapted layer without a float kernel (a quantized base), onto which merging is
  refused."""
  adapters, rest = split(params)
  flat, flat_adapters = traverse_util.flatten_dict(rest), traverse_util.flatten_dict(adapters)
  for layer in sorted({path[:-1] for path in flat_adapters}):
    tokens = flat_adapters.get(layer + (TRAINABLE_TOKENS,))
    name = 'embedding' if tokens is not None and layer + ('embedding',) in flat else 'kernel'
    kernel = flat.get(layer + (name,))
    if kernel is None:
      raise UserError(f'layer {"/".join(layer)} has no float kernel (a quantized base): merging '
                      'adapters onto it is refused; use the LoRA run unmerged')
    if tokens is not None:
      axis = 0 if name == 'embedding' else -1
      flat[layer + (name,)] = with_trainable_tokens(kernel, tokens, axis)
    if layer + ('lora_a',) in flat_adapters:
      delta = low_rank_product(flat_adapters[layer + ('lora_a',)],
                               flat_adapters[layer + ('lora_b',)], kernel.ndim)
      flat[layer + ('kernel',)] = (kernel.astype(jnp.float32) + lora.alpha / lora.rank * delta
                                   ).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat)


# --- the base of a LoRA run -------------------------------------------------------------------


def _checksum(x: jax.Array) -> jax.Array:
  """A uint32 checksum of every element's bits at its index: murmur3's finaliser of (bits, index),
  summed modulo 2³². Integer sums are exact in any order, so a base sharded over any mesh gives
  the same value (float sums would differ in their last bits)."""
  bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f'uint{8 * x.dtype.itemsize}'))
  h = bits.astype(jnp.uint32) ^ (jnp.arange(x.size, dtype=jnp.uint32).reshape(x.shape)
                                 * jnp.uint32(0x9E3779B9))
  h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
  return jnp.sum(h ^ (h >> 16), dtype=jnp.uint32)


def fingerprint(params) -> str:
  """sha256 (hex) over each leaf's path, shape, dtype and checksum of its values: one pass over
  the parameters on their devices, the same on any mesh and any number of hosts."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  sums = jax.jit(lambda xs: [_checksum(x) for x in xs])([x for _, x in leaves])
  digest = hashlib.sha256()
  for (path, x), checksum in zip(leaves, sums):
    digest.update(f'{jax.tree_util.keystr(path)} {x.shape} {x.dtype} '
                  f'{int(checksum.addressable_data(0))}\n'.encode())
  return digest.hexdigest()


def base_record(base_workdir: str, step: int, params) -> dict:
  """What lora.json holds of a base run: its workdir (absolute), step and fingerprint."""
  return {'base': os.path.abspath(base_workdir), 'base_step': step,
          'base_sha256': fingerprint(params)}


def write_base(workdir: str, record: dict) -> None:
  """Writes `record` (base_record) as the lora.json of the LoRA run in `workdir`, with the base's
  path relative to that run too ('base_relative'), so that a LoRA run moved together with its
  base (a copied folder, a renamed project) still finds it."""
  relative = os.path.relpath(record['base'], os.path.abspath(workdir))
  files.write_json(os.path.join(workdir, BASE_FILE), {**record, 'base_relative': relative})


def recorded_places(workdir: str, record: dict) -> list[str]:
  """Where lora.json (`record`, read_base) says the base of the LoRA run in `workdir` is, in the
  order to look: relative to the LoRA run as it is now (the two moved together), then the
  absolute path it had when trained (the LoRA run moved alone). A lora.json written before the
  relative path was recorded gives the absolute one alone."""
  places = [os.path.join(workdir, record['base_relative'])] if 'base_relative' in record else []
  places.append(record['base'])
  return list(dict.fromkeys(os.path.normpath(place) for place in places))


def read_base(workdir: str) -> dict:
  """The base_record in the lora.json of the LoRA run in `workdir`; UserError if unreadable."""
  path = os.path.join(workdir, BASE_FILE)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'cannot read {path} ({e}): a LoRA run names its base there; pass the workdir '
                    'of a LoRA run that has started training') from None


def check_base(workdir: str, record: dict) -> None:
  """UserError unless `record` (base_record of the base as it is now) has the fingerprint of the
  base the LoRA run in `workdir` was trained on."""
  trained = read_base(workdir)
  if trained['base_sha256'] != record['base_sha256']:
    raise UserError(f'the base of the LoRA run {workdir} changed since it was trained: '
                    f'{record["base"]} (step {record["base_step"]}) is not the model its adapters '
                    f'were trained on ({trained["base"]}, step {trained["base_step"]}); restore '
                    'that base, or train the adapters again in a new --workdir')


