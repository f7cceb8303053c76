"""The one place where a network is composed with its weight transforms (MaxText's
`create_model`): a float GPT (gpt_jax.model) becomes a quantized one (gpt_jax.quant.QuantPlan,
when config.model.quant says so) and an adapted one (gpt_jax.lora.LoraPlan around either: LoRA,
or QLoRA on a quantized base). The model imports neither transform; everything that builds a
model from a config builds it here.
"""

import jax
import ml_collections

from gpt_jax import layers, lora as lora_lib, model as model_lib, quant as quant_lib


def plan(model: ml_collections.ConfigDict,
         lora: ml_collections.ConfigDict | None = None) -> layers.Plan:
  """How the weights of `model` (config.model) are stored and multiplied: float, quantized
  (model.quant), and with `lora` (config.lora, rank > 0) adapters on its target layers."""
  quant = quant_lib.spec(model)
  weights = quant_lib.QuantPlan(quant) if quant else layers.Plan()
  if lora is not None and lora.rank > 0:
    return lora_lib.plan(lora, weights)
  return weights


def build(model: ml_collections.ConfigDict,
          lora: ml_collections.ConfigDict | None = None) -> model_lib.GPT:
  """The GPT of a model config (config.model, quantized if model.quant says so); with `lora`
  (config.lora, rank > 0) its target layers carry adapters (gpt_jax.lora)."""
  return model_lib.GPT(ml_collections.FrozenConfigDict(model.to_dict()), plan(model, lora))


def head_weight(params, model: ml_collections.ConfigDict) -> jax.Array:
  """The output head as (vocab, n_embd): logits = hidden · head_weightᵀ (dequantized if the
  model's is quantized, gpt_jax.quant; with a LoRA run's trainable tokens in their rows,
  gpt_jax.lora)."""
  quant = quant_lib.spec(model)
  module, name = ('wte', 'embedding') if model.tie_embeddings else ('lm_head', 'kernel')
  if quant and quant.embeddings:
    weight = quant_lib.dequantize(quant_lib.parts(params[module], name), quant).T
  else:
    weight = params[module][name] if model.tie_embeddings else params[module][name].T
  tokens = params[module].get(lora_lib.TRAINABLE_TOKENS)  # (V - F, D), or (D, V - F) of lm_head
  if tokens is not None:
    weight = lora_lib.with_trainable_tokens(weight, tokens if model.tie_embeddings else tokens.T, 0)
  return weight
