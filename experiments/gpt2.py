"""GPT-2 small (124M): 12 layers × 768, 12 heads, 1024 context, tied embeddings, as in
nanoGPT's train_gpt2 (about 0.5M tokens per step, lr 6e-4 with 2000 warmup steps, cosine to 10%).

Meant for an accelerator and a corpus of your own (`--config.data.corpus=...`): 50304 BPE tokens
need far more text than the default Shakespeare corpus has.
"""

from gpt_jax.config import base_config


def get_config():
  c = base_config()
  c.seq_len = 1024
  c.batch_size = 480  # × 1024 = 491,520 tokens per step
  c.grad_accum = 1  # raise it when the batch does not fit in memory
  c.steps = 600_000
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.model.update(vocab_size=50304, n_layer=12, n_head=12, n_kv_head=12, n_embd=768,
                 block_size=1024, bias=True, tie_embeddings=True, dtype='bfloat16')
  c.optim.update(lr=6e-4, warmup_steps=2000, min_lr_ratio=0.1, b1=0.9, b2=0.95,
                 weight_decay=0.1, grad_clip=1.0)
  return c
