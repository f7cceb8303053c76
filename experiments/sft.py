"""Instruction tuning (objective 'sft') of the README demo model on the shipped Shakespeare tasks.

  python -m gpt_jax.train --config=experiments/shakespeare.py          # the base model, once
  python -m gpt_jax.train --config=experiments/sft.py [--config.init_from=DIR] \
      [--config.data.tasks=PATHS]
  python -m gpt_jax.train --config=experiments/sft.py:lora    # LoRA r = 8 on attention
  python -m gpt_jax.quantize --workdir=runs/shakespeare --out=runs/shakespeare_nf4 --format=nf4
  python -m gpt_jax.train --config=experiments/sft.py:qlora   # the same on the NF4 base

The model and tokenizer come from init_from. The four tasks (which play, which genre, who speaks
a line, what the next line is; gpt_jax/tasks/sft, built by `python -m gpt_jax.tasks.build`) train
on lines of the training split's scenes and are scored on the validation split's.
"""

import os

from gpt_jax.config import base_config
from gpt_jax.errors import UserError

TASKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gpt_jax',
                     'tasks', 'sft')


def get_config(variant: str = 'full'):
  if variant not in ('full', 'lora', 'qlora'):
    raise UserError(f'--config=experiments/sft.py:{variant}: the variants are full, lora and qlora')
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
  if variant != 'full':
    # Adapters start at zero and move the model through a rank-8 bottleneck: a larger step.
    c.lora.update(rank=8, alpha=16.0, targets='attn')
    c.optim.lr = 2e-3
  if variant == 'qlora':
    c.init_from = 'runs/shakespeare_nf4'
  return c
