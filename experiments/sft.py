"""Instruction tuning (objective 'sft') of the README demo model on the shipped Shakespeare tasks.

  python -m gpt_jax.train --config=experiments/shakespeare.py          # the base model, once
  python -m gpt_jax.train --config=experiments/sft.py [--config.init_from=DIR] [--config.data.tasks=PATHS]

The model and tokenizer come from init_from. The four tasks (which play, which genre, who speaks
a line, what the next line is; gpt_jax/tasks/sft, built by `python -m gpt_jax.tasks.build`) train
on lines of the training split's scenes and are scored on the validation split's.
"""

import os

from gpt_jax.config import base_config

TASKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gpt_jax',
                     'tasks', 'sft')


def get_config():
  c = base_config()
  c.objective = 'sft'
  c.init_from = 'runs/shakespeare'
  c.data.tasks = os.path.join(TASKS, 'train')
  c.data.held_out_tasks = os.path.join(TASKS, 'val')
  c.data.num_epochs = 4
  # The base reads 128 tokens: a definition and two solved examples would not fit beside the
  # input, so the prompts are Tk-Instruct's definition-only ones.
  c.sft.shots = 0
  c.seq_len = 128
  c.steps = 300
  c.batch_size = 16
  c.log_every = 10
  c.eval_every = 100
  c.checkpoint_every = 100
  c.optim.update(lr=5e-4, warmup_steps=30, weight_decay=0.0)
  c.sample.num = 0
  return c
