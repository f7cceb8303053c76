"""Pretraining on next-token loss: the language-modelling objective (GPT-1/2/3).

A batch is `tokens` (B, L + 1) int32 windows of the token stream (data.Windows): inputs
tokens[:, :-1], targets tokens[:, 1:]. The loss is the mean cross-entropy of every target (plus
the z-loss, config.loss.z_loss), with the output head fused into the loss
(losses.head_next_token_loss) so the (B, L, V) logits are never held. Validation reports the
loss in nats/token, its perplexity and bits per byte of the validation split.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import data, losses, network, sample
from gpt_jax.errors import UserError
from gpt_jax.objectives.base import Objective, split_batches


@dataclasses.dataclass
class LanguageModeling(Objective):
  prepared: data.Prepared | None = None

  @classmethod
  def build(cls, config, mesh, log, prepared: data.Prepared | None = None):
    """`prepared` is config.data already prepared, for callers that train many models on one
    corpus."""
    prepared = prepared or data.prepare(config.data, config.model.vocab_size, log=log)
    objective = cls(config, prepared.tokenizer, network.build(config.model), prepared=prepared)
    objective.check_sample_room()
    return objective

  @classmethod
  def without_data(cls, config, tokenizer=None):
    """The objective for config's model with no corpus behind it (gpt_jax.bench, tests): its
    train and eval steps work, its datasets and samples do not."""
    return cls(config, tokenizer, network.build(config.model))

  def batch_spec(self):
    return {'tokens': ((self.config.seq_len + 1,), jnp.int32, ('batch', 'length'))}

  def weights(self, batch):
    return {'targets': jnp.asarray(batch['tokens'][:, 1:].size, jnp.float32)}

  def loss(self, params, batch, *, rng, step, weights, frozen):
    tokens_BL1 = batch['tokens']
    x_ND = self.gpt.apply({'params': params}, tokens_BL1[:, :-1], deterministic=False, hidden=True,
                          rngs={'dropout': rng})
    loss, terms = losses.head_next_token_loss(
        x_ND, network.head_weight(params, self.config.model), tokens_BL1[:, 1:],
        jnp.ones(tokens_BL1[:, 1:].shape, jnp.float32), z_loss=self.config.loss.z_loss,
        logit_softcap=self.config.model.logit_softcap, normalizer=weights['targets'],
        num_tokens=self.num_tokens)
    return loss, {'train_loss': terms['ce'], 'z_loss': terms['z_loss']}

  def eval_sums(self, params, batch, frozen):
    tokens_BL1 = batch['tokens']
    logits_BLV = self.gpt.apply({'params': params}, tokens_BL1[:, :-1])
    nll_BL = losses.token_nll(logits_BLV, tokens_BL1[:, 1:], self.num_tokens)
    return {'loss_sum': nll_BL.sum(), 'targets': jnp.asarray(nll_BL.size, jnp.float32)}

  def eval_metrics(self, sums):
    loss = float(sums['loss_sum'] / sums['targets'])
    return {'val_loss': loss, 'val_ppl': math.exp(min(loss, 700.0)),
            'val_bpb': loss / (math.log(2) * self.prepared.bytes_per_token('val'))}

  def train_dataset(self, batch_size):
    c = self.config
    return data.train_dataset(
        self.prepared, seq_len=c.seq_len, batch_size=batch_size, seed=c.seed,
        num_epochs=c.data.num_epochs, process_index=jax.process_index(),
        process_count=jax.process_count()).map(lambda t: {'tokens': t})

  def validation_batches(self):
    # The same tokens are scored whatever the microbatching and the number of processes.
    c = self.config
    batches = data.eval_batches(self.prepared, 'val', seq_len=c.seq_len, batch_size=c.batch_size,
                                max_batches=c.eval_batches)
    return split_batches({'tokens': np.concatenate(batches)}, c)

  def check_sample_room(self) -> None:
    """UserError, before training, if config.sample.prompt leaves no room in the context."""
    c = self.config
    prompt_tokens = 1 + len(self.tokenizer.encode(c.sample.prompt))  # after EOS, as a document
    context = sample.context_length(c.model)
    if c.sample.num > 0 and prompt_tokens >= context:
      raise UserError(f'sample.prompt is {prompt_tokens} tokens, no room left in the {context}-'
                      'token context; shorten the prompt')

  def finish(self, params, workdir, log):
    """Prints config.sample.num continuations of config.sample.prompt (KV-cache sampler)."""
    c = self.config
    if c.sample.num <= 0:
      return
    prompt_tokens = 1 + len(self.tokenizer.encode(c.sample.prompt))
    max_new_tokens = min(c.sample.max_tokens, sample.context_length(c.model) - prompt_tokens)
    texts = sample.complete(self.gpt, params, self.tokenizer, [c.sample.prompt],
                            max_new_tokens=max_new_tokens, num_samples=c.sample.num,
                            temperature=c.sample.temperature, seed=c.seed)
    for i, text in enumerate(texts):
      log(f'--- sample {i + 1} ---\n{text}')
