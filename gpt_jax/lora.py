"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a frozen weight
W (I × O) is adapted by a trained low-rank update, x·W + (alpha/r)·(x·A)·B with A (I × r) and
B (r × O), so each target layer trains r·(I + O) parameters instead of I·O.

A starts random (Kaiming-uniform, bound 1/sqrt(I), as PEFT does) and B at zero, so the adapted
model equals its base at step 0. A carries the input axes' logical names and B the output
axes', so the adapters shard with the weight they adapt (sharding.RULES).

A LoRA run (config.lora.rank > 0, objectives.lora) trains and checkpoints the adapters alone
(and a task head, if its objective has one); its base, config.init_from, stays frozen and is
named in DIR/lora.json with a fingerprint of its parameters, which every load checks. runs.load
gives such a run merged, W + (alpha/r)·A·B, so sampling, evaluation, export, init_from and
distillation read it like any run (on a quantized base, QLoRA, with the adapters apart), and

  python -m gpt_jax.lora merge --workdir=DIR --out=DIR2

writes that merged model as an ordinary run.
"""

import dataclasses
import functools
import hashlib
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from gpt_jax import cli, files, quant, sharding
from gpt_jax.errors import UserError

ATTENTION_LAYERS = ('query', 'key', 'value', 'out')
MLP_LAYERS = ('fc', 'gate', 'up', 'proj')
TARGETS = {'attn': ATTENTION_LAYERS, 'mlp': MLP_LAYERS, 'all': ATTENTION_LAYERS + MLP_LAYERS}
ADAPTERS = ('lora_a', 'lora_b')  # the parameter names of a Dense layer's adapter
BASE_FILE = 'lora.json'  # in a LoRA run's workdir: its base run and the base's fingerprint


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  rank: int
  alpha: float
  dropout: float


def target_layers(targets: str) -> tuple[str, ...]:
  """The Dense layer names that `lora.targets` selects ('attn', 'mlp', 'all' or names)."""
  if targets in TARGETS:
    return TARGETS[targets]
  return tuple(name.strip() for name in targets.split(',') if name.strip())


def spec(model: ml_collections.FrozenConfigDict, layer: str) -> LoraSpec | None:
  """The adapter of Dense layer `layer` under the model config (model.build puts config.lora in
  it), or None if LoRA is off or does not target it."""
  lora = model.get('lora')
  if lora is None or lora.rank <= 0 or layer not in target_layers(lora.targets):
    return None
  return LoraSpec(lora.rank, lora.alpha, lora.dropout)


def lora_delta(module: nn.Module, x, shape: tuple, names: tuple, lora: LoraSpec,
               deterministic: bool):
  """(alpha/r)·(dropout(x)·A)·B for a Dense `module` whose kernel has `shape` and logical
  `names` (inputs first); declares the module's params lora_a (in axes + r) and lora_b (r + out
  axes)."""
  from gpt_jax import model  # model imports this module
  n_in = len(shape) - len(module.features)
  a_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform',
                                            in_axis=tuple(range(n_in)), out_axis=-1)
  lora_a = module.param('lora_a', nn.with_logical_partitioning(a_init, names[:n_in] + (None,)),
                        shape[:n_in] + (lora.rank,), module.param_dtype)
  lora_b = module.param('lora_b', nn.with_logical_partitioning(nn.initializers.zeros,
                                                               (None,) + names[n_in:]),
                        (lora.rank,) + shape[n_in:], module.param_dtype)
  x = nn.Dropout(lora.dropout)(x, deterministic=deterministic)
  xa = model.contract(x, lora_a, n_in, module.dtype)
  return model.contract(xa, lora_b, 1, module.dtype) * (lora.alpha / lora.rank)


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
  """(adapters, the rest) of a model's parameter tree (nested dicts; also of trees of shapes or
  PartitionSpecs): two trees of the same nesting with no leaf in common."""
  flat = traverse_util.flatten_dict(params)
  part = lambda adapters: traverse_util.unflatten_dict(
      {path: leaf for path, leaf in flat.items() if (path[-1] in ADAPTERS) == adapters})
  return part(True), part(False)


def join(adapters, rest) -> dict:
  """The one tree of two with no leaf in common (split's inverse)."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(rest),
                                       **traverse_util.flatten_dict(adapters)})


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
  dropped: the plain model, computing what the adapted one does up to float rounding. UserError
  for an adapted layer without a float kernel (a quantized base), onto which merging is
  refused."""
  adapters, rest = split(params)
  flat, flat_adapters = traverse_util.flatten_dict(rest), traverse_util.flatten_dict(adapters)
  for layer in sorted({path[:-1] for path in flat_adapters}):
    kernel = flat.get(layer + ('kernel',))
    if kernel is None:
      raise UserError(f'layer {"/".join(layer)} has no float kernel (a quantized base): merging '
                      'adapters onto it is refused; use the LoRA run unmerged')
    delta = low_rank_product(flat_adapters[layer + ('lora_a',)], flat_adapters[layer + ('lora_b',)],
                             kernel.ndim)
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


# --- python -m gpt_jax.lora merge ---------------------------------------------------------------


def is_adapted(config: ml_collections.ConfigDict) -> bool:
  """Whether a run's config (config.json) describes a LoRA run."""
  return config.get('lora') is not None and config.lora.rank > 0


def merge_run(workdir: str, out: str, log=print) -> str:
  """Writes the LoRA run in `workdir` merged (runs.load) into `out`, new or empty, all at once or
  not at all: an ordinary run of parameters alone (runs.write_params_run) at the LoRA run's step,
  its config with lora.rank = 0. A classify run keeps its head and special-token embeddings beside
  the merged model, as its checkpoints hold them, so evaluate --task reads it too. UserError for a
  run without adapters, a non-empty `out` or a base that changed. Returns `out`."""
  from gpt_jax import runs  # runs imports the model, which imports this module
  config = runs.read_config(workdir)
  if not is_adapted(config):
    raise UserError(f'{workdir} is not a LoRA run (its lora.rank is 0): it has no adapters to '
                    'merge; pass the workdir of a run trained with --config.lora.rank > 0')
  files.check_new_directory(out, '--out')  # before the slow part
  if config.objective in runs.MODEL_KEY:
    if quant.spec(config.model):
      raise UserError(f'{workdir} is a task-head run on a quantized base; evaluate it as it is '
                      '(evaluate --task), merging it is not supported')
    from gpt_jax.objectives import classify
    _, params, run = classify.load_classifier(workdir, mesh=sharding.data_parallel_mesh(),
                                               log=log)
  else:
    run = runs.load(workdir, log=log)
    params = run.params
  quantized = quant.spec(config.model)
  if quantized:  # runs.load kept the adapters apart
    params = merge(quant.dequantize_params(params, config.model), config.lora)
    config.model.quant.format = ''
    log(f'the base is {quantized.format}: merging dequantizes it, so {out} holds '
        f'{config.model.param_dtype} weights W + (alpha/r)·A·B')
  config.lora.rank = 0
  return runs.write_params_run(out, config, run.tokenizer, params, run.step, '--out')


def _main(argv: list[str]) -> None:
  parser = cli.ArgumentParser(prog='python -m gpt_jax.lora',
                              description='Commands on LoRA runs (Hu et al. 2021).')
  commands = parser.add_subparsers(dest='command', required=True)
  merge_parser = commands.add_parser(
      'merge', help='a LoRA run into an ordinary run',
      description="Writes a LoRA run's merged weights, W + (alpha/r)·A·B, as an ordinary run; a "
      'quantized base (QLoRA) is dequantized, so the weights are float.')
  merge_parser.add_argument('--workdir', required=True, help='the LoRA run')
  merge_parser.add_argument('--out', required=True, help='a new directory')
  args = parser.parse_args(argv)
  print(f'merged {args.workdir} into {merge_run(args.workdir, args.out)}')


def main(argv=None) -> None:
  cli.run(lambda: _main(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
  main()
