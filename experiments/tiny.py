"""A GPT small enough to train in seconds on a CPU: used by the tests and for smoke runs."""

from gpt_jax.config import base_config


def get_config():
  c = base_config()
  c.steps = 20
  c.batch_size = 8
  c.seq_len = 32
  c.log_every = 5
  c.eval_every = 10
  c.eval_batches = 2
  c.checkpoint_every = 10
  c.model.update(vocab_size=512, n_layer=2, n_head=4, n_kv_head=4, n_embd=64, block_size=64)
  c.optim.update(lr=3e-3, warmup_steps=5)
  c.sample.update(num=2, max_tokens=16)
  return c
