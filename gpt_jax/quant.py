"""Weight-only quantization of the model's matmul weights (gpt_jax.quantize writes such runs).

Work in progress: spec() and quantized_dense() are the model's hooks.
"""

import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  format: str
  group_size: int
  zero_point: bool
  activations: str


def spec(model: ml_collections.FrozenConfigDict) -> QuantSpec | None:
  quant = model.get('quant')
  if quant is None or not quant.format:
    return None
  return QuantSpec(quant.format, quant.group_size, quant.zero_point, quant.activations)


def quantized_dense(module, x, shape, names, quant: QuantSpec):
  raise NotImplementedError
