"""The preference-tuning demo on Shakespeare (issue: reward model, DPO, PPO): SFT of the README
base model on the judge's chosen lines, a reward model, then DPO and PPO from the SFT model;
preference_report.md says how often the judge (nearer ten syllables, gpt_jax.tasks.judge)
prefers each model's sampled answers to the SFT model's, at which KL, and at which bits/byte.

  python -m gpt_jax.train --config=experiments/shakespeare.py --workdir=runs/shakespeare  # once
  python -m gpt_jax.train --config=experiments/preference.py --workdir=runs/preference

The pairs (gpt_jax/tasks/preference, built by `python -m gpt_jax.tasks.build`): a line of a
speech as the prompt, its next line and a line of another scene as the answers, chosen the one
nearer ten syllables; train/ from the training split's scenes, val/ from the held-out ones.
"""

import os

import ml_collections

from gpt_jax.config import base_config

PAIRS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gpt_jax',
                     'tasks', 'preference')


def get_config():
  c = base_config()  # the settings the four runs share
  c.init_from = 'runs/shakespeare'
  c.data.tasks = os.path.join(PAIRS, 'train')
  c.data.held_out_tasks = os.path.join(PAIRS, 'val')
  c.data.num_epochs = 10
  c.sft.shots = 0  # the pairs are one task without a definition: 'Input: <line>\nOutput:'
  c.seq_len = 128
  c.batch_size = 16
  c.log_every = 10
  c.eval_every = 50
  c.checkpoint_every = 50
  c.sample.num = 0
  c.optim.update(warmup_steps=10, weight_decay=0.0)
  c.dpo.beta = 0.5  # of 0.1, 0.3, 0.5, 1.0 tried, the judge's rate rose most at 0.5
  c.ppo.update(kl_coef=0.05, max_new_tokens=24, temperature=1.0, epochs=4, minibatches=4)

  c.chain = chain = ml_collections.ConfigDict()
  # Each run's own settings over the shared ones (gpt_jax.preference_study.run_configs).
  chain.runs = ml_collections.ConfigDict({
      'sft': {'steps': 60, 'optim': {'lr': 5e-4}},  # 3 epochs: the held-out loss rises after
      'reward': {'steps': 200, 'optim': {'lr': 3e-4}},
      'dpo': {'steps': 200, 'optim': {'lr': 1e-4}},
      # a step: an answer to each of 32 prompts, then 4 passes of 4 clipped updates over them
      'ppo': {'steps': 100, 'batch_size': 32, 'eval_batches': 4, 'log_every': 5,
              'optim': {'lr': 3e-5}},
  })
  chain.samples = 4  # answers sampled per held-out prompt and model
  chain.prompts = 0  # held-out prompts evaluated; 0 = all of data.held_out_tasks's
  chain.max_new_tokens = 24  # as ppo.max_new_tokens: the longest answer
  chain.temperature = 1.0  # 1: the policy's own samples, on which the KL estimate is unbiased
  chain.batch_size = 64  # rows sampled and scored at once
  chain.val_batches = 0  # validation batches scored for bits/byte; 0 = the whole split
  # best-of-N of the SFT model's samples by the reward model, N answers per prompt (empty: off),
  # and the further samples per prompt that measure its KL (gpt_jax.preference_study.best_of_n)
  chain.best_of = (1, 2, 4, 8, 16, 32, 64)
  chain.best_of_pool = 128
  return c
