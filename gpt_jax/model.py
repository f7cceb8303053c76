"""A decoder-only Transformer, configured (not forked) into GPT-2 or LLaMA style.

GPT-2: learned position embeddings, pre-LN LayerNorm blocks with a final LayerNorm, a 4x GELU
MLP, and the output head tied to the token embedding (logits = h · W_eᵀ).
LLaMA: rotary position embeddings (RoPE), RMSNorm, a SwiGLU MLP, optionally an untied head.
Both: multi-head, grouped-query or multi-query attention (`n_kv_head` divides `n_head`).
The modded-nanogpt speedrun's recipe (Jordan et al. 2024) as options: QK-norm (`qk_norm`, an
RMSNorm of each head's queries and keys, as in OLMo 2 and Qwen3), the squared-ReLU MLP
(`mlp='relu2'`, So et al. 2021), output projections that start at zero (`zero_init_proj`) and a
logit soft-cap (`logit_softcap`, Gemma 2).

With decode=True the model keeps a KV cache (flax collection 'cache'): each call appends its
tokens' keys and values, and attends over everything cached so far, so a prompt is read once and
each new token costs one position (see sample.py).

Every parameter carries logical axis names (embed, mlp, heads, kv_heads, kv, vocab, layers) and
activations are constrained with logical names (batch, length, ...); `sharding.py` maps them to a
device mesh. Shape suffixes: B batch, L length, N = B·L flat tokens, D n_embd, H heads, K kv
heads, E head dim, F MLP hidden, V vocab.

Between the embedding and the logits, activations are flat (N, features) rows, named ('batch',
...) for sharding (N splits where B does): on XLA:CPU a weight gradient over 3-D (B, L, D)
activations is 2.6-3.3x slower than the same matmul over flat rows, and a bias or LayerNorm
gradient summed over (B, L) is about 20x slower than the same sum over N.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gpt_jax import attention, layers
from gpt_jax.errors import UserError

CHOICES = {
    'position': ('learned', 'rope'),
    'norm': ('layernorm', 'rmsnorm'),
    'mlp': ('gelu', 'swiglu', 'relu2'),
    'attention': attention.IMPLEMENTATIONS,
    'local_layers': ('all', 'alternate'),
    'dtype': ('float32', 'bfloat16'),
    'param_dtype': ('float32', 'bfloat16'),
    'remat': ('none', 'full', 'dots'),
}


def validate(model: ml_collections.ConfigDict, seq_len: int) -> None:
  """Raises UserError for a model config that cannot be built or cannot run at seq_len."""
  for key, allowed in CHOICES.items():
    if model[key] not in allowed:
      raise UserError(f'model.{key}={model[key]!r} is not one of {allowed}; pick one of them')
  if model.logit_softcap < 0:
    raise UserError(f'model.logit_softcap={model.logit_softcap} must be >= 0 (0 = no cap)')
  if model.head_dim < 0:
    raise UserError(f'model.head_dim={model.head_dim} must be >= 0 (0 = n_embd // n_head)')
  for key in ('vocab_size', 'n_layer', 'n_head', 'n_kv_head', 'n_embd', 'block_size'):
    if model[key] <= 0:
      raise UserError(f'model.{key}={model[key]} must be positive')
  if not model.head_dim and model.n_embd % model.n_head:
    raise UserError(f'model.n_embd={model.n_embd} is not divisible by model.n_head={model.n_head}; '
                    'choose n_embd as a multiple of n_head')
  if model.n_head % model.n_kv_head:
    raise UserError(f'model.n_head={model.n_head} is not divisible by model.n_kv_head='
                    f'{model.n_kv_head}; choose n_kv_head as a divisor of n_head')
  if model.position == 'rope' and head_size(model) % 2:
    raise UserError(f'RoPE needs an even head size, got {head_size(model)}; change n_embd, '
                    'n_head or head_dim')
  if model.position == 'learned' and seq_len > model.block_size:
    raise UserError(f'seq_len={seq_len} is beyond the learned position table '
                    f'(model.block_size={model.block_size}); lower seq_len or raise block_size')
  if model.scan_layers and model.sliding_window > 0 and model.local_layers == 'alternate':
    raise UserError("model.scan_layers needs identical layers, but local_layers='alternate' mixes "
                    "dense and local ones; set scan_layers=False or local_layers='all'")


def head_size(model: ml_collections.ConfigDict) -> int:
  return model.head_dim or model.n_embd // model.n_head


def mlp_hidden_size(model: ml_collections.ConfigDict) -> int:
  if model.d_ff:
    return model.d_ff
  if model.mlp in ('gelu', 'relu2'):
    return 4 * model.n_embd
  # LLaMA: 2/3 of 4·D (so SwiGLU's three matrices cost what GELU's two do), rounded up to 256.
  return 256 * math.ceil(int(8 * model.n_embd / 3) / 256)


def layer_window(model: ml_collections.ConfigDict, layer: int) -> int:
  """The attention window of a layer: 0 (dense) or model.sliding_window."""
  if model.sliding_window <= 0 or (model.local_layers == 'alternate' and layer % 2 == 0):
    return 0
  return model.sliding_window


def _norm(model, name: str) -> nn.Module:
  common = dict(epsilon=model.norm_eps, dtype=model.dtype, param_dtype=model.param_dtype,
                scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
                name=name)
  if model.norm == 'rmsnorm':
    return nn.RMSNorm(**common)
  return nn.LayerNorm(use_bias=model.bias,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                      **common)


def _head_norm(model, name: str) -> nn.Module:
  """QK-norm: an RMSNorm over each head's E features, one learned scale per feature shared by
  the heads (Qwen3, Gemma 3), so that attention logits cannot grow without bound."""
  return nn.RMSNorm(epsilon=model.norm_eps, dtype=model.dtype, param_dtype=model.param_dtype,
                    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('kv',)),
                    name=name)


def output_std(model) -> float:
  """The init std of the projections back into the residual stream (attention out, MLP proj):
  GPT-2 scales them by 1/sqrt(2·n_layer); zero_init_proj starts them at 0, so every block begins
  as the identity (modded-nanogpt)."""
  return 0.0 if model.zero_init_proj else model.init_std / math.sqrt(2 * model.n_layer)


def _dense(model, plan: layers.Plan, features, in_names: tuple, out_names: tuple, std: float,
           name: str) -> layers.Dense:
  features = features if isinstance(features, tuple) else (features,)
  return layers.Dense(features, in_names, out_names, std, model.bias, model.dtype,
                      model.param_dtype, matmul=plan.dense(name), name=name)


def rope(x_BLHE: jax.Array, positions_BL: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding: rotates feature pairs (i, i + E/2) by position · theta^(-2i/E)."""
  E = x_BLHE.shape[-1]
  inv_freq = theta ** (-jnp.arange(0, E, 2, dtype=jnp.float32) / E)
  angles_BLE = positions_BL[..., None].astype(jnp.float32) * inv_freq
  sin, cos = jnp.sin(angles_BLE)[:, :, None, :], jnp.cos(angles_BLE)[:, :, None, :]
  x1, x2 = jnp.split(x_BLHE.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BLHE.dtype)


class KVCache(nn.Module):
  """One attention layer's decoding cache (flax collection 'cache'): the keys, values and
  positions of every token so far, in S slots (as many as the tokens the cache was created
  with, see init_cache), and the index of the next free slot. Only the K key/value heads are
  stored, so GQA/MQA caches are H/K times smaller. Attention keeps it in its own scope
  (attn/cached_key, ...); offloaded generation (gpt_jax.offload) applies it alone, to a cache
  kept off the device."""

  @nn.compact
  def __call__(self, k_BLKE, v_BLKE, positions_BL):
    """Writes the new keys, values and positions at the index; returns the whole cache
    (k_BSKE, v_BSKE, k_positions_BS)."""
    key = self.variable('cache', 'cached_key', jnp.zeros, k_BLKE.shape, k_BLKE.dtype)
    value = self.variable('cache', 'cached_value', jnp.zeros, v_BLKE.shape, v_BLKE.dtype)
    positions = self.variable('cache', 'cached_positions', jnp.zeros, positions_BL.shape, jnp.int32)
    index = self.variable('cache', 'index', jnp.zeros, (), jnp.int32)
    i = index.value
    key.value = jax.lax.dynamic_update_slice(key.value, k_BLKE.astype(key.value.dtype),
                                             (0, i, 0, 0))
    value.value = jax.lax.dynamic_update_slice(value.value, v_BLKE.astype(value.value.dtype),
                                               (0, i, 0, 0))
    positions.value = jax.lax.dynamic_update_slice(positions.value,
                                                   positions_BL.astype(jnp.int32), (0, i))
    index.value = i + k_BLKE.shape[1]
    return key.value, value.value, positions.value


class Attention(nn.Module):
  """Self-attention over flat rows x_ND, in three steps that can be applied alone: `project`
  (queries, keys and values), the attention itself (over the KV cache when decoding), and
  `output` (the heads back into the residual stream)."""
  config: ml_collections.FrozenConfigDict
  window: int
  plan: layers.Plan

  def setup(self):
    c = self.config
    E = head_size(c)
    dense = functools.partial(_dense, c, self.plan)
    self.query = dense((c.n_head, E), ('embed',), ('heads', 'kv'), c.init_std, 'query')
    self.key = dense((c.n_kv_head, E), ('embed',), ('kv_heads', 'kv'), c.init_std, 'key')
    self.value = dense((c.n_kv_head, E), ('embed',), ('kv_heads', 'kv'), c.init_std, 'value')
    if c.qk_norm:
      self.query_norm, self.key_norm = _head_norm(c, 'query_norm'), _head_norm(c, 'key_norm')
    self.out = dense(c.n_embd, ('heads', 'kv'), ('embed',), output_std(c), 'out')
    self.kv_cache = KVCache()
    nn.share_scope(self, self.kv_cache)

  def __call__(self, x_ND, positions_BL, segment_ids_BL=None, decode: bool = False,
               deterministic: bool = True):
    c = self.config
    q_BLHE, k_BLKE, v_BLKE = self.project(x_ND, positions_BL, deterministic)
    if decode:
      k_BSKE, v_BSKE, k_positions_BS = self.kv_cache(k_BLKE, v_BLKE, positions_BL)
      out_BLHE = attention.cached_attention(q_BLHE, k_BSKE, v_BSKE, positions_BL,
                                            k_positions_BS, window=self.window,
                                            implementation=c.attention)
    else:
      out_BLHE = attention.attention(q_BLHE, k_BLKE, v_BLKE, implementation=c.attention,
                                     window=self.window, segment_ids_BL=segment_ids_BL)
    return self.output(out_BLHE, deterministic)

  def project(self, x_ND, positions_BL, deterministic: bool = True):
    """(q_BLHE, k_BLKE, v_BLKE): the queries, keys and values of x_ND's rows (B·L of them), with
    QK-norm and RoPE applied as configured."""
    c = self.config
    unflat = lambda y: y.reshape(positions_BL.shape + y.shape[1:])
    q_BLHE = unflat(self.query(x_ND, deterministic=deterministic))
    k_BLKE = unflat(self.key(x_ND, deterministic=deterministic))
    v_BLKE = unflat(self.value(x_ND, deterministic=deterministic))
    if c.qk_norm:
      q_BLHE, k_BLKE = self.query_norm(q_BLHE), self.key_norm(k_BLKE)
    if c.position == 'rope':
      q_BLHE = rope(q_BLHE, positions_BL, c.rope_theta)
      k_BLKE = rope(k_BLKE, positions_BL, c.rope_theta)
    return (nn.with_logical_constraint(q_BLHE, ('batch', 'length', 'heads', 'kv')),
            nn.with_logical_constraint(k_BLKE, ('batch', 'length', 'kv_heads', 'kv')),
            nn.with_logical_constraint(v_BLKE, ('batch', 'length', 'kv_heads', 'kv')))

  def output(self, out_BLHE, deterministic: bool = True):
    """The heads' outputs projected back to flat rows y_ND."""
    return self.out(out_BLHE.reshape(-1, *out_BLHE.shape[2:]), deterministic=deterministic)


class MLP(nn.Module):
  config: ml_collections.FrozenConfigDict
  plan: layers.Plan

  @nn.compact
  def __call__(self, x_ND, deterministic: bool = True):
    c = self.config
    F = mlp_hidden_size(c)
    dense = lambda *args: functools.partial(_dense(c, self.plan, *args),
                                        deterministic=deterministic)
    if c.mlp == 'swiglu':
      gate_NF = dense(F, ('embed',), ('mlp',), c.init_std, 'gate')(x_ND)
      up_NF = dense(F, ('embed',), ('mlp',), c.init_std, 'up')(x_ND)
      h_NF = nn.silu(gate_NF) * up_NF
    elif c.mlp == 'relu2':
      h_NF = jnp.square(nn.relu(dense(F, ('embed',), ('mlp',), c.init_std, 'fc')(x_ND)))
    else:
      h_NF = nn.gelu(dense(F, ('embed',), ('mlp',), c.init_std, 'fc')(x_ND), approximate=True)
    h_NF = nn.with_logical_constraint(h_NF, ('batch', 'mlp'))
    return dense(c.n_embd, ('mlp',), ('embed',), output_std(c), 'proj')(h_NF)


class Block(nn.Module):
  """Pre-LN residual block over flat rows x_ND: x + Attention(Norm(x)), then x + MLP(Norm(x)).
  `attention_inputs` and `attention_outputs` are the block before and after the attention
  itself, for a caller that computes it elsewhere (gpt_jax.offload: over a cache kept on the
  host, on the host)."""
  config: ml_collections.FrozenConfigDict
  window: int = 0
  plan: layers.Plan = layers.Plan()

  def setup(self):
    c = self.config
    self.ln_1, self.attn = _norm(c, 'ln_1'), Attention(c, self.window, self.plan, name='attn')
    self.ln_2, self.mlp = _norm(c, 'ln_2'), MLP(c, self.plan, name='mlp')
    self.attn_dropout = nn.Dropout(c.dropout, name='Dropout_0')
    self.mlp_dropout = nn.Dropout(c.dropout, name='Dropout_1')

  def __call__(self, x_ND, positions_BL, segment_ids_BL, deterministic: bool, decode: bool):
    h_ND = self.attn(self.ln_1(x_ND), positions_BL, segment_ids_BL, decode, deterministic)
    return self._after_attention(x_ND, h_ND, deterministic)

  def attention_inputs(self, x_ND, positions_BL):
    """(q_BLHE, k_BLKE, v_BLKE) of the block's attention over x_ND (no dropout)."""
    return self.attn.project(self.ln_1(x_ND), positions_BL)

  def attention_outputs(self, x_ND, out_BLHE):
    """The block's output x_ND, given its attention's output out_BLHE (no dropout)."""
    return self._after_attention(x_ND, self.attn.output(out_BLHE), True)

  def _after_attention(self, x_ND, h_ND, deterministic: bool):
    x_ND = x_ND + self.attn_dropout(h_ND, deterministic=deterministic)
    h_ND = self.mlp(self.ln_2(x_ND), deterministic)
    x_ND = x_ND + self.mlp_dropout(h_ND, deterministic=deterministic)
    return nn.with_logical_constraint(x_ND, ('batch', 'embed'))


class ScanBlock(Block):
  """A Block in nn.scan's (carry, x) -> (carry, y) form."""

  def __call__(self, x_ND, positions_BL, segment_ids_BL, deterministic: bool, decode: bool):
    return super().__call__(x_ND, positions_BL, segment_ids_BL, deterministic, decode), None


REMAT_POLICIES = {
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class GPT(nn.Module):
  """tokens_BL (int32) -> logits_BLV. `config` is the frozen `config.model`.

  positions_BL defaults to 0, 1, ...; a negative position marks a padding token, which no other
  token attends to (used with decode=True, where a batch of prompts is left-padded).
  segment_ids_BL (int32, (B, L)) packs several examples into a row: each example's tokens carry
  their own id (padding 0, one more segment) and attend only within it; give positions_BL that
  restart at 0 for each example to compute what each would alone. Not with decode=True
  (ValueError).
  special_embeddings_SD ((S, D), S small) embeds ids the tokenizer never makes, such as GPT-1's
  start, delimiter and extract tokens for task fine-tuning (Radford et al. 2018, §3.3): id
  vocab_size + s reads row s of it instead of the token table, which is left as it is (ids must
  stay below vocab_size + S). The logits still cover the vocab_size ids alone.
  hidden=True returns the final normalised hidden states x_ND (N = B·L rows) instead of the
  logits, for a loss that applies the head itself (losses.head_next_token_loss,
  network.head_weight) and with it the soft-cap (layers.soft_cap).
  `plan` stores and multiplies the weights (layers.Plan: float; gpt_jax.network builds the
  quantized and adapted ones).
  The forward is three stages, each one applicable alone: `embed` (apply(..., method='embed'):
  tokens -> x_ND), the blocks (a `Block` per layer, parameters 'h_i', or one nn.scan over all of
  them, 'layers'), and `head` (x_ND -> logits_NV). Offloaded generation (gpt_jax.offload) runs
  them a layer at a time, with only that layer's weights in memory.
  """
  config: ml_collections.FrozenConfigDict
  plan: layers.Plan = layers.Plan()

  def setup(self):
    c = self.config
    self.wte = self.plan.embed(c.vocab_size, c.n_embd, c.init_std, c.dtype, c.param_dtype, 'wte')
    if c.position == 'learned':
      self.wpe_PD = self.param('wpe', layers.logical_normal(c.init_std, (None, 'embed')),
                               (c.block_size, c.n_embd), c.param_dtype)
    self.dropout = nn.Dropout(c.dropout, name='Dropout_0')
    block = ScanBlock if c.scan_layers else Block
    if c.remat != 'none':
      # Arguments 4 and 5 of __call__ (counting self) are the Python bools.
      block = nn.remat(block, policy=REMAT_POLICIES[c.remat], static_argnums=(4, 5))
    if c.scan_layers:
      stack = nn.scan(block, variable_axes={'params': 0, 'cache': 0},
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=(nn.broadcast,) * 4, length=c.n_layer,
                      metadata_params={nn.PARTITION_NAME: 'layers'})
      self.layers = stack(c, layer_window(c, 0), self.plan, name='layers')
    else:
      self.h = [block(c, layer_window(c, i), self.plan, name=f'h_{i}') for i in range(c.n_layer)]
    self.ln_f = _norm(c, 'ln_f')
    if not c.tie_embeddings:
      self.lm_head = layers.Dense((c.vocab_size,), ('embed',), ('vocab',), c.init_std, False,
                                  c.dtype, c.param_dtype, matmul=self.plan.head(), name='lm_head')

  def __call__(self, tokens_BL, positions_BL=None, deterministic: bool = True,
               decode: bool = False, hidden: bool = False, segment_ids_BL=None,
               special_embeddings_SD=None):
    if decode and segment_ids_BL is not None:
      raise ValueError('segment_ids_BL (packed rows) is not supported with decode=True; decode '
                       'one example per row')
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
    x_ND = self.embed(tokens_BL, positions_BL, deterministic, special_embeddings_SD)
    if self.config.scan_layers:
      x_ND, _ = self.layers(x_ND, positions_BL, segment_ids_BL, deterministic, decode)
    else:
      for block in self.h:
        x_ND = block(x_ND, positions_BL, segment_ids_BL, deterministic, decode)
    if hidden and not self.is_initializing():
      return self.ln_f(x_ND)
    return self.head(x_ND).reshape(*tokens_BL.shape, -1)

  def embed(self, tokens_BL, positions_BL, deterministic: bool = True,
            special_embeddings_SD=None):
    """The first stage: token (and learned position) embeddings, x_ND (N = B·L rows)."""
    c = self.config
    if special_embeddings_SD is None:
      x_BLD = self.wte(tokens_BL)
    else:
      is_special_BL = tokens_BL >= c.vocab_size
      token_BLD = self.wte(jnp.where(is_special_BL, 0, tokens_BL))
      special_BLD = jnp.asarray(special_embeddings_SD, c.dtype)[
          jnp.maximum(tokens_BL - c.vocab_size, 0)]
      x_BLD = jnp.where(is_special_BL[..., None], special_BLD, token_BLD)
    if c.position == 'learned':
      # Padding (position -1) reads row 0; attention ignores it anyway.
      x_BLD = x_BLD + jnp.asarray(self.wpe_PD, c.dtype)[jnp.maximum(positions_BL, 0)]
    x_BLD = self.dropout(x_BLD, deterministic=deterministic)
    return nn.with_logical_constraint(x_BLD.reshape(-1, c.n_embd), ('batch', 'embed'))

  def head(self, x_ND):
    """The last stage: the final norm and the (soft-capped) logits_NV of the blocks' output."""
    c = self.config
    x_ND = self.ln_f(x_ND)
    logits_NV = self.wte.attend(x_ND) if c.tie_embeddings else self.lm_head(x_ND)
    return nn.with_logical_constraint(layers.soft_cap(logits_NV, c.logit_softcap),
                                      ('batch', 'vocab'))


def init_params(gpt: GPT, rng: jax.Array, seq_len: int):
  """Unboxed parameters; their logical names come from `logical_axes`."""
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  return nn.meta.unbox(gpt.init(rng, tokens)['params'])


def init_cache(gpt: GPT, batch_size: int, length: int):
  """An empty KV cache for batch_size rows of up to `length` tokens: every slot marked empty
  (position -1), the write index at 0. Shapes only are traced; nothing is initialised twice."""
  return empty_cache(jax.eval_shape(functools.partial(gpt.init, decode=True), jax.random.key(0),
                                    jnp.zeros((batch_size, length), jnp.int32))['cache'])


def empty_cache(shapes):
  """The empty cache of a 'cache' collection's shapes (ShapeDtypeStructs): every slot marked
  empty (position -1), the write index at 0."""
  return jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.full(s.shape, -1 if path[-1].key == 'cached_positions' else 0,
                               s.dtype), shapes)


def logical_axes(gpt: GPT, seq_len: int):
  """The logical axis names of every parameter (a tree of PartitionSpecs), from shapes only."""
  abstract = jax.eval_shape(functools.partial(gpt.init,
                                              tokens_BL=jnp.zeros((1, seq_len), jnp.int32)),
                            jax.random.key(0))
  return nn.get_partition_spec(abstract)['params']
