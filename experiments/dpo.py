"""Direct Preference Optimization (objective 'dpo') of the instruction-tuned Shakespeare model.

  python -m gpt_jax.train --config=experiments/shakespeare.py          # the base model, once
  python -m gpt_jax.train --config=experiments/sft.py --workdir=runs/sft  # the SFT policy
  python -m gpt_jax.train --config=experiments/dpo.py --workdir=runs/dpo [--config.init_from=DIR]

The policy starts from init_from and the frozen reference is the same model (dpo.reference = '').
The preference pairs are gpt_jax/tasks/preference/train.jsonl, scored on the held-out pairs of
val.jsonl beside it.
"""

import os

from gpt_jax.config import base_config

TASKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gpt_jax',
                     'tasks', 'preference')


def get_config():
  c = base_config()
  c.objective = 'dpo'
  c.init_from = 'runs/sft'
  c.data.tasks = os.path.join(TASKS, 'train.jsonl')
  c.data.held_out_tasks = os.path.join(TASKS, 'val.jsonl')
  c.data.num_epochs = 4
  c.seq_len = 128
  c.steps = 300
  c.batch_size = 16
  c.log_every = 10
  c.eval_every = 50
  c.eval_batches = 0  # every held-out pair
  c.checkpoint_every = 100
  c.dpo.beta = 0.1
  # Small steps from the SFT model: DPO's rewards are log-ratios to it, and a policy that moves
  # far from the reference both over-optimises the margin and forgets how to answer.
  c.optim.update(lr=5e-5, warmup_steps=30, weight_decay=0.0)
  c.sample.num = 0
  return c
