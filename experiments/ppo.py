"""PPO (objective 'ppo', InstructGPT's RL step) of the Shakespeare SFT model against a reward model.

  python -m gpt_jax.train --config=experiments/ppo.py --workdir=runs/ppo \
      [--config.init_from=DIR] [--config.ppo.reward_model=DIR]

init_from is the policy to tune (an SFT run on the pairs' prompts and chosen answers), and the
reference of the KL penalty; ppo.reward_model an objective=reward run on the same pairs (this
config with --config.objective=reward --config.steps=200 --config.optim.lr=3e-4 trains one from
the SFT run). The prompts are those of the preference pairs (gpt_jax/tasks/preference, built by
`python -m gpt_jax.tasks.build`): a line of a speech, answered by the next line; train/ from the
training split's scenes, val/ from the held-out ones, whose prompts give val_score and val_kl.
A step samples an answer of up to 24 tokens to each of 32 prompts, then makes 4 passes of 4
clipped updates over them.
"""

import os

from gpt_jax.config import base_config

PAIRS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gpt_jax',
                     'tasks', 'preference')


def get_config():
  c = base_config()
  c.objective = 'ppo'
  c.init_from = 'runs/sft'
  c.ppo.reward_model = 'runs/reward'
  c.data.tasks = os.path.join(PAIRS, 'train')
  c.data.held_out_tasks = os.path.join(PAIRS, 'val')
  c.data.num_epochs = 10
  c.seq_len = 128
  c.batch_size = 32
  c.steps = 100  # iterations: a rollout of 32 answers and 16 updates each
  c.log_every = 5
  c.eval_every = 25
  c.checkpoint_every = 25
  c.eval_batches = 4
  # A small step: sixteen updates per batch of rollouts, against a reward model that a policy
  # moving fast learns to exploit.
  c.optim.update(lr=3e-5, warmup_steps=10, weight_decay=0.0)
  c.ppo.update(max_new_tokens=24, kl_coef=0.05, epochs=4, minibatches=4)
  c.sample.num = 0
  return c
