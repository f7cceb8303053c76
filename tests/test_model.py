"""The model: shapes, causality, attention paths, GQA, RoPE, init loss, parameter and FLOP
counts."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT

from gpt_jax import attention, cli, config, flops, model, network
from gpt_jax.errors import UserError

GPT2 = dict(vocab_size=97, n_layer=2, n_head=4, n_kv_head=4, n_embd=32, block_size=32)
LLAMA = dict(GPT2, position='rope', norm='rmsnorm', mlp='swiglu', bias=False,
             tie_embeddings=False, n_kv_head=2)
VARIANTS = {
    'gpt2': GPT2,
    'llama_gqa': LLAMA,
    'mqa': dict(LLAMA, n_kv_head=1),
    'scan_remat': dict(GPT2, scan_layers=True, remat='full'),
    'local_alternate': dict(GPT2, sliding_window=4, local_layers='alternate'),
    'reference_attention': dict(LLAMA, attention='reference'),
    'head_dim': dict(GPT2, head_dim=16),
    'speedrun': dict(LLAMA, qk_norm=True, mlp='relu2', logit_softcap=15.0, zero_init_proj=True),
}


def model_config(**overrides):
  c = config.base_config().model
  c.update(overrides)
  return c


def build(**overrides):
  """(config, jitted apply, params) of a small model."""
  cfg = model_config(**overrides)
  gpt = network.build(cfg)
  params = jax.jit(model.init_params, static_argnums=(0, 2))(gpt, jax.random.PRNGKey(0), 16)
  return cfg, jax.jit(gpt.apply, static_argnames='deterministic'), params


def random_tokens(shape, vocab=97, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, vocab, dtype=jnp.int32)


@pytest.mark.parametrize('name', VARIANTS)
def test_shapes_and_param_count(name):
  cfg, gpt, params = build(**VARIANTS[name])
  logits = gpt({'params': params}, random_tokens((3, 16)))
  assert logits.shape == (3, 16, 97) and logits.dtype == jnp.float32
  assert sum(p.size for p in jax.tree.leaves(params)) == flops.param_count(cfg)


@pytest.mark.parametrize('name', ['gpt2', 'llama_gqa', 'local_alternate'])
def test_causal(name):
  """Changing a token never changes the logits at earlier positions."""
  _, gpt, params = build(**VARIANTS[name])
  tokens = random_tokens((2, 16))
  changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % 97)
  a = gpt({'params': params}, tokens)
  b = gpt({'params': params}, changed)
  np.testing.assert_array_equal(a[:, :9], b[:, :9])
  assert not np.allclose(a[:, 9:], b[:, 9:])


def qkv(B=2, L=24, H=8, K=2, E=16, seed=0):
  kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(kq, (B, L, H, E)), jax.random.normal(kk, (B, L, K, E)),
          jax.random.normal(kv, (B, L, K, E)))


@pytest.mark.parametrize('impl', ['xla', 'einsum'])
@pytest.mark.parametrize('K', [8, 2, 1])
@pytest.mark.parametrize('window', [0, 5])
def test_attention_paths_agree(K, window, impl):
  q, k, v = qkv(K=K)
  def out_and_grads(impl):
    loss = lambda q, k, v: jnp.sum(jnp.sin(attention.attention(q, k, v, implementation=impl,
                                                               window=window)))
    out = lambda q, k, v: attention.attention(q, k, v, implementation=impl, window=window)
    return jax.jit(lambda q, k, v: (out(q, k, v),
                                    jax.grad(loss, argnums=(0, 1, 2))(q, k, v)))(q, k, v)

  (ref, ref_grads), (xla, xla_grads) = out_and_grads('reference'), out_and_grads(impl)
  np.testing.assert_allclose(ref, xla, atol=2e-5)
  for g_ref, g_xla in zip(ref_grads, xla_grads):
    np.testing.assert_allclose(g_ref, g_xla, atol=5e-5)


def test_window_covering_sequence_is_full_attention():
  q, k, v = qkv()
  full = attention.reference_attention(q, k, v)
  for impl in ('reference', 'xla', 'einsum'):
    np.testing.assert_allclose(attention.attention(q, k, v, implementation=impl, window=24), full,
                               atol=2e-5)


def test_window_limits_what_a_position_sees():
  mask = np.asarray(attention.causal_mask(6, 6, window=3))
  np.testing.assert_array_equal(mask[5], [0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(mask[1], [1, 1, 0, 0, 0, 0])


def test_gqa_equals_mha_with_repeated_kv_heads():
  q, k, v = qkv(H=8, K=2)
  gqa = attention.reference_attention(q, k, v)
  mha = attention.reference_attention(q, jnp.repeat(k, 4, axis=2), jnp.repeat(v, 4, axis=2))
  np.testing.assert_allclose(gqa, mha, atol=1e-6)


def test_gqa_model_equals_mha_model_with_shared_kv_weights():
  """A GQA model equals the multi-head model whose key/value heads repeat the GQA ones."""
  _, gqa, params = build(**dict(GPT2, n_kv_head=2))
  _, mha, _ = build(**GPT2)
  mha_params = jax.tree.map(lambda x: x, params)
  for i in range(GPT2['n_layer']):
    for name in ('key', 'value'):
      layer = mha_params[f'h_{i}']['attn'][name]
      layer['kernel'] = jnp.repeat(layer['kernel'], 2, axis=1)  # (D, K, E) -> (D, H, E)
      layer['bias'] = jnp.repeat(layer['bias'], 2, axis=0)
  tokens = random_tokens((2, 16))
  np.testing.assert_allclose(gqa({'params': params}, tokens), mha({'params': mha_params}, tokens),
                             atol=1e-5)


def test_rope_depends_only_on_relative_position():
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 16))
  score = lambda i, j: jnp.sum(model.rope(q, jnp.array([[i]]), 1e4) *
                               model.rope(k, jnp.array([[j]]), 1e4))
  np.testing.assert_allclose(score(7, 3), score(107, 103), rtol=1e-4)
  np.testing.assert_allclose(score(0, 0), jnp.sum(q * k), rtol=1e-5)
  assert abs(score(7, 3) - score(7, 4)) > 1e-3


def test_initial_loss_is_log_vocab():
  from gpt_jax import losses
  _, gpt, params = build(**dict(GPT2, vocab_size=512))
  tokens = random_tokens((4, 17), vocab=512)
  logits = gpt({'params': params}, tokens[:, :-1])
  loss, _ = losses.next_token_loss(logits, tokens[:, 1:], jnp.ones((4, 16)))
  assert abs(float(loss) - math.log(512)) < 0.05


def test_bfloat16_compute_tracks_float32():
  _, gpt32, params = build(**GPT2)
  _, gpt16, _ = build(**dict(GPT2, dtype='bfloat16'))
  tokens = random_tokens((2, 16))
  a = gpt32({'params': params}, tokens)
  b = gpt16({'params': params}, tokens)
  assert b.dtype == jnp.bfloat16
  np.testing.assert_allclose(a, b.astype(jnp.float32), atol=0.05)


def test_dropout_changes_training_forward_only():
  _, gpt, params = build(**dict(GPT2, dropout=0.5))
  tokens = random_tokens((2, 16))
  eval_a = gpt({'params': params}, tokens)
  eval_b = gpt({'params': params}, tokens)
  train = gpt({'params': params}, tokens, deterministic=False,
                    rngs={'dropout': jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(eval_a, eval_b)
  assert not np.allclose(eval_a, train)


def test_logical_axes_name_every_parameter():
  cfg, gpt, _ = build(**LLAMA)
  axes = model.logical_axes(network.build(cfg), 16)
  assert tuple(axes['wte']['embedding']) == ('vocab', 'embed')
  assert tuple(axes['h_0']['attn']['key']['kernel']) == ('embed', 'kv_heads', 'kv')
  assert tuple(axes['h_0']['mlp']['gate']['kernel']) == ('embed', 'mlp')
  assert tuple(axes['lm_head']['kernel']) == ('embed', 'vocab')


def test_gpt2_124m_param_count_golden():
  """The published GPT-2 small: 124,439,808 parameters (vocab 50257, context 1024)."""
  cfg = model_config(vocab_size=50257, n_layer=12, n_head=12, n_kv_head=12, n_embd=768,
                     block_size=1024)
  assert flops.param_count(cfg) == 124_439_808
  assert flops.param_count(cfg, embeddings=False) == 124_439_808 - 50257 * 768 - 1024 * 768
  # 6·(N_nonembedding + the tied head) + 12·layers·d·T (PaLM's MFU convention)
  expected = 6 * (85_056_000 + 50257 * 768) + 12 * 12 * 768 * 1024
  assert flops.param_count(cfg, embeddings=False) == 85_056_000
  assert flops.flops_per_token(cfg, 1024) == expected


def test_presets_build_and_count():
  experiments = os.path.join(ROOT, 'experiments')
  gpt2 = cli.load_experiment(os.path.join(experiments, 'gpt2.py'))
  model.validate(gpt2.model, gpt2.seq_len)
  assert round(flops.param_count(gpt2.model) / 1e6) == 124  # 50304 rows: nanoGPT's padded vocab
  gpu = cli.load_experiment(os.path.join(experiments, 'bench_gpu.py'))  # tpu/bench_gpu.sh
  model.validate(gpu.model, gpu.seq_len)
  assert flops.param_count(gpu.model) == flops.param_count(gpt2.model)
  assert (gpu.model.dtype, gpu.model.attention, gpu.seq_len) == ('bfloat16', 'cudnn', 1024)
  expected_millions = {'small': 125, 'medium': 350, 'large': 760, 'xl': 1300, '2.7b': 2700,
                       '6.7b': 6700, '13b': 13000, '175b': 175000}
  for size, millions in expected_millions.items():
    c = cli.load_experiment(os.path.join(experiments, f'gpt3.py:{size}'))
    model.validate(c.model, c.seq_len)
    assert abs(flops.param_count(c.model) / 1e6 - millions) / millions < 0.06, size
  with pytest.raises(UserError, match='unknown GPT-3 size'):
    cli.load_experiment(os.path.join(experiments, 'gpt3.py:huge'))


@pytest.mark.parametrize('overrides, message', [
    (dict(n_embd=30, n_head=4), 'not divisible by model.n_head'),
    (dict(n_head=4, n_kv_head=3), 'not divisible by model.n_kv_head'),
    (dict(mlp='relu'), "model.mlp='relu' is not one of"),
    (dict(position='rope', n_embd=36, n_head=4), 'even head size'),
    (dict(scan_layers=True, sliding_window=4, local_layers='alternate'), 'identical layers'),
])
def test_bad_model_configs(overrides, message):
  with pytest.raises(UserError, match=message):
    model.validate(model_config(**dict(GPT2, **overrides)), seq_len=16)


def test_seq_len_beyond_position_table():
  with pytest.raises(UserError, match='beyond the learned position table'):
    model.validate(model_config(**GPT2), seq_len=33)
  model.validate(model_config(**dict(GPT2, position='rope')), seq_len=33)  # RoPE has no table


@pytest.mark.parametrize('z_loss, softcap', [(0.0, 0.0), (1e-2, 0.0), (1e-2, 3.0)])
def test_fused_head_loss_equals_loss_of_logits(z_loss, softcap):
  """losses.head_next_token_loss (chunked, gradients fused) = next_token_loss of
  soft_cap(x · Wᵀ)."""
  from gpt_jax import layers
  from gpt_jax import losses
  B, L, D, V = 2, 24, 16, 40
  kx, kw, kt, km = jax.random.split(jax.random.key(0), 4)
  x_ND, w_VD = jax.random.normal(kx, (B * L, D)), jax.random.normal(kw, (V, D))
  targets_BL = jax.random.randint(kt, (B, L), 0, V)
  mask_BL = jax.random.bernoulli(km, 0.8, (B, L)).astype(jnp.float32)
  plain = lambda x, w: losses.next_token_loss(
      layers.soft_cap(x @ w.T, softcap).reshape(B, L, V), targets_BL, mask_BL, z_loss=z_loss)
  fused = lambda x, w: losses.head_next_token_loss(x, w, targets_BL, mask_BL, z_loss=z_loss,
                                                   logit_softcap=softcap, chunk=16)
  (want, want_terms), want_grads = jax.value_and_grad(plain, (0, 1), has_aux=True)(x_ND, w_VD)
  (got, got_terms), got_grads = jax.jit(jax.value_and_grad(fused, (0, 1), has_aux=True))(x_ND, w_VD)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for k in want_terms:
    np.testing.assert_allclose(got_terms[k], want_terms[k], rtol=1e-5, atol=1e-7)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def _reference_logits(p, tokens, c):
  """A float64 numpy GPT-2-style forward (learned positions, LayerNorm, MHA) with the speedrun's
  options: QK-norm, GELU or squared ReLU, a soft-capped, tied or untied head."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  layer_norm = lambda x, n: ((x - x.mean(-1, keepdims=True))
                             / np.sqrt(x.var(-1, keepdims=True) + c.norm_eps) * n['scale']
                             + n['bias'])
  rms_norm = lambda x, n: x / np.sqrt(np.square(x).mean(-1, keepdims=True) + c.norm_eps) * n[
      'scale']
  dense = lambda x, d, n_in=1: np.tensordot(x, d['kernel'], n_in) + d['bias']
  L = tokens.shape[1]
  x = p['wte']['embedding'][tokens] + p['wpe'][:L]
  for i in range(c.n_layer):
    b = p[f'h_{i}']
    h = layer_norm(x, b['ln_1'])
    q, k, v = (dense(h, b['attn'][name]) for name in ('query', 'key', 'value'))
    if c.qk_norm:
      q, k = rms_norm(q, b['attn']['query_norm']), rms_norm(k, b['attn']['key_norm'])
    scores = np.einsum('blhe,bshe->bhls', q, k) / np.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones((L, L), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    x = x + dense(np.einsum('bhls,bshe->blhe', weights, v), b['attn']['out'], 2)
    u = dense(layer_norm(x, b['ln_2']), b['mlp']['fc'])
    u = (np.square(np.maximum(u, 0)) if c.mlp == 'relu2' else
         0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u**3))))
    x = x + dense(u, b['mlp']['proj'])
  x = layer_norm(x, p['ln_f'])
  logits = (x @ p['wte']['embedding'].T if c.tie_embeddings else x @ p['lm_head']['kernel'])
  return c.logit_softcap * np.tanh(logits / c.logit_softcap) if c.logit_softcap else logits


@pytest.mark.parametrize('options', [
    {},
    dict(qk_norm=True),
    dict(mlp='relu2'),
    dict(logit_softcap=2.0, tie_embeddings=False),
    dict(qk_norm=True, mlp='relu2', logit_softcap=3.0, zero_init_proj=True),
])
def test_speedrun_options_compute_the_reference_forward(options):
  """Each option of the modded-nanogpt recipe against a float64 numpy forward, on parameters
  moved off their init (so norm scales differ from 1 and zero-initialised kernels from 0)."""
  cfg, apply, params = build(**dict(GPT2, **options))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree.unflatten(treedef, [a + 0.3 * jax.random.normal(k, a.shape)
                                        for a, k in zip(leaves, keys)])
  tokens = random_tokens((2, 12))
  logits = apply({'params': params}, tokens)
  np.testing.assert_allclose(logits, _reference_logits(params, np.asarray(tokens), cfg),
                             rtol=2e-4, atol=2e-4)
  if cfg.logit_softcap:
    assert np.abs(logits).max() < cfg.logit_softcap


def test_zero_init_proj_zeroes_only_the_projections_into_the_residual():
  _, _, default = build(**GPT2)
  _, apply, zeroed = build(**dict(GPT2, zero_init_proj=True))
  flat_default, flat_zeroed = (dict(jax.tree_util.tree_leaves_with_path(p))
                               for p in (default, zeroed))
  for path, value in flat_zeroed.items():
    name = jax.tree_util.keystr(path)
    if name.endswith("['out']['kernel']") or name.endswith("['proj']['kernel']"):
      assert not np.any(value), name
      assert np.std(flat_default[path]) > 0.005, name
    else:
      np.testing.assert_array_equal(value, flat_default[path], err_msg=name)
  # Every block starts as the identity: the logits are those of the embeddings alone.
  tokens = random_tokens((1, 8))
  x = zeroed['wte']['embedding'][tokens] + zeroed['wpe'][:8]
  x = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(apply({'params': zeroed}, tokens), x @ zeroed['wte']['embedding'].T,
                             rtol=1e-4, atol=1e-5)
