"""The GPU benchmark shape: GPT-2 124M as llm.c and nanoGPT train it, 1024 tokens × 16 sequences
(16,384 tokens per step), bfloat16 compute over float32 parameters, cuDNN flash attention, the
50304-entry padded vocabulary. `tpu/bench_gpu.sh` times it and GPT-2 350M (24x1024) with one
change at a time (scan, remat, batch, XLA flags) and PyTorch's compiled nanoGPT of the same shapes
as the yardstick."""

from gpt_jax.config import base_config


def get_config():
  c = base_config()
  c.seq_len = 1024
  c.batch_size = 16
  c.model.update(vocab_size=50304, n_layer=12, n_head=12, n_kv_head=12, n_embd=768,
                 block_size=1024, position='learned', norm='layernorm', mlp='gelu', bias=True,
                 tie_embeddings=True, dropout=0.0, dtype='bfloat16', param_dtype='float32',
                 attention='cudnn')
  c.optim.update(lr=6e-4, warmup_steps=10)
  return c
