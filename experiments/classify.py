"""GPT-1 task fine-tuning of the README's Shakespeare model on a shipped task, a minute or two on
2 CPU cores (the base first: python -m gpt_jax.train --config=experiments/shakespeare.py):

  python -m gpt_jax.train --config=experiments/classify.py --workdir=runs/genre
  python -m gpt_jax.train --config=experiments/classify.py:same_play --workdir=runs/same_play

The argument names a shipped task (gpt_jax/tasks/classify: genre, same_play, follows,
next_line; default genre) and sets both its training and its held-out file.
"""

import os

from gpt_jax.config import base_config
from gpt_jax.task_inputs import SHIPPED_DIR


# Tokens of each shipped task's longest sequence under the base's tokenizer, rounded up (same_play's
# longest pairs are cut to the base's 128-token context).
SEQ_LEN = {'genre': 96, 'same_play': 128, 'follows': 48, 'next_line': 64}


def get_config(task: str = 'genre'):
  c = base_config()
  c.objective = 'classify'
  c.init_from = 'runs/shakespeare'
  c.data.tasks = os.path.join(SHIPPED_DIR, 'train', f'{task}.jsonl')
  c.data.held_out_tasks = os.path.join(SHIPPED_DIR, 'val', f'{task}.jsonl')
  c.data.num_epochs = 3  # GPT-1: 3 epochs
  c.steps = 75  # 3 epochs of the 400 training examples
  c.batch_size = 16
  c.seq_len = SEQ_LEN.get(task, 128)
  c.log_every = 5
  c.eval_every = 25
  c.eval_batches = 0  # the whole held-out file
  c.checkpoint_every = 75
  c.keep_checkpoints = 1
  c.optim.update(lr=3e-4, warmup_steps=6, weight_decay=0.01)  # GPT-1: lr 6.25e-5, L2 0.01
  c.task.shots = (0, 1)  # more shots do not fit the base's 128-token context
  c.task.eval_instances = 200
  c.sample.num = 0
  return c
