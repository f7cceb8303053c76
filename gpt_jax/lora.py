"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a frozen weight
W (I × O) is adapted by a trained low-rank update, x·W + (alpha/r)·(x·A)·B with A (I × r) and
B (r × O), so each target layer trains r·(I + O) parameters instead of I·O.

A starts random (Kaiming-uniform, bound 1/sqrt(I), as PEFT does) and B at zero, so the adapted
model equals its base at step 0. A carries the input axes' logical names and B the output
axes', so the adapters shard with the weight they adapt (sharding.RULES).
"""

import dataclasses

import flax.linen as nn
import jax
import ml_collections

ATTENTION_LAYERS = ('query', 'key', 'value', 'out')
MLP_LAYERS = ('fc', 'gate', 'up', 'proj')
TARGETS = {'attn': ATTENTION_LAYERS, 'mlp': MLP_LAYERS, 'all': ATTENTION_LAYERS + MLP_LAYERS}


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
