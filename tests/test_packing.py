"""Packed rows (several examples per row, segment ids) and special-token embeddings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import attention, config, losses, model, network

SMALL_MODEL = dict(vocab_size=64, n_layer=2, n_head=4, n_kv_head=4, n_embd=32, block_size=16)
ROPE_GQA = dict(SMALL_MODEL, position='rope', norm='rmsnorm', mlp='swiglu', bias=False,
                tie_embeddings=False, n_kv_head=2)
LENGTHS = (5, 7)  # two examples packed into one row of 16, then 4 tokens of padding


def build(**overrides):
  c = config.base_config().model
  c.update(overrides)
  gpt = network.build(c)
  return gpt, model.init_params(gpt, jax.random.key(0), 16)


def packed_row():
  """(tokens_1L, positions_1L, segment_ids_1L) of the packed row, and the examples' tokens."""
  tokens = jax.random.randint(jax.random.key(1), (1, 16), 0, 64, dtype=jnp.int32)
  segment_ids = np.zeros(16, np.int32)
  positions = np.arange(16)
  start = 0
  for i, n in enumerate(LENGTHS):
    segment_ids[start:start + n] = i + 1
    positions[start:start + n] -= start
    start += n
  positions[start:] -= start
  examples = [tokens[:, s:s + n] for s, n in zip(np.cumsum((0,) + LENGTHS[:-1]), LENGTHS)]
  return tokens, jnp.asarray(positions[None]), jnp.asarray(segment_ids[None]), examples


def logits_and_grads(gpt, params, tokens_BL, mask_BL, **kwargs):
  """Logits and the gradient of the summed next-token loss over the unmasked targets."""
  def loss(params):
    logits_BLV = gpt.apply({'params': params}, tokens_BL, **kwargs)
    return losses.next_token_loss(logits_BLV[:, :-1], tokens_BL[:, 1:], mask_BL[:, :-1],
                                  normalizer=1.0)[0], logits_BLV
  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return logits, grads


@pytest.mark.parametrize('impl', ['reference', 'einsum', 'xla'])
@pytest.mark.parametrize('overrides', [SMALL_MODEL, ROPE_GQA], ids=['learned', 'rope_gqa'])
def test_packed_row_equals_examples_alone(overrides, impl):
  """Logits of each packed example = the example run alone; the loss gradient over the packed
  row = the sum of the examples' gradients."""
  gpt, params = build(**dict(overrides, attention=impl))
  tokens, positions, segment_ids, examples = packed_row()
  # A target counts if it is the next token of the same example (not padding).
  mask = (segment_ids[:, :-1] == segment_ids[:, 1:]) & (segment_ids[:, :-1] > 0)
  packed_logits, packed_grads = logits_and_grads(
      gpt, params, tokens, jnp.pad(mask, ((0, 0), (0, 1))), positions_BL=positions,
      segment_ids_BL=segment_ids)
  start, summed = 0, jax.tree.map(jnp.zeros_like, params)
  for example in examples:
    logits, grads = logits_and_grads(gpt, params, example, jnp.ones_like(example))
    np.testing.assert_allclose(packed_logits[:, start:start + example.shape[1]], logits, atol=1e-5)
    summed = jax.tree.map(jnp.add, summed, grads)
    start += example.shape[1]
  for want, got in zip(jax.tree.leaves(summed), jax.tree.leaves(packed_grads)):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_packing_through_scanned_rematerialised_layers():
  """nn.scan and nn.remat pass segment ids down: the same logits as plain layers."""
  tokens, positions, segment_ids, _ = packed_row()
  apply = lambda gpt, params: gpt.apply({'params': params}, tokens, positions,
                                        segment_ids_BL=segment_ids)
  gpt, params = build(**SMALL_MODEL)
  scanned, scanned_params = build(**dict(SMALL_MODEL, scan_layers=True, remat='full'))
  stacked = {k: v for k, v in params.items() if not k.startswith('h_')}
  stacked['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), params['h_0'], params['h_1'])
  assert jax.tree.structure(stacked) == jax.tree.structure(scanned_params)
  np.testing.assert_allclose(apply(scanned, stacked), apply(gpt, params), atol=1e-5)
  assert not np.allclose(apply(gpt, params), gpt.apply({'params': params}, tokens, positions))


def test_packing_refused_when_decoding():
  gpt, params = build(**SMALL_MODEL)
  tokens, positions, segment_ids, _ = packed_row()
  cache = model.init_cache(gpt, 1, 16)
  with pytest.raises(ValueError, match='not supported with decode=True'):
    gpt.apply({'params': params, 'cache': cache}, tokens, positions, decode=True,
              segment_ids_BL=segment_ids, mutable=['cache'])


@pytest.mark.parametrize('impl', ['einsum', 'xla'])
@pytest.mark.parametrize('K', [8, 2, 1])
@pytest.mark.parametrize('window', [0, 3])
def test_attention_paths_agree_with_segments(K, window, impl):
  B, L, H, E = 2, 24, 8, 16
  kq, kk, kv, ks = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(kq, (B, L, H, E)), jax.random.normal(kk, (B, L, K, E)),
             jax.random.normal(kv, (B, L, K, E)))
  # Sorted random ids: contiguous segments of random lengths, different in each row.
  segment_ids = jnp.sort(jax.random.randint(ks, (B, L), 0, 5), axis=1)

  def out_and_grads(impl):
    run = lambda q, k, v: attention.attention(q, k, v, implementation=impl, window=window,
                                              segment_ids_BL=segment_ids)
    loss = lambda q, k, v: jnp.sum(jnp.sin(run(q, k, v)))
    return jax.jit(lambda q, k, v: (run(q, k, v), jax.grad(loss, (0, 1, 2))(q, k, v)))(q, k, v)

  (want, want_grads), (got, got_grads) = out_and_grads('reference'), out_and_grads(impl)
  np.testing.assert_allclose(got, want, atol=2e-5)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, atol=5e-5)
  # Segments change the answer: the first position of a row's second segment sees itself alone.
  first = int(jnp.argmax(segment_ids[0] != segment_ids[0, 0]))
  unpacked = attention.reference_attention(q, k, v, window=window)
  np.testing.assert_allclose(want[0, first], jnp.repeat(v[0, first], H // K, axis=0), atol=1e-5)
  assert not np.allclose(want[0, first], unpacked[0, first])


def test_segment_mask_is_causal_and_windowed_within_examples():
  segment_ids = jnp.array([[1, 1, 1, 2, 2, 0]])
  mask = attention.causal_mask(6, 6, window=2) & attention.segment_mask(segment_ids)[0]
  np.testing.assert_array_equal(mask, [[1, 0, 0, 0, 0, 0],
                                       [1, 1, 0, 0, 0, 0],
                                       [0, 1, 1, 0, 0, 0],
                                       [0, 0, 0, 1, 0, 0],
                                       [0, 0, 0, 1, 1, 0],
                                       [0, 0, 0, 0, 0, 1]])


def test_special_embeddings_replace_token_embeddings():
  """Ids >= vocab_size read special_embeddings_SD: the hidden states of a model whose token
  table has those rows appended, and gradient only in the rows used."""
  gpt, params = build(**SMALL_MODEL)
  special_SD = jax.random.normal(jax.random.key(2), (3, 32)) * 0.02
  tokens = jnp.array([[64, 5, 9, 65, 7, 3, 64, 11]])  # special rows 0 and 1 used, row 2 not
  hidden = jax.jit(lambda special_SD: gpt.apply({'params': params}, tokens, hidden=True,
                                                special_embeddings_SD=special_SD))
  wider, _ = build(**dict(SMALL_MODEL, vocab_size=67))
  wider_params = dict(params, wte={'embedding': jnp.concatenate(
      [params['wte']['embedding'], special_SD])})
  np.testing.assert_allclose(hidden(special_SD),
                             wider.apply({'params': wider_params}, tokens, hidden=True), atol=1e-6)
  ordinary = jnp.where(tokens >= 64, 1, tokens)
  np.testing.assert_array_equal(gpt.apply({'params': params}, ordinary, hidden=True,
                                          special_embeddings_SD=special_SD),
                                gpt.apply({'params': params}, ordinary, hidden=True))
  grad_SD = jax.grad(lambda s: jnp.sum(jnp.sin(hidden(s))))(special_SD)
  assert np.all(np.abs(grad_SD[:2]).sum(-1) > 0)
  np.testing.assert_array_equal(grad_SD[2], 0)
