"""The network's weight-bearing layers and the seam through which weight transforms reach them.

`Dense` is x · W + b over logical axis names; how W is stored and multiplied is its `matmul`
strategy: `FloatMatmul` declares a float kernel and contracts with it. A `Plan` says, layer by
layer, which strategy each Dense of the model gets and which table embeds the tokens. The float
plan lives here; quantization (gpt_jax.quant: QuantPlan) and LoRA (gpt_jax.lora: LoraPlan, which
wraps any inner plan, so QLoRA is LoRA around a quantized matmul) define theirs beside their
numerics and import this module, never the reverse: the network knows no transform by name, as
in qwix, PEFT (`base_layer`), Levanter and MaxText. gpt_jax.network composes them.

A strategy declares its parameters on the Dense module it is called from (module.param), so the
parameter tree is the one each transform always wrote: `kernel`, or `kernel_q`, `kernel_scale`,
... (quant), plus `lora_a`, `lora_b` (LoRA), then `bias`.
"""

import dataclasses
from typing import Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp


def logical_normal(std: float, names: tuple):
  """A normal(std) initializer whose parameter carries the logical axis `names`."""
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def soft_cap(logits, cap: float):
  """cap·tanh(logits / cap): logits squashed smoothly into (−cap, cap) (Gemma 2; modded-nanogpt),
  same shape and dtype; cap = 0 returns the logits unchanged. Its derivative is
  1 − (capped / cap)²."""
  return cap * jnp.tanh(logits / cap) if cap else logits


def contract(x, kernel, n_in: int, dtype):
  """x · kernel over the last n_in axes of x and the first n_in of the kernel, in `dtype`.

  A jax.lax.dot_general on the kernel as stored, not a reshape to 2-D and `@`: XLA emits the
  same matmul, and JAX quantization libraries (qwix) intercept exactly this form.
  """
  x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=dtype)
  x_axes = tuple(range(x.ndim - n_in, x.ndim))
  return jax.lax.dot_general(x, kernel, ((x_axes, tuple(range(n_in))), ((), ())))


class Matmul(Protocol):
  """How a Dense layer stores its weight and computes x · W (no bias). Frozen dataclasses, so
  that a module holding one stays hashable."""

  def __call__(self, module: 'Dense', x, shape: tuple, names: tuple, deterministic: bool):
    """x · W for the Dense `module`, whose kernel W has `shape` and logical `names` (its
    len(module.in_names) input axes first); declares W's parameters on `module`."""


@dataclasses.dataclass(frozen=True)
class FloatMatmul:
  """The float kernel, param 'kernel' in module.param_dtype, contracted in module.dtype."""

  def __call__(self, module: 'Dense', x, shape: tuple, names: tuple, deterministic: bool):
    kernel = module.param('kernel', logical_normal(module.std, names), shape, module.param_dtype)
    return contract(x, kernel, len(module.in_names), module.dtype)


class Dense(nn.Module):
  """x · W + b, contracting the last len(in_names) axes of x; W and b carry logical axis names.

  Not nn.DenseGeneral: it initialises a multi-axis kernel flat and reshapes it, and under a mesh
  the flat kernel cannot take the logical sharding of the real one. `matmul` stores W and
  computes x · W (FloatMatmul, or a weight transform's strategy: see the module docstring).
  """
  features: tuple[int, ...]
  in_names: tuple[str, ...]
  out_names: tuple[str, ...]
  std: float
  use_bias: bool
  dtype: str
  param_dtype: str
  matmul: Matmul = FloatMatmul()

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    n_in = len(self.in_names)
    shape, names = x.shape[-n_in:] + self.features, self.in_names + self.out_names
    y = self.matmul(self, x, shape, names, deterministic)
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, self.out_names),
                        self.features, self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


@dataclasses.dataclass(frozen=True)
class Plan:
  """The float network: every Dense gets FloatMatmul, the tokens a float nn.Embed table.
  Transforms subclass or wrap it (module docstring); plans are frozen, so hashable."""

  def dense(self, layer: str) -> Matmul:
    """The matmul of the Dense layer named `layer` ('query', ..., 'proj'; see model.py)."""
    del layer
    return FloatMatmul()

  def head(self) -> Matmul:
    """The matmul of the untied output head (lm_head)."""
    return FloatMatmul()

  def embed(self, num_embeddings: int, features: int, std: float, dtype: str, param_dtype: str,
            name: str) -> nn.Module:
    """The token table: a module with nn.Embed's __call__ (ids -> rows) and attend (the tied
    head, x -> logits)."""
    return nn.Embed(num_embeddings, features, dtype=dtype, param_dtype=param_dtype,
                    embedding_init=logical_normal(std, ('vocab', 'embed')), name=name)
