"""Training objectives: what one training method is to the trainer (gpt_jax.trainer).

Pretraining, distillation, instruction tuning, task fine-tuning and preference tuning (a reward
model, DPO, PPO) differ only in what a batch holds and how the loss is computed from it; the train
step, sharding, gradient accumulation, checkpoints, resume, logging and MFU are the trainer's and
never learn about a new objective.

This module is the registry: `build` makes the objective that config.objective names. Each
objective has its own module (lm, distill, sft, classify, reward, dpo, ppo; lora wraps any of
them), imported only when it is built, so that a command importing one objective
(gpt_jax.evaluate imports classify) loads no other (dpo and ppo bring in gpt_jax.metrics'
tensorboardX and torch). The interface they implement and the helpers they share are
gpt_jax.objectives.base's; Objective and check_trainable_base are re-exported here for the
trainer.

With config.lora.rank > 0 the objective built is wrapped by objectives.lora, which trains LoRA
adapters on a frozen base instead of the model's weights, whatever the objective.
"""

import ml_collections

from gpt_jax.errors import UserError
from gpt_jax.objectives.base import Objective, check_trainable_base

__all__ = ['NAMES', 'Objective', 'build', 'check_trainable_base']
NAMES = ('lm', 'sft', 'classify', 'reward', 'dpo', 'ppo')


def build(config: ml_collections.ConfigDict, mesh, log, prepared=None) -> Objective:
  """The objective config.objective names (distillation for 'lm' with a distill.teacher),
  training LoRA adapters on a frozen config.init_from when config.lora.rank is set."""
  if config.objective not in NAMES:
    raise UserError(f'objective={config.objective!r} is not one of {NAMES}; pick one of them')
  if config.lora.rank:
    from gpt_jax.objectives import lora
    return lora.LoraTuning.build(config, mesh, log, lambda: _build(config, mesh, log, prepared))
  return _build(config, mesh, log, prepared)


def _build(config, mesh, log, prepared) -> Objective:
  if config.objective == 'lm':
    from gpt_jax.objectives import distill, lm
    if config.distill.teacher:
      return distill.Distillation.build(config, mesh, log, prepared)
    return lm.LanguageModeling.build(config, mesh, log, prepared)
  if config.objective == 'sft':
    from gpt_jax.objectives import sft
    return sft.InstructionTuning.build(config, mesh, log)
  if config.objective == 'reward':
    from gpt_jax.objectives import reward
    return reward.RewardModeling.build(config, mesh, log)
  if config.objective == 'dpo':
    from gpt_jax.objectives import dpo
    return dpo.DirectPreference.build(config, mesh, log)
  if config.objective == 'ppo':
    from gpt_jax.objectives import ppo
    return ppo.ProximalPolicy.build(config, mesh, log)
  from gpt_jax.objectives import classify
  return classify.TaskFineTuning.build(config, mesh, log)
