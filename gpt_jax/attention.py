"""Causal self-attention kernels: (q, k, v) in, context out.

Interchangeable paths that compute the same function:
- `auto` (the default): `einsum` on a CPU backend, where it trains 1.3x faster, else `xla`.
- `xla`: `jax.nn.dot_product_attention` lowered by XLA (CPU, TPU, GPU).
- `einsum`: head-major batched matmuls with a hand-written backward (see einsum_attention).
- `cudnn`: the same call lowered to cuDNN's fused flash attention (GPU, bfloat16/float16 only).
- `reference`: plain einsums, written to be read; the ground truth in tests.

Shapes: q_BLHD (batch, length, query heads, head dim), k_BSKD and v_BSKD with K key/value heads,
where K divides H: K = H is multi-head, 1 < K < H grouped-query, K = 1 multi-query attention.
`window > 0` gives GPT-3's local banded attention: position i sees j with i - window < j <= i.
`segment_ids_BL` packs several examples into each row (self-attention, S = L): a position sees
only positions of its own example, the causal mask and any window still applying within it.
Decoding with a KV cache passes an explicit mask instead (`position_mask`): the queries are the
newest tokens and the keys are every slot of the cache.
"""

import functools

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ('auto', 'xla', 'einsum', 'cudnn', 'reference')


def causal_mask(q_len: int, kv_len: int, window: int = 0) -> jax.Array:
  """Boolean (q_len, kv_len) mask; queries are the last q_len of the kv_len positions."""
  i = jnp.arange(q_len)[:, None] + (kv_len - q_len)
  j = jnp.arange(kv_len)[None, :]
  mask = j <= i
  if window > 0:
    mask &= j > i - window
  return mask


def position_mask(q_positions_BL, k_positions_BS, window: int = 0) -> jax.Array:
  """Boolean (B, L, S) mask from token positions: query i sees key j if 0 <= pos_j <= pos_i (and
  pos_i - pos_j < window). A negative position marks padding or an empty cache slot."""
  q_BL1, k_B1S = q_positions_BL[:, :, None], k_positions_BS[:, None, :]
  mask = (k_B1S >= 0) & (k_B1S <= q_BL1)
  if window > 0:
    mask &= k_B1S > q_BL1 - window
  return mask


def segment_mask(segment_ids_BL) -> jax.Array:
  """Boolean (B, L, L) mask: query i sees key j only if both carry the same segment id (belong
  to the same packed example; padding, with id 0, is one more segment)."""
  return segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]


def reference_attention(q_BLHD, k_BSKD, v_BSKD, *, window: int = 0, mask_BLS=None,
                        segment_ids_BL=None) -> jax.Array:
  B, L, H, D = q_BLHD.shape
  S, K = k_BSKD.shape[1], k_BSKD.shape[2]
  # Each group of H // K query heads shares one key/value head.
  q_BLKGD = q_BLHD.reshape(B, L, K, H // K, D)
  logits_BKGLS = jnp.einsum('blkgd,bskd->bkgls', q_BLKGD, k_BSKD).astype(jnp.float32)
  logits_BKGLS = logits_BKGLS / jnp.sqrt(D).astype(jnp.float32)
  mask = causal_mask(L, S, window) if mask_BLS is None else mask_BLS[:, None, None]
  if segment_ids_BL is not None:
    mask &= segment_mask(segment_ids_BL)[:, None, None]
  logits_BKGLS = jnp.where(mask, logits_BKGLS, jnp.finfo(jnp.float32).min)
  probs_BKGLS = jax.nn.softmax(logits_BKGLS, axis=-1).astype(v_BSKD.dtype)
  out_BLKGD = jnp.einsum('bkgls,bskd->blkgd', probs_BKGLS, v_BSKD)
  return out_BLKGD.reshape(B, L, H, D)


def _query_blocks(L: int, S: int, block: int):
  """(query slice, key count) per block of `block` query rows: queries are the last L of the S
  positions, so causal block i needs only the first S - L + (i + 1)·block keys."""
  block = block if 0 < block < L and L % block == 0 else L
  return [(slice(i, i + block), S - L + i + block) for i in range(0, L, block)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _softmax_attention(q_BHLD, k_BHSD, v_BHSD, mask_B1LS, block):
  return _softmax_attention_fwd(q_BHLD, k_BHSD, v_BHSD, mask_B1LS, block)[0]


def _softmax_attention_fwd(q_BHLD, k_BHSD, v_BHSD, mask_B1LS, block):
  # Causal attention in blocks of query rows, each against only the keys it can see: the masked
  # upper triangle is skipped (a third fewer FLOPs with 4 blocks) and each block's (B, H, l, s)
  # probabilities are a quarter of the size, so the softmax works closer to cache. The mask's
  # batch axis is 1 unless rows are packed. The backward needs no mask: masked probabilities are 0.
  probs, outs = [], []
  for rows, s in _query_blocks(q_BHLD.shape[2], k_BHSD.shape[2], block):
    logits_BHlS = jnp.einsum('bhld,bhsd->bhls', q_BHLD[:, :, rows], k_BHSD[:, :, :s],
                             preferred_element_type=jnp.float32)
    logits_BHlS = jnp.where(mask_B1LS[:, :, rows, :s], logits_BHlS, jnp.finfo(jnp.float32).min)
    probs_BHlS = jax.nn.softmax(logits_BHlS, axis=-1).astype(v_BHSD.dtype)
    probs.append(probs_BHlS)
    outs.append(jnp.einsum('bhls,bhsd->bhld', probs_BHlS, v_BHSD[:, :, :s]))
  out_BHLD = jnp.concatenate(outs, axis=2)
  return out_BHLD, (q_BHLD, k_BHSD, v_BHSD, probs, out_BHLD)


def _softmax_attention_bwd(block, residuals, dout_BHLD):
  q_BHLD, k_BHSD, v_BHSD, probs, out_BHLD = residuals
  # Σ_s dprobs·probs equals Σ_d dout·out (FlashAttention's trick): a sum over D, not over S.
  row_BHL1 = (dout_BHLD.astype(jnp.float32) * out_BHLD).sum(-1, keepdims=True)
  dk_BHSD, dv_BHSD = jnp.zeros_like(k_BHSD), jnp.zeros_like(v_BHSD)
  dqs = []
  blocks = _query_blocks(q_BHLD.shape[2], k_BHSD.shape[2], block)
  for (rows, s), probs_BHlS in zip(blocks, probs):
    dout_BHlD = dout_BHLD[:, :, rows]
    dv_BHSD = dv_BHSD.at[:, :, :s].add(jnp.einsum('bhls,bhld->bhsd', probs_BHlS, dout_BHlD))
    dprobs_BHlS = jnp.einsum('bhld,bhsd->bhls', dout_BHlD, v_BHSD[:, :, :s])
    dlogits_BHlS = (probs_BHlS * (dprobs_BHlS - row_BHL1[:, :, rows])).astype(q_BHLD.dtype)
    dqs.append(jnp.einsum('bhls,bhsd->bhld', dlogits_BHlS, k_BHSD[:, :, :s]))
    dk_BHSD = dk_BHSD.at[:, :, :s].add(jnp.einsum('bhls,bhld->bhsd', dlogits_BHlS,
                                                  q_BHLD[:, :, rows]))
  return jnp.concatenate(dqs, axis=2), dk_BHSD, dv_BHSD, None


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def einsum_attention(q_BLHD, k_BSKD, v_BSKD, *, window: int = 0, block: int = 64,
                     segment_ids_BL=None) -> jax.Array:
  """Causal attention for XLA:CPU: heads moved in front of length once, so every matmul is a
  plain batched one, and a hand-written backward that keeps softmax's row sums over D (XLA:CPU
  turns sums over long rows into slow reduce-windows), in causal blocks of `block` query rows
  (0: one block). 1.4x faster than jax.nn.dot_product_attention forward+backward on 256-token
  GPT-2 shapes there, and blocks of 64 rows 1.4x faster again."""
  B, L, H, D = q_BLHD.shape
  to_heads = lambda x: jnp.repeat(jnp.transpose(x, (0, 2, 1, 3)), H // x.shape[2], axis=1)
  q_BHLD = to_heads(q_BLHD * jnp.asarray(D ** -0.5, q_BLHD.dtype))
  mask_BLS = causal_mask(L, k_BSKD.shape[1], window)[None]
  if segment_ids_BL is not None:
    mask_BLS &= segment_mask(segment_ids_BL)
  out_BHLD = _softmax_attention(q_BHLD, to_heads(k_BSKD), to_heads(v_BSKD), mask_BLS[:, None],
                                block)
  return jnp.transpose(out_BHLD, (0, 2, 1, 3))


def cached_attention(q_BLHD, k_BSKD, v_BSKD, q_positions_BL, k_positions_BS, *,
                     window: int = 0, implementation: str = 'auto') -> jax.Array:
  """Decoding's attention: L new queries (B, L, H, D) over a KV cache of S slots (B, S, K, D)
  that already holds their own keys, masked by position (position_mask: empty slots and
  padding carry a negative position). Returns (B, L, H, D)."""
  mask_BLS = position_mask(q_positions_BL, k_positions_BS, window)
  return attention(q_BLHD, k_BSKD, v_BSKD, implementation=implementation, mask_BLS=mask_BLS)


def attention(q_BLHD, k_BSKD, v_BSKD, *, implementation: str = 'auto', window: int = 0,
              mask_BLS=None, segment_ids_BL=None):
  """Causal attention through the chosen implementation (see the module docstring), or, given
  mask_BLS, attention under that mask (a window is then already part of the mask).

  segment_ids_BL (int32, (B, L)): packed rows, one id per example, padding 0; a position then
  sees only earlier positions of its own example. Self-attention only (S = L); not with mask_BLS.
  Raises ValueError if both are given.
  """
  if mask_BLS is not None and segment_ids_BL is not None:
    raise ValueError('segment_ids_BL (packed rows) and mask_BLS (decoding) do not combine; '
                     'pass one of them')
  if implementation == 'reference':
    return reference_attention(q_BLHD, k_BSKD, v_BSKD, window=window, mask_BLS=mask_BLS,
                               segment_ids_BL=segment_ids_BL)
  if implementation == 'auto':
    implementation = 'einsum' if jax.default_backend() == 'cpu' else 'xla'
  if mask_BLS is None and implementation == 'einsum':
    return einsum_attention(q_BLHD, k_BSKD, v_BSKD, window=window, segment_ids_BL=segment_ids_BL)
  if mask_BLS is not None:  # decoding: a handful of queries, where XLA's kernel is the right one
    return jax.nn.dot_product_attention(q_BLHD, k_BSKD, v_BSKD, mask=mask_BLS[:, None],
                                        implementation='xla')
  return jax.nn.dot_product_attention(
      q_BLHD, k_BSKD, v_BSKD,
      # cuDNN takes the mask as an additive bias (and computes its unused gradient) but still
      # skips the blocks above the diagonal. H200, B=8, L=2048, H=12, E=64, bf16, forward and
      # backward: 1.07 ms with 4 examples a row, 0.65 ms unpacked (XLA: 5.1 ms). cuDNN's packed
      # (THD) layout would skip the blocks between examples too (0.34 ms), but needs a static
      # bound on the examples per row and a private jax API.
      mask=None if segment_ids_BL is None else segment_mask(segment_ids_BL)[:, None],
      is_causal=True,
      # (left, right) neighbours each position sees besides itself.
      local_window_size=(window - 1, 0) if window > 0 else None,
      implementation=implementation)
