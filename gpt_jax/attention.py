"""Causal self-attention kernels: (q, k, v) in, context out.

Interchangeable paths that compute the same function:
- `reference`: plain einsums, written to be read; the ground truth in tests.
- `xla`: `jax.nn.dot_product_attention` lowered by XLA (CPU, TPU, GPU).
- `cudnn`: the same call lowered to cuDNN's fused flash attention (GPU, bfloat16/float16 only).

Shapes: q_BLHD (batch, length, query heads, head dim), k_BSKD and v_BSKD with K key/value heads,
where K divides H: K = H is multi-head, 1 < K < H grouped-query, K = 1 multi-query attention.
`window > 0` gives GPT-3's local banded attention: position i sees j with i - window < j <= i.
"""

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ('xla', 'cudnn', 'reference')


def causal_mask(q_len: int, kv_len: int, window: int = 0) -> jax.Array:
  """Boolean (q_len, kv_len) mask; queries are the last q_len of the kv_len positions."""
  i = jnp.arange(q_len)[:, None] + (kv_len - q_len)
  j = jnp.arange(kv_len)[None, :]
  mask = j <= i
  if window > 0:
    mask &= j > i - window
  return mask


def reference_attention(q_BLHD, k_BSKD, v_BSKD, *, window: int = 0) -> jax.Array:
  B, L, H, D = q_BLHD.shape
  S, K = k_BSKD.shape[1], k_BSKD.shape[2]
  # Each group of H // K query heads shares one key/value head.
  q_BLKGD = q_BLHD.reshape(B, L, K, H // K, D)
  logits_BKGLS = jnp.einsum('blkgd,bskd->bkgls', q_BLKGD, k_BSKD).astype(jnp.float32)
  logits_BKGLS = logits_BKGLS / jnp.sqrt(D).astype(jnp.float32)
  logits_BKGLS = jnp.where(causal_mask(L, S, window), logits_BKGLS, jnp.finfo(jnp.float32).min)
  probs_BKGLS = jax.nn.softmax(logits_BKGLS, axis=-1).astype(v_BSKD.dtype)
  out_BLKGD = jnp.einsum('bkgls,bskd->blkgd', probs_BKGLS, v_BSKD)
  return out_BLKGD.reshape(B, L, H, D)


def attention(q_BLHD, k_BSKD, v_BSKD, *, implementation: str = 'xla', window: int = 0):
  """Causal attention through the chosen implementation (see the module docstring)."""
  if implementation == 'reference':
    return reference_attention(q_BLHD, k_BSKD, v_BSKD, window=window)
  return jax.nn.dot_product_attention(
      q_BLHD, k_BSKD, v_BSKD,
      is_causal=True,
      # (left, right) neighbours each position sees besides itself.
      local_window_size=(window - 1, 0) if window > 0 else None,
      implementation=implementation)
