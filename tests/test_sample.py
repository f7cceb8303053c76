"""Decoding: the KV cache against the uncached forward, sampling and beam search, the CLI."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli, run_main
from gpt_jax import config as config_lib, model, network, sample
from gpt_jax.errors import UserError

VARIANTS = {
    'gpt2': {},
    'llama_gqa': dict(position='rope', norm='rmsnorm', mlp='swiglu', n_kv_head=2,
                      tie_embeddings=False, bias=False),
    'mqa': dict(n_kv_head=1),
    'scan_layers': dict(scan_layers=True, n_kv_head=2),
    'local_alternate': dict(sliding_window=3, local_layers='alternate'),
}
PROMPTS = [[3, 4, 5, 6, 7], [9, 1], [2]]  # different lengths: left padding is exercised


def tiny_model(vocab_size=50, **overrides):
  c = config_lib.base_config().model
  # A large init_std makes the random model's argmax vary from token to token.
  c.update(vocab_size=vocab_size, n_layer=2, n_head=4, n_kv_head=4, n_embd=32, block_size=32,
           init_std=0.3)
  c.update(overrides)
  gpt = network.build(c)
  return gpt, model.init_params(gpt, jax.random.key(0), 8)


def uncached_greedy(gpt, params, prompt, steps, buffer=16):
  """Greedy decoding by rerunning the whole forward pass: causality makes the zeros after the
  last token irrelevant, so one compiled shape serves every step."""
  forward = jax.jit(lambda tokens: gpt.apply({'params': params}, tokens))
  tokens = np.zeros((1, buffer), np.int32)
  tokens[0, :len(prompt)] = prompt
  for t in range(len(prompt), len(prompt) + steps):
    tokens[0, t] = int(jnp.argmax(forward(tokens)[0, t - 1]))
  return tokens[0, len(prompt):len(prompt) + steps].tolist()


@pytest.mark.parametrize('variant', VARIANTS)
def test_cached_logits_equal_the_full_forward(variant):
  gpt, params = tiny_model(**VARIANTS[variant])
  tokens_BL = jax.random.randint(jax.random.key(1), (2, 12), 0, 50)
  full_BLV = jax.jit(gpt.apply)({'params': params}, tokens_BL)
  cache = model.init_cache(gpt, 2, 16)
  pieces = []
  step = jax.jit(functools.partial(gpt.apply, decode=True, mutable=['cache']))
  for start, stop in ((0, 7), (7, 8), (8, 9), (9, 12)):  # a prefill, single steps, a chunk
    positions_BL = jnp.broadcast_to(jnp.arange(start, stop), (2, stop - start))
    logits, variables = step({'params': params, 'cache': cache}, tokens_BL[:, start:stop],
                             positions_BL)
    cache = variables['cache']
    pieces.append(logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full_BLV, atol=2e-5)


@pytest.mark.parametrize('variant', VARIANTS)
def test_cached_greedy_decoding_is_the_uncached_argmax_path(variant):
  gpt, params = tiny_model(**VARIANTS[variant])
  got = sample.generate(gpt, params, PROMPTS, max_new_tokens=10)
  assert got == [uncached_greedy(gpt, params, p, 10) for p in PROMPTS]
  assert len({token for row in got for token in row}) > 2  # not a degenerate model


def test_greedy_equivalences_and_seeds():
  gpt, params = tiny_model(**VARIANTS['llama_gqa'])
  greedy = sample.generate(gpt, params, PROMPTS, max_new_tokens=8)
  run = lambda **kw: sample.generate(gpt, params, PROMPTS, max_new_tokens=8, **kw)
  assert sample.beam_search(gpt, params, PROMPTS, beam_width=1, max_new_tokens=8)[0] == greedy
  assert run(temperature=1.0, top_k=1, seed=5) == greedy
  assert run(temperature=1.0, top_p=1e-6, seed=5) == greedy
  assert run(temperature=1e-39, seed=5) == greedy
  assert run(temperature=1.0, seed=5) == run(temperature=1.0, seed=5)
  assert run(temperature=1.0, seed=5) != run(temperature=1.0, seed=6)
  assert run(temperature=1.0, seed=5) != greedy


def test_top_k_and_top_p_draw_only_from_their_sets():
  logits_V = jnp.log(jnp.asarray([0.4, 0.3, 0.15, 0.1, 0.05]))
  logits_BV = jnp.broadcast_to(logits_V, (4000, 5))
  draw = lambda **kw: np.asarray(sample.next_token(logits_BV, jax.random.key(0), temperature=1.0,
                                                   **kw))
  assert set(draw(top_k=2, top_p=1.0)) == {0, 1}
  assert set(draw(top_k=0, top_p=0.7)) == {0, 1}  # 0.4 < 0.7, 0.4 + 0.3 reaches it
  assert set(draw(top_k=0, top_p=0.71)) == {0, 1, 2}
  counts = np.bincount(draw(top_k=0, top_p=1.0), minlength=5) / 4000
  np.testing.assert_allclose(counts, [0.4, 0.3, 0.15, 0.1, 0.05], atol=0.03)


def draws(logits_V, **kw):
  """The set of tokens drawn (temperature 1 unless given) for 4000 rows of the same logits."""
  logits_BV = jnp.broadcast_to(jnp.asarray(logits_V, jnp.float32), (4000, len(logits_V)))
  kw = {'temperature': 1.0, 'top_k': 0, 'top_p': 1.0, **kw}
  return set(np.asarray(sample.next_token(logits_BV, jax.random.key(0), **kw)).tolist())


def test_top_p_keeps_the_smallest_prefix_reaching_it():
  logits_V = jnp.log(jnp.asarray([0.5, 0.2, 0.2, 0.1]))
  keep = sample.keep_mask(logits_V[None], top_k=0, top_p=0.6)
  assert np.asarray(keep).tolist() == [[True, True, False, False]]  # .5 + .2 reaches .6
  assert draws(logits_V, top_p=0.6) == {0, 1}  # id 2 ties with id 1 but comes after it


def test_ties_at_the_cut_are_broken_by_lower_id():
  assert draws([1.0, 1.0, 1.0, 0.0], top_k=2) == {0, 1}
  assert draws([0.0, 1.0, 1.0, 1.0], top_k=1) == {1}  # as argmax does
  assert draws([1.0, 1.0, 1.0, 1.0], top_p=0.5) == {0, 1}


def test_top_p_counts_an_exact_mass_prefix_whose_float32_sum_falls_short():
  logits_V = jnp.log(jnp.asarray([0.5, 0.2, 0.1, 0.1, 0.1]))
  # float32 rounding puts the first three probabilities a hair below their exact sum 0.8 ...
  assert np.cumsum(np.asarray(jax.nn.softmax(logits_V)), dtype=np.float32)[2] < np.float32(0.8)
  # ... which still reaches top_p = 0.8; id 3 would be kept if it did not.
  assert draws(logits_V, top_p=0.8) == {0, 1, 2}


def test_top_p_applies_to_the_renormalised_top_k():
  logits_V = jnp.log(jnp.asarray([0.4, 0.3, 0.15, 0.1, 0.05]))
  # Over the top 2, token 0 has 0.4 / 0.7 > 0.5 of the mass (over all tokens it would not).
  assert draws(logits_V, top_k=2, top_p=0.5) == {0}
  assert draws(logits_V, top_k=3, top_p=0.8) == {0, 1}


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_a_tiny_temperature_is_greedy(dtype):
  logits_BV = 3 * jax.random.normal(jax.random.key(2), (256, 50))
  hot_B = jax.random.randint(jax.random.key(3), (256,), 0, 50)
  logits_BV = logits_BV.at[jnp.arange(256), hot_B].set(logits_BV.max(-1) + 0.5).astype(dtype)
  sorted_BV = np.sort(np.asarray(logits_BV, np.float32), axis=-1)
  assert np.all(sorted_BV[:, -1] > sorted_BV[:, -2])  # a unique max: greedy is well defined
  greedy_B = np.asarray(jnp.argmax(logits_BV, axis=-1))
  draw = lambda temperature, **kw: np.asarray(sample.next_token(
      logits_BV, jax.random.key(3), temperature=temperature, **{'top_k': 0, 'top_p': 1.0, **kw}))
  for temperature in (1e-39, 1e-30, 1e-8):  # 1e-39 is subnormal in float32, 1/1e-39 overflows
    np.testing.assert_array_equal(draw(temperature), greedy_B)
    np.testing.assert_array_equal(draw(temperature, top_k=5, top_p=0.9), greedy_B)
  assert np.mean(draw(1.0) == greedy_B) < 0.9  # T = 1 still samples


@pytest.mark.parametrize('kwargs', [
    dict(temperature=0.0), dict(temperature=1.0), dict(temperature=1.0, top_k=5),
    dict(temperature=1.0, top_p=0.9), dict(temperature=1e35), dict(temperature=1e-39)])
def test_next_token_never_draws_ids_beyond_num_tokens(kwargs):
  logits_BV = jax.random.normal(jax.random.key(4), (1000, 64)).at[:, 40:].add(5.0)
  kwargs = {'top_k': 0, 'top_p': 1.0, **kwargs}
  draw = lambda **kw: np.asarray(sample.next_token(logits_BV, jax.random.key(5), **kwargs, **kw))
  assert draw().max() >= 40 and draw(num_tokens=40).max() < 40


def logits_favouring_padded_ids():
  """A tiny model of vocabulary 64 whose likeliest next tokens are mostly ids >= 40."""
  gpt, params = tiny_model(vocab_size=64, **VARIANTS['llama_gqa'])
  head_DV = params['lm_head']['kernel']
  return gpt, {**params, 'lm_head': {'kernel': head_DV.at[:, 40:].multiply(3.0)}}


def test_ids_beyond_the_tokenizer_are_never_generated():
  gpt, params = logits_favouring_padded_ids()
  run = lambda **kw: sample.generate(gpt, params, PROMPTS * 4, max_new_tokens=6, **kw)
  greedy = run()
  assert np.mean(np.asarray(greedy) >= 40) > 0.5  # unmasked, the padded ids win
  assert run(num_tokens=64) == greedy  # num_tokens >= the model's vocabulary changes nothing
  assert np.max(run(num_tokens=40)) < 40
  assert max(np.max(run(num_tokens=40, temperature=1.0, seed=seed)) for seed in range(4)) < 40
  beam = lambda **kw: sample.beam_search(gpt, params, PROMPTS, max_new_tokens=6, **kw)[0]
  assert np.max(beam(beam_width=4, num_tokens=40)) < 40
  # 2W = 8 candidates from 3 tokens: the beams get padded ids as filler, but never win.
  assert np.max(beam(beam_width=4, num_tokens=3)) < 3


class PaddedVocabTokenizer:
  """40 pieces for a 64-id model; decoding an id it lacks fails, as sentencepiece's does."""
  vocab_size, eos_id = 40, 0

  def encode_batch(self, texts):
    return [[3, 4, 5] for _ in texts]

  def decode(self, ids):
    if max(ids, default=0) >= self.vocab_size:
      raise IndexError('piece id is out of range')
    return ' '.join(map(str, ids))


@pytest.mark.parametrize('kwargs', [dict(temperature=1.0, num_samples=8), dict(beam_width=3)])
def test_complete_decodes_only_the_tokenizers_ids(kwargs):
  gpt, params = logits_favouring_padded_ids()
  texts = sample.complete(gpt, params, PaddedVocabTokenizer(), ['a', 'b'], max_new_tokens=6,
                          **kwargs)
  assert len(texts) == (16 if 'num_samples' in kwargs else 2)


def test_beam_search_finds_the_exhaustive_optimum():
  # With W >= V^(N-1) beams nothing is ever pruned, so beam search is exhaustive search.
  V, N = 5, 3
  gpt, params = tiny_model(vocab_size=V)
  prompt = [1, 2]
  seqs = np.asarray(list(itertools.product(range(V), repeat=N)), np.int32)
  tokens = jnp.asarray(np.concatenate([np.tile(prompt, (len(seqs), 1)), seqs], axis=1))
  logp = jax.nn.log_softmax(gpt.apply({'params': params}, tokens)[:, len(prompt) - 1:-1], axis=-1)
  total = np.asarray(jnp.take_along_axis(logp, tokens[:, len(prompt):, None], axis=-1).sum((1, 2)))
  best, score = sample.beam_search(gpt, params, [prompt], beam_width=V ** (N - 1),
                                   max_new_tokens=N, length_penalty=0.0)
  assert best[0] == seqs[np.argmax(total)].tolist()
  assert score[0] == pytest.approx(total.max(), abs=1e-4)
  # Fewer beams can only score lower, and greedy lowest of all here.
  assert sample.beam_search(gpt, params, [prompt], beam_width=2, max_new_tokens=N,
                            length_penalty=0.0)[1][0] <= score[0] + 1e-5


def test_eos_ends_a_row():
  gpt, params = tiny_model()
  greedy = sample.generate(gpt, params, PROMPTS, max_new_tokens=10)
  eos = greedy[0][3]
  stopped = sample.generate(gpt, params, PROMPTS, max_new_tokens=10, eos_id=eos)
  for row, full in zip(stopped, greedy):
    assert row == (full[:full.index(eos)] if eos in full else full)


@pytest.mark.parametrize('kwargs, message', [
    (dict(prompts=[[]]), 'a prompt is empty'),
    (dict(prompts=[list(range(32))]), 'longer than the model\'s context of 32'),
    (dict(prompts=[[1, 2]], max_new_tokens=31), 'lower the number of new tokens to 30'),
    (dict(top_p=0.0), r'top_p=0.0 must be in \(0, 1\]'),
    (dict(top_p=1.5), r'top_p=1.5 must be in \(0, 1\]'),
    (dict(temperature=-1.0), 'temperature=-1.0 must be >= 0'),
    (dict(temperature=float('nan')), 'temperature=nan must be >= 0'),
])
def test_bad_decoding_settings_are_user_errors(kwargs, message):
  gpt, params = tiny_model()
  kwargs = {'prompts': [[1, 2]], 'max_new_tokens': 4, **kwargs}
  with pytest.raises(UserError, match=message):
    sample.generate(gpt, params, **kwargs)


@pytest.fixture(scope='module')
def trained(tiny_base):
  """A run to sample from: conftest's tiny_base (tiny.py on the small corpus), read only."""
  return tiny_base


def run_sample(*args):
  return run_cli(*args, module='gpt_jax.sample')


def test_cli_samples_and_beams(trained):
  out = run_sample(f'--workdir={trained}', '--prompt=ROMEO:', '--prompt=To be', '--max_tokens=8',
                   '--num_samples=2', '--seed=1')
  assert out.returncode == 0, out.stderr
  assert out.stdout.count('--- sample') == 4
  assert out.stdout.split('--- sample 1 ---\n')[1].startswith('ROMEO:')
  again = run_sample(f'--workdir={trained}', '--prompt=ROMEO:', '--prompt=To be', '--max_tokens=8',
                     '--num_samples=2', '--seed=1')
  assert again.stdout == out.stdout
  beam = run_sample(f'--workdir={trained}', '--prompt=ROMEO:', '--beam_width=3', '--max_tokens=8')
  assert beam.returncode == 0 and beam.stdout.count('--- sample') == 1, beam.stderr


@pytest.mark.parametrize('args, message', [
    (['--prompt='], '--prompt is empty'),
    (['--prompt=' + 'To be, or not to be. ' * 40], "longer than the model's context of 64"),
    (['--prompt=Hi', '--top_p=0'], r'top_p=0.0 must be in \(0, 1\]'),
    (['--prompt=Hi', '--top_p=2'], r'top_p=2.0 must be in \(0, 1\]'),
    (['--prompt=Hi', '--max_tokens=many'], "argument --max_tokens: invalid int value: 'many'"),
    (['--prompt=Hi', '--max_tokens=0'], '--max_tokens=0 must be >= 1'),
])
def test_cli_bad_input_is_one_line(trained, args, message):
  """Through the command's main() in this process; test_cli_workdir_that_is_not_a_run runs the
  command itself."""
  out = run_main(f'--workdir={trained}', *args, module='gpt_jax.sample')
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), out.stderr
  assert __import__('re').search(message, lines[0]), lines[0]


def test_cli_workdir_that_is_not_a_run(tmp_path):
  out = run_sample(f'--workdir={tmp_path}', '--prompt=Hi')
  assert out.returncode == 2 and out.stderr.startswith('error: ') and 'no config.json' in out.stderr
