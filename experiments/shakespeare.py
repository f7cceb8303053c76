"""The README demo: a small GPT-2 on Shakespeare's plays, a few minutes on 2 CPU cores."""

from gpt_jax.config import base_config


def get_config():
  c = base_config()
  c.steps = 400
  c.batch_size = 32
  c.seq_len = 128
  c.log_every = 10
  c.eval_every = 100
  c.eval_batches = 8
  c.checkpoint_every = 100
  c.model.update(vocab_size=2048, n_layer=4, n_head=4, n_kv_head=4, n_embd=192, block_size=128)
  c.optim.update(lr=2e-3, warmup_steps=40)
  c.sample.update(num=3, max_tokens=48, temperature=0.8)
  return c
