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
  model's is quantized, gpt_jax.quant)."""
  quant = quant_lib.spec(model)
  if quant and quant.embeddings:
    module, prefix = ('wte', 'embedding') if model.tie_embeddings else ('lm_head', 'kernel')
    return quant_lib.dequantize(quant_lib.parts(params[module], prefix), quant).T
  if model.tie_embeddings:
    return params['wte']['embedding']
  return params['lm_head']['kernel'].T
