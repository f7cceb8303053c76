"""The CPU benchmark shape: GPT-2 style, vocab 8192, 256 tokens × 32 sequences (8192 tokens per
step), float32, no dropout; `python -m gpt_jax.bench --sizes=4x256,6x384 --torch` sweeps the two
widths compared with PyTorch in the notes."""

from gpt_jax.config import base_config


def get_config():
  c = base_config()
  c.seq_len = 256
  c.batch_size = 32
  c.model.update(vocab_size=8192, n_layer=4, n_head=4, n_kv_head=4, n_embd=256, block_size=1024,
                 position='learned', norm='layernorm', mlp='gelu', bias=True, tie_embeddings=True,
                 dropout=0.0, dtype='float32', param_dtype='float32')
  return c
