"""PPO (objective 'ppo'): GAE, the clipped objective, the trainer's on-policy step, frozen models,
and runs end to end."""

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, TINY, read_metrics, run_cli
from gpt_jax import cli, objectives, tokenizer as tokenizer_lib, trainer
from gpt_jax.errors import UserError
from gpt_jax.objectives import Objective, ppo
from gpt_jax.state import TrainState


def quiet(_):
  pass


def test_gae_matches_a_hand_computed_sequence():
  rewards = jnp.array([[0.0, 0.0, 1.0, 0.0], [-0.1, 0.0, 0.0, 2.0]])
  values = jnp.array([[0.5, 0.2, 0.4, 9.0], [0.0, 0.0, 0.0, 0.0]])  # 9: after the answer, unread
  mask = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
  # γ = 0.9, γλ = 0.72. Row 0: δ2 = 1 − 0.4 = 0.6; δ1 = 0.9·0.4 − 0.2 = 0.16, A1 = 0.16 + 0.72·0.6
  # = 0.592; δ0 = 0.9·0.2 − 0.5 = −0.32, A0 = −0.32 + 0.72·0.592 = 0.10624. Row 1 (V = 0):
  # A3 = 2, A2 = 1.44, A1 = 1.0368, A0 = −0.1 + 0.72·1.0368 = 0.646496.
  expected = [[0.10624, 0.592, 0.6, 0.0], [0.646496, 1.0368, 1.44, 2.0]]
  np.testing.assert_allclose(ppo.gae(rewards, values, mask, 0.9, 0.8), expected, rtol=1e-6)
  # γ = λ = 1: the advantage is the reward still to come minus the value.
  np.testing.assert_allclose(ppo.gae(rewards, values, mask, 1.0, 1.0),
                             [[0.5, 0.8, 0.6, 0.0], [1.9, 2.0, 2.0, 2.0]], rtol=1e-6)


def test_answer_mask_ends_at_the_first_eos():
  answers = jnp.array([[5, 1, 1, 1], [5, 6, 7, 8], [1, 0, 0, 0], [4, 1, 9, 1]])
  np.testing.assert_array_equal(ppo.answer_mask(answers, eos_id=1),
                                [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]])


def test_whiten_uses_the_masked_entries_alone():
  x = jnp.array([[1.0, 3.0, 100.0], [5.0, 7.0, -50.0]])
  mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
  # mean 4, variance (9 + 1 + 1 + 9) / 4 = 5
  np.testing.assert_allclose(ppo.whiten(x, mask), np.array([[-3, -1, 0], [1, 3, 0]]) / np.sqrt(5),
                             rtol=1e-6)


def test_clipped_objective_matches_numpy():
  ratio = np.array([0.5, 0.9, 1.0, 1.1, 1.5, 0.5, 0.9, 1.1, 1.5], np.float32)
  advantage = np.array([1.0, 1.0, 2.0, 1.0, 1.0, -1.0, -1.0, -2.0, -1.0], np.float32)
  old_logp = np.full_like(ratio, -2.0)
  logp = old_logp + np.log(ratio)
  terms = ppo.policy_terms(jnp.asarray(logp)[None], jnp.asarray(old_logp)[None],
                           jnp.asarray(advantage)[None], clip=0.2)
  expected = -np.minimum(ratio * advantage, np.clip(ratio, 0.8, 1.2) * advantage)
  # Inside [0.8, 1.2] the ratio counts as it is; outside, the pessimistic side wins: a good
  # action above 1.2 and a bad one below 0.8 get no further push.
  np.testing.assert_allclose(expected, [-0.5, -0.9, -2.0, -1.1, -1.2, 0.8, 0.9, 2.2, 1.5],
                             rtol=1e-6)
  np.testing.assert_allclose(terms['loss'][0], expected, rtol=1e-5)
  np.testing.assert_array_equal(terms['clipped'][0], [1, 0, 0, 0, 1, 1, 0, 0, 1])
  np.testing.assert_allclose(terms['approx_kl'][0], ratio - 1 - np.log(ratio), atol=1e-6)

  values = np.array([0.0, 1.0, -1.0, 0.35], np.float32)
  old_values = np.array([0.5, 0.0, 0.0, 0.3], np.float32)
  returns = np.array([1.0, 0.0, 0.0, 2.0], np.float32)
  clipped = old_values + np.clip(values - old_values, -0.2, 0.2)
  expected = 0.5 * np.maximum((values - returns) ** 2, (clipped - returns) ** 2)
  np.testing.assert_allclose(expected, [0.5, 0.5, 0.5, 0.5 * 1.65 ** 2], rtol=1e-6)
  np.testing.assert_allclose(ppo.value_terms(*map(jnp.asarray, (values, old_values, returns)),
                                             value_clip=0.2), expected, rtol=1e-6)


@dataclasses.dataclass
class LinearOnPolicy(Objective):
  """A tiny on-policy objective: a linear model whose rollout records its own predictions, and
  whose loss pulls the predictions 1 above those recorded."""
  on_policy = True

  def rollout(self, params, batch, *, rng, frozen):
    noise = jax.random.normal(rng, batch['x'].shape[:1])
    return {'x': batch['x'], 'y': batch['x'] @ params['w'] + noise}, {'noise': noise.mean()}

  def weights(self, batch):
    return {'rows': jnp.float32(batch['x'].shape[0])}

  def loss(self, params, batch, *, rng, step, weights, frozen):
    loss = jnp.square(batch['x'] @ params['w'] - batch['y'] - 1.0).sum() / weights['rows']
    return loss, {'train_loss': loss}


def test_on_policy_step_is_epochs_of_minibatch_updates():
  config = cli.load_experiment(TINY)
  objective = LinearOnPolicy(config, None, None, epochs=2, minibatches=2)
  tx = optax.adam(0.05)
  params = {'w': jnp.array([0.1, -0.2, 0.3])}
  state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(7))
  batch = {'x': jax.random.normal(jax.random.PRNGKey(1), (8, 3))}
  step = jax.jit(trainer.make_train_step(objective, tx, config))

  expected_params, expected_opt = params, tx.init(params)
  for s in range(2):
    rollout_rng, order_rng, _ = jax.random.split(jax.random.fold_in(state.rng, s), 3)
    experience, _ = objective.rollout(expected_params, batch, rng=rollout_rng, frozen=None)
    order = trainer.minibatches(experience, order_rng, epochs=2, count=2)
    assert order['x'].shape == (4, 4, 3)
    for u in range(4):
      minibatch = jax.tree.map(lambda x: x[u], order)
      grads = jax.grad(lambda p: objective.loss(p, minibatch, rng=None, step=None, weights={
          'rows': 4.0}, frozen=None)[0])(expected_params)
      updates, expected_opt = tx.update(grads, expected_opt, expected_params)
      expected_params = optax.apply_updates(expected_params, updates)
    new_state, metrics = step(state, batch)
    assert int(new_state.step) == s + 1 and {'train_loss', 'noise', 'grad_norm'} <= set(metrics)
    np.testing.assert_allclose(new_state.params['w'], expected_params['w'], rtol=1e-5, atol=1e-7)
    state = new_state
  # Each epoch is a permutation of the rows.
  rows = np.sort(np.asarray(order['x'][:2]).reshape(8, 3), axis=0)
  np.testing.assert_array_equal(rows, np.sort(np.asarray(batch['x']), axis=0))


def tiny_ppo_config(tiny_base, preference_file, reward_model):
  config = cli.load_experiment(TINY)
  config.update(objective='ppo', init_from=tiny_base, seq_len=48, steps=3, log_every=1,
                eval_every=3, checkpoint_every=3)
  config.data.update(tasks=preference_file, num_epochs=2)
  config.ppo.update(reward_model=reward_model, max_new_tokens=8, epochs=2, minibatches=2)
  config.sample.num = 0
  return config


@pytest.fixture
def ppo_config(tiny_base, preference_file, tiny_reward):
  return tiny_ppo_config(tiny_base, preference_file, tiny_reward)


STEP_KEYS = {'train_loss', 'policy_loss', 'value_loss', 'entropy', 'clip_fraction', 'approx_kl',
             'score', 'kl', 'reward', 'response_length', 'loss', 'grad_norm', 'lr'}


@pytest.mark.slow
def test_ppo_trains_and_leaves_the_frozen_models_as_they_were(ppo_config, tmp_path, monkeypatch):
  built = []
  build = objectives.build
  monkeypatch.setattr(objectives, 'build', lambda *a, **k: built.append(build(*a, **k)) or built[0])
  trainer.train(ppo_config, str(tmp_path / 'run'), log=quiet)
  objective = built[0]
  records = read_metrics(str(tmp_path / 'run'), timing=True)
  assert [r['step'] for r in records] == [1, 2, 3]
  assert STEP_KEYS <= set(records[0]) and {'val_score', 'val_kl'} <= set(records[-1])
  assert all(np.isfinite(v) for r in records for v in r.values())
  assert all(1 <= r['response_length'] <= 8 for r in records)
  # The reference is init_from's parameters, the reward model its run's: both unchanged, as
  # loaded again from their checkpoints (the step donates the state alone).
  fresh = ppo.ProximalPolicy.build(ppo_config, trainer.sharding.make_mesh(ppo_config.mesh), quiet)
  for tree in ('reference', 'reward'):
    jax.tree.map(np.testing.assert_array_equal, objective.frozen[tree], fresh.frozen[tree])
  trained = trainer.runs.load(str(tmp_path / 'run')).params
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, trained, fresh.frozen['reference'])))


@pytest.mark.slow
def test_ppo_ptx_adds_the_pretraining_loss(ppo_config, small_corpus, tmp_path):
  ppo_config.update(steps=2, eval_every=2)
  ppo_config.data.corpus = small_corpus
  ppo_config.ppo.ptx_coef = 0.5
  trainer.train(ppo_config, str(tmp_path / 'run'), log=quiet)
  records = read_metrics(str(tmp_path / 'run'), timing=True)
  assert [r['step'] for r in records] == [1, 2] and 'val_score' in records[-1]
  # The tiny base was pretrained on this corpus: its loss there is far below ln 512 = 6.24.
  assert all(2 < r['ptx_loss'] < 6 for r in records)
  for r in records:
    total = r['policy_loss'] + 0.1 * r['value_loss'] + 0.5 * r['ptx_loss']
    assert r['train_loss'] == pytest.approx(total, rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_first_update_of_a_rollout_has_ratio_one(ppo_config):
  objective = ppo.ProximalPolicy.build(ppo_config, trainer.sharding.make_mesh(ppo_config.mesh),
                                       quiet)
  params = objective.start_from(objective.init_params(jax.random.PRNGKey(0)), None, quiet)
  batch = objective.train_dataset(8)[0]

  @jax.jit
  def first_update(params, batch, frozen):
    experience, metrics = objective.rollout(params, batch, rng=jax.random.PRNGKey(3),
                                            frozen=frozen)
    loss, terms = objective.loss(params, experience, rng=None, step=0,
                                 weights=objective.weights(experience), frozen=frozen)
    return experience, metrics, terms

  experience, metrics, terms = first_update(params, batch, objective.frozen)
  # π = π_old = π_ref here: no ratio is clipped, no KL, and the whitened advantages average 0.
  assert float(terms['clip_fraction']) == 0 and abs(float(terms['approx_kl'])) < 1e-6
  assert abs(float(terms['policy_loss'])) < 1e-5 and abs(float(metrics['kl'])) < 1e-5
  mask = np.asarray(experience['mask'])
  assert mask[:, 0].all() and float(metrics['response_length']) == mask.sum(1).mean()
  np.testing.assert_allclose(metrics['reward'], metrics['score'], atol=1e-5)


@pytest.mark.slow
def test_ppo_through_the_command_line_on_one_device_and_a_mesh(ppo_config, tmp_path):
  """Two steps of experiments/ppo.py through the command line on one device, and on 4 (data 2 ×
  tensor 2): the sampler, the scoring passes and the updates sharded give the same metrics."""
  args = [f'--config={os.path.join(ROOT, "experiments", "ppo.py")}',
          f'--config.init_from={ppo_config.init_from}', '--config.ppo.reference=',
          f'--config.ppo.reward_model={ppo_config.ppo.reward_model}',
          f'--config.data.tasks={ppo_config.data.tasks}', '--config.data.held_out_tasks=',
          '--config.seq_len=48', '--config.batch_size=8', '--config.eval_batches=0',
          '--config.ppo.max_new_tokens=8', '--config.ppo.epochs=2', '--config.ppo.minibatches=2',
          '--config.steps=2', '--config.log_every=1', '--config.eval_every=2']
  found = []
  for devices, mesh in ((1, []), (4, ['--config.mesh.tensor=2'])):
    workdir = str(tmp_path / f'run{devices}')
    result = run_cli(*args, *mesh, f'--workdir={workdir}', devices=devices, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    found.append(read_metrics(workdir, timing=True))
  one, mesh = found
  assert one[-1]['step'] == 2 and STEP_KEYS | {'val_score', 'val_kl'} <= set(one[-1])
  for a, b in zip(one, mesh):
    for key in STEP_KEYS | {'val_score', 'val_kl'}:
      if key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (a['step'], key)


@pytest.mark.parametrize('change, message', [
    (dict(reward_model=''), 'PPO without a reward model run'),
    (dict(max_new_tokens=48), 'a prompt leaves no room for an answer in the context'),
    (dict(kl_coef=-0.1), r'ppo.kl_coef=-0.1 must be >= 0'),
    (dict(clip=0.0), r'ppo.clip=0.0 must be > 0'),
    (dict(minibatches=3), r'batch_size=8 is not divisible by ppo.minibatches=3'),
])
def test_bad_ppo_settings_are_one_line(tiny_base, preference_file, tmp_path, change, message):
  config = tiny_ppo_config(tiny_base, preference_file, 'unread')  # checked before any loading
  config.ppo.update(change)
  with pytest.raises(UserError, match=message) as e:
    trainer.train(config, str(tmp_path / 'run'), log=quiet)
  assert '\n' not in str(e.value)


@pytest.mark.slow
def test_a_reward_model_with_another_tokenizer_is_refused(ppo_config, tmp_path):
  directory = str(tmp_path / 'reward')
  shutil.copytree(ppo_config.ppo.reward_model, directory)
  other = tokenizer_lib.train([f'word{i} other{i * 7} text{i % 13}' for i in range(3000)], 300)
  os.remove(os.path.join(directory, tokenizer_lib.FILENAMES[0]))
  other.save(os.path.join(directory, other.filename))
  ppo_config.ppo.reward_model = directory
  with pytest.raises(UserError, match=r'ppo.reward_model=.* used another tokenizer than this run'
                     ) as e:
    trainer.train(ppo_config, str(tmp_path / 'run'), log=quiet)
  assert '\n' not in str(e.value)
