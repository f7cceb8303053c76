"""A small LLaMA-style model (RoPE, RMSNorm, SwiGLU, grouped-query attention, untied head) on
Shakespeare, sized like the README demo so the two architectures compare on one CPU."""

from gpt_jax.config import base_config


def get_config():
  c = base_config()
  c.steps = 400
  c.batch_size = 32
  c.seq_len = 128
  c.eval_every = 100
  c.eval_batches = 8
  c.checkpoint_every = 100
  c.model.update(vocab_size=2048, n_layer=4, n_head=4, n_kv_head=2, n_embd=192,
                 position='rope', norm='rmsnorm', mlp='swiglu', bias=False,
                 tie_embeddings=False, norm_eps=1e-6)
  c.optim.update(lr=2e-3, warmup_steps=40)
  return c
