"""Knowledge distillation (Hinton et al. 2015): the language-modelling objective with a frozen
teacher, any finished run of this project with the student's tokenizer.

loss = α·T²·KL(teacher ‖ student) + (1 − α)·CE over the same batches as pretraining
(losses.distillation_loss); α may move linearly to config.distill.alpha_final by the last step.
The teacher's parameters are the objective's frozen tree, on the student's mesh and in its
dtype; validation is the student's next-token loss, as in pretraining.
"""

import dataclasses

import jax.numpy as jnp
import optax

from gpt_jax import losses, model, runs
from gpt_jax.errors import UserError
from gpt_jax.objectives.lm import LanguageModeling


def alpha_schedule(distill, steps: int):
  """step -> α: constant, or linear from distill.alpha to distill.alpha_final at the last step."""
  if distill.alpha_final < 0:
    return lambda step: distill.alpha
  return optax.linear_schedule(distill.alpha, distill.alpha_final, max(steps - 1, 1))


def validate(config) -> None:
  d = config.distill
  # At T = 0.01 the softened distributions are all but one-hot already; towards 0, logits / T
  # overflows float32 and the loss is NaN.
  if not (0 <= d.alpha <= 1 and d.alpha_final <= 1 and d.temperature >= 0.01 and
          0 <= d.top_k <= config.model.vocab_size):
    raise UserError(f'distill.alpha={d.alpha} (and alpha_final={d.alpha_final}, if >= 0) must be '
                    f'in [0, 1], temperature={d.temperature} at least 0.01 and top_k={d.top_k} in '
                    f'[0, vocab_size]; fix --config.distill')
  if d.reverse and d.top_k:
    raise UserError('reverse KL needs the whole teacher distribution; set distill.top_k=0 or '
                    'distill.reverse=False')


@dataclasses.dataclass
class Distillation(LanguageModeling):
  teacher: model.GPT | None = None

  @classmethod
  def build(cls, config, mesh, log, prepared=None):
    validate(config)
    objective = super().build(config, mesh, log, prepared)
    teacher = runs.load_compatible(config.distill.teacher, 'distill.teacher', config,
                                   objective.tokenizer, mesh=mesh)
    objective.teacher, objective.frozen = teacher.gpt, teacher.params
    return objective

  def loss(self, params, batch, *, rng, step, weights, frozen):
    tokens_BL1 = batch['tokens']
    logits_BLV = self.gpt.apply({'params': params}, tokens_BL1[:, :-1], deterministic=False,
                                rngs={'dropout': rng})
    teacher_BLV = self.teacher.apply({'params': frozen}, tokens_BL1[:, :-1])
    d = self.config.distill
    loss, terms = losses.distillation_loss(
        logits_BLV, teacher_BLV, tokens_BL1[:, 1:], jnp.ones(tokens_BL1[:, 1:].shape, jnp.float32),
        alpha=alpha_schedule(d, self.config.steps)(step), temperature=d.temperature,
        reverse=d.reverse, top_k=d.top_k, normalizer=weights['targets'],
        num_tokens=self.num_tokens)
    return loss, {'train_loss': terms['ce'], 'kl': terms['kl']}
