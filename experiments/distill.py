"""The distillation study on Shakespeare, a few minutes on 2 CPU cores: a 4-layer teacher, then
a 2-layer student trained twice on the same tokens, from scratch and distilled (α = 0.5, T = 2).

`python -m gpt_jax.train --config=experiments/distill.py` trains all three;
`--config.distill.teacher=DIR` reuses any finished run with the same tokenizer as the teacher.
"""

import ml_collections

from gpt_jax.config import base_config


def get_config():
  c = base_config()  # the student, and the settings all three runs share
  c.steps = 300
  c.batch_size = 16
  c.seq_len = 128
  c.log_every = 10
  c.eval_every = 30
  c.eval_batches = 8
  c.checkpoint_every = 100
  c.sample.num = 0
  c.model.update(vocab_size=1024, n_layer=2, n_head=2, n_kv_head=2, n_embd=64, block_size=128)
  c.optim.update(lr=3e-3, warmup_steps=30)
  c.distill.update(alpha=0.5, temperature=2.0)

  c.study = study = ml_collections.ConfigDict()
  study.teacher_model = dict(n_layer=4, n_head=4, n_kv_head=4, n_embd=192)
  study.teacher_steps = 600  # twice the student's tokens: a teacher worth learning from
  study.teacher_lr = 2e-3
  return c
