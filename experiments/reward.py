"""A reward model (objective 'reward', InstructGPT's step 2) of the Shakespeare preference demo.

  python -m gpt_jax.train --config=experiments/reward.py [--config.init_from=DIR] [--config.data.tasks=FILES]

It starts from the SFT model of the demo chain (experiments/preference.py trains it; any run of
the base's tokenizer will do) and learns the shipped pairs (gpt_jax/tasks/preference: of two
lines after a passage, the one nearer to ten syllables is chosen); the held-out pairs are from
scenes held out of pretraining. It writes reward_normalization.json when it finishes, which
`--config.ppo.reward_model=runs/reward` then reads.
"""

import os

from gpt_jax.config import base_config

PAIRS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gpt_jax',
                     'tasks', 'preference')


def get_config():
  c = base_config()
  c.objective = 'reward'
  c.init_from = 'runs/preference/sft'
  c.data.tasks = os.path.join(PAIRS, 'train.jsonl')
  c.data.held_out_tasks = os.path.join(PAIRS, 'val.jsonl')
  c.data.num_epochs = 8
  c.seq_len = 128
  c.steps = 300
  c.batch_size = 32
  c.log_every = 10
  c.eval_every = 50
  c.eval_batches = 0
  c.checkpoint_every = 100
  c.optim.update(lr=1e-4, warmup_steps=30, weight_decay=0.0)
  c.sample.num = 0
  return c
