"""The reward model (objective 'reward'): its loss, where it reads a score, and whole runs."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, TINY
from gpt_jax import cli, model, network, objectives, preferences, runs, sharding
from gpt_jax import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError
from gpt_jax.objectives import reward



def test_pair_loss_accuracy_and_margin_against_numpy():
  chosen = np.array([2.0, -1.0, 0.5, 30.0, -40.0], np.float32)
  rejected = np.array([1.0, 1.0, 0.5, -30.0, 40.0], np.float32)
  got = reward.pair_losses(jnp.asarray(chosen), jnp.asarray(rejected))
  margin = chosen.astype(np.float64) - rejected
  np.testing.assert_allclose(got['loss'], np.log1p(np.exp(-margin)), rtol=1e-6)
  np.testing.assert_array_equal(got['correct'], [1, 0, 0, 1, 0])
  np.testing.assert_allclose(got['margin'], margin)


def test_score_reads_the_last_token_and_ignores_left_padding():
  """A row scored as itself equals the same row left-padded with positions -1 (how PPO scores
  its rollouts), and both equal the head applied to the model's hidden state at that token."""
  config = cli.load_experiment(TINY).model
  config.update(vocab_size=64, n_embd=32, n_head=2, n_kv_head=2)
  gpt = network.build(config)
  params = {'gpt': model.init_params(gpt, jax.random.key(0), 16),
            'head': reward.init_scalar_head(jax.random.key(1), config)}
  tokens = np.random.default_rng(0).integers(1, 64, (2, 10)).astype(np.int32)
  last = np.array([9, 6], np.int32)
  score = jax.jit(lambda *args: reward.scores(gpt, params, *args))
  plain = score(tokens, last)
  padded = np.zeros((2, 14), np.int32)
  padded[:, 4:] = tokens
  positions = np.concatenate([np.full((2, 4), -1), np.tile(np.arange(10), (2, 1))], 1)
  np.testing.assert_allclose(score(padded, last + 4, positions), plain, atol=1e-5)
  hidden = gpt.apply({'params': params['gpt']}, tokens[1:, :7], hidden=True)[-1]
  np.testing.assert_allclose(plain[1], reward.scalar_head(params['head'], hidden[None])[0],
                             rtol=1e-5)


def test_a_reward_model_learns_the_pairs_and_is_normalised(tiny_reward):
  with open(os.path.join(tiny_reward, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert records[0]['accuracy'] <= records[-1]['accuracy']
  assert records[-1]['val_accuracy'] >= 0.9 and records[-1]['val_margin'] > 1
  assert records[-1]['val_loss'] < 0.05 < records[0]['val_loss']
  # the normalised model gives the training pairs' chosen answers a mean score of 0
  config = cli.load_experiment(os.path.join(ROOT, 'experiments', 'reward.py'))
  with open(os.path.join(tiny_reward, 'config.json')) as f:
    config.update_from_flattened_dict({'data.tasks': json.load(f)['data']['tasks']})
  config.update(seq_len=48, data=dict(held_out_tasks=''), preference=dict(held_out=0.25))
  tokenizer = tokenizer_lib.load(tokenizer_lib.find(tiny_reward))
  model_config = json.load(open(os.path.join(tiny_reward, 'config.json')))['model']
  config.model.update(model_config)
  rm = reward.load_reward_model(tiny_reward, 'ppo.reward_model', config, tokenizer,
                                mesh=sharding.data_parallel_mesh())
  train_pairs, _ = preferences.read_splits(config)
  arrays = preferences.encode_pairs(train_pairs, tokenizer, 48)
  chosen = rm(arrays['tokens'][:, 0], arrays['last'][:, 0])
  assert abs(float(np.mean(np.asarray(chosen, np.float64)))) < 1e-4
  with open(os.path.join(tiny_reward, reward.NORMALIZATION)) as f:
    assert json.load(f)['mean_chosen_score_before'] != 0


def test_only_a_finished_tiny_reward_loads_as_a_reward_model(tiny_base, tiny_reward, tmp_path):
  config = cli.load_experiment(TINY)
  tokenizer = tokenizer_lib.load(tokenizer_lib.find(tiny_base))
  mesh = sharding.data_parallel_mesh()
  with pytest.raises(UserError, match=r"ppo.reward_model='.*' is an objective='lm' run, not a "
                                      'reward model; train one with --config.objective=reward'):
    reward.load_reward_model(tiny_base, 'ppo.reward_model', config, tokenizer, mesh=mesh)
  unfinished = tmp_path / 'unfinished'
  os.makedirs(unfinished)
  with open(os.path.join(tiny_reward, 'config.json')) as f:
    (unfinished / 'config.json').write_text(f.read())
  with pytest.raises(UserError, match='has no reward_normalization.json: the reward model has '
                                      'not finished training'):
    reward.load_reward_model(str(unfinished), 'ppo.reward_model', config, tokenizer, mesh=mesh)


def test_a_reward_model_resumed_past_its_normalisation_is_refused(tiny_reward, tmp_path):
  resumed = tmp_path / 'resumed'
  shutil.copytree(tiny_reward, resumed)
  with open(resumed / reward.NORMALIZATION) as f:
    record = json.load(f)
  assert record['step'] == 30
  (resumed / reward.NORMALIZATION).write_text(json.dumps({**record, 'step': 10}))
  config = runs.read_config(tiny_reward)
  tokenizer = tokenizer_lib.load(tokenizer_lib.find(tiny_reward))
  with pytest.raises(UserError, match=r'was normalised at step 10, but its newest checkpoint is '
                                      r'step 30: it has not finished training'):
    reward.load_reward_model(str(resumed), 'ppo.reward_model', config, tokenizer,
                             mesh=sharding.data_parallel_mesh())


def test_with_dropout_set_training_scores_are_the_deterministic_ones(tiny_base, preference_file):
  """A pair's two answers were scored with different dropout masks, so the training loss was
  noisy where validation's was not (issue 24, kind 4)."""
  config = cli.load_experiment(os.path.join(ROOT, 'experiments', 'reward.py'))
  config.update(init_from=tiny_base, seq_len=48, batch_size=8, grad_accum=1)
  config.data.update(tasks=preference_file, held_out_tasks='')
  config.model.dropout = 0.1
  logs = []
  objective = objectives.build(config, sharding.data_parallel_mesh(), logs.append)
  assert any('without dropout, so model.dropout=0.1 is not applied' in line for line in logs)
  params = objective.start_from(objective.init_params(jax.random.PRNGKey(0)), None, logs.append)
  batch = next(iter(objective.train_dataset(config.batch_size)))
  losses = [float(objective.loss(params, batch, rng=jax.random.PRNGKey(seed), step=0,
                                 weights=objective.weights(batch), frozen=None)[0])
            for seed in range(2)]
  sums = objective.eval_sums(params, batch, None)
  assert losses[0] == losses[1] == pytest.approx(float(sums['loss']) / float(sums['pairs']),
                                                 rel=1e-6)
