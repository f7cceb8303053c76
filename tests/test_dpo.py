"""Direct Preference Optimization (objective 'dpo'): its loss against numpy, the reference staying
frozen, whole runs (CLI, LoRA, exact resume) and bad inputs."""

import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import cli, model, network, objectives, optim, runs, sharding, trainer
from gpt_jax import tokenizer as tokenizer_lib
from conftest import ROOT, TINY, directory_digest, read_metrics, run_cli
from gpt_jax.errors import UserError
from gpt_jax.objectives import dpo

KEYS = ('train_loss', 'accuracy', 'reward_chosen', 'reward_rejected', 'reward_margin')
VAL_KEYS = ('val_loss', 'val_accuracy', 'val_reward_chosen', 'val_reward_rejected',
            'val_reward_margin', 'val_kl')


def quiet(_):
  pass


# --- the loss, against numpy ----------------------------------------------------------------------


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_dpo_terms_match_numpy():
  rng = np.random.default_rng(0)
  policy, reference = rng.normal(-20, 5, (2, 64, 2))
  policy[0] = reference[0]  # a tie: reward 0, loss log 2, not counted as right
  beta = 0.3
  terms = jax.tree.map(np.asarray, dpo.dpo_terms(jnp.asarray(policy, jnp.float32),
                                                 jnp.asarray(reference, jnp.float32), beta))
  chosen, rejected = beta * (policy - reference).T
  margin = chosen - rejected
  np.testing.assert_allclose(terms['loss'], np.log1p(np.exp(-margin)), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(terms['accuracy'], margin > 0)
  np.testing.assert_allclose(terms['reward_chosen'], chosen, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(terms['reward_rejected'], rejected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(terms['reward_margin'], margin, rtol=1e-5, atol=1e-5)
  assert terms['loss'][0] == np.float32(math.log(2)) and terms['accuracy'][0] == 0
  # Stable where σ underflows: a margin of −200 costs 200 nats, not inf.
  far = dpo.dpo_terms(jnp.array([[0.0, 2000.0]]), jnp.zeros((1, 2)), 0.1)
  assert float(far['loss'][0]) == pytest.approx(200.0)


@pytest.fixture
def small():
  """A DPO objective on a small random model, a different random reference, and a batch of three
  pairs and one row of padding."""
  config = cli.load_experiment(TINY)
  config.update(objective='dpo', seq_len=12)
  config.dpo.beta = 0.5
  config.model.update(vocab_size=64, n_embd=32, n_head=2, n_kv_head=2, position='rope')
  gpt = network.build(config.model)
  params, reference = (model.init_params(gpt, jax.random.PRNGKey(seed), config.seq_len)
                       for seed in (0, 1))
  objective = dpo.DirectPreference(config, None, gpt, reference=gpt, frozen=reference)
  rng = np.random.default_rng(0)
  B, L = 4, config.seq_len
  tokens = rng.integers(1, 60, (B, 2, L)).astype(np.int32)
  tokens[:, 1, :5] = tokens[:, 0, :5]  # a shared prompt of 5 tokens
  targets = np.concatenate([tokens[..., 1:], np.zeros((B, 2, 1), np.int32)], -1)
  mask = np.zeros((B, 2, L), np.float32)
  mask[:, 0, 4:9] = mask[:, 1, 4:11] = 1  # answers of 5 and 7 targets after the prompt
  tokens[-1], targets[-1], mask[-1] = 0, 0, 0  # split_batches' padding
  return objective, params, {'tokens': tokens, 'targets': targets, 'mask': mask}


def call_loss(objective, params, batch, frozen):
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  return objective.loss(params, batch, rng=jax.random.PRNGKey(0), step=0,
                        weights=objective.weights(batch), frozen=frozen)


def test_loss_and_metrics_match_numpy(small):
  """The mean over the three pairs (the padding row weighs nothing) of −log σ(β·margin), with
  log π(y|x) the sum over the answer's targets of numpy log-softmaxes."""
  objective, params, batch = small

  def answer_logp(p):
    logits = np.asarray(objective.gpt.apply({'params': p}, batch['tokens'].reshape(8, -1)),
                        np.float64).reshape(4, 2, 12, -1)
    logp = np.take_along_axis(log_softmax(logits), batch['targets'][..., None], -1)[..., 0]
    return (logp * batch['mask']).sum(-1)[:3]

  beta = objective.config.dpo.beta
  chosen, rejected = beta * (answer_logp(params) - answer_logp(objective.frozen)).T
  margin = chosen - rejected
  loss, terms = call_loss(objective, params, batch, objective.frozen)
  np.testing.assert_allclose(loss, np.mean(np.log1p(np.exp(-margin))), rtol=1e-5)
  np.testing.assert_allclose(terms['train_loss'], loss)
  for key, want in (('reward_chosen', chosen), ('reward_rejected', rejected),
                    ('reward_margin', margin), ('accuracy', margin > 0)):
    np.testing.assert_allclose(terms[key], np.mean(want), rtol=1e-5, atol=1e-6)
  sums = objective.eval_sums(params, {k: jnp.asarray(v) for k, v in batch.items()},
                             objective.frozen)
  assert float(sums['pairs']) == 3
  val = objective.eval_metrics(jax.device_get(sums))
  assert val['val_loss'] == pytest.approx(float(loss), rel=1e-5)
  assert val['val_reward_margin'] == pytest.approx(float(margin.mean()), rel=1e-4)


def test_val_kl_is_the_full_kl_summed_over_the_chosen_answer(small):
  objective, params, batch = small

  def log_probs(p):
    logits = np.asarray(objective.gpt.apply({'params': p}, batch['tokens'][:, 0]), np.float64)
    return log_softmax(logits)

  policy, reference = log_probs(params), log_probs(objective.frozen)
  kl_BL = (np.exp(policy) * (policy - reference)).sum(-1)
  want = (kl_BL * batch['mask'][:, 0]).sum() / 3
  sums = objective.eval_sums(params, {k: jnp.asarray(v) for k, v in batch.items()},
                             objective.frozen)
  assert objective.eval_metrics(jax.device_get(sums))['val_kl'] == pytest.approx(want, rel=1e-4)
  same = objective.eval_metrics(jax.device_get(objective.eval_sums(
      params, {k: jnp.asarray(v) for k, v in batch.items()}, params)))
  assert same['val_kl'] == 0 and same['val_loss'] == pytest.approx(math.log(2))


def test_policy_equal_to_reference_gives_log_2_and_zero_rewards(small):
  objective, params, batch = small
  loss, terms = call_loss(objective, params, batch, jax.tree.map(jnp.copy, params))
  assert np.float32(loss) == np.float32(math.log(2))
  assert float(terms['reward_chosen']) == float(terms['reward_rejected']) == 0
  assert float(terms['reward_margin']) == float(terms['accuracy']) == 0


def test_prompt_tokens_get_no_gradient(small):
  """Targets outside the answers (mask 0: the prompt, the padding) change neither the loss nor
  its gradient."""
  objective, params, batch = small
  other = dict(batch, targets=np.where(batch['mask'] > 0, batch['targets'],
                                       (batch['targets'] + 7) % 64).astype(np.int32))
  assert (other['targets'] != batch['targets']).any()
  grad = jax.jit(jax.value_and_grad(lambda p, b: call_loss(objective, p, b, objective.frozen)[0]))
  (a, ga), (b, gb) = grad(params, batch), grad(params, other)
  assert float(a) == float(b)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_array_equal(x, y)
  assert any(np.abs(x).max() > 0 for x in jax.tree.leaves(ga))


# --- whole runs ---------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def pairs_file(tmp_path_factory) -> str:
  """48 pairs over 12 prompts of three words: the first word preferred to the last."""
  words = ['thou', 'art', 'king', 'sweet', 'night', 'love', 'sword', 'crown', 'moon', 'fair']
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp('pairs') / 'pairs.jsonl'
  with open(path, 'w') as f:
    for _ in range(12):
      prompt = list(rng.choice(words, 3, replace=False))
      for _ in range(4):
        f.write(json.dumps({'prompt': ' '.join(prompt), 'chosen': prompt[0],
                            'rejected': prompt[-1]}) + '\n')
  return str(path)


@pytest.fixture
def config(tiny_base, pairs_file):
  config = cli.load_experiment(TINY)
  config.update(objective='dpo', init_from=tiny_base, steps=6, log_every=1, eval_every=3,
                checkpoint_every=3, eval_batches=0)
  config.data.update(tasks=pairs_file, num_epochs=2)
  config.preference.held_out = 0.25  # 3 prompts, 12 pairs: one batch and a padded one
  config.optim.update(lr=1e-3, warmup_steps=1)
  config.sample.num = 0
  return config


def test_a_run_starts_at_log_2_learns_and_leaves_the_reference_untouched(config, tiny_base,
                                                                        tmp_path):
  before = directory_digest(tiny_base)
  logs = []
  final = trainer.train(config, str(tmp_path / 'dpo'), log=logs.append)
  records = read_metrics(tmp_path / 'dpo')
  first = records[0]
  assert first['step'] == 1 and set(KEYS) <= set(first)
  # Step 1's metrics are those of the initial policy, bitwise the reference (dropout 0).
  assert np.float32(first['train_loss']) == np.float32(math.log(2))
  assert first['reward_chosen'] == first['reward_rejected'] == first['reward_margin'] == 0
  assert first['accuracy'] == 0  # ties count as wrong
  assert set(VAL_KEYS) <= set(final) and final['step'] == 6
  assert records[-1]['train_loss'] < math.log(2) and records[-1]['reward_margin'] > 0
  assert final['val_kl'] > 0
  assert directory_digest(tiny_base) == before
  assert any(line.startswith('DPO, held-out pairs at step 6: accuracy') for line in logs)
  # init_from may change on a resume, but not the reference it gives.
  config.init_from = another_run(tiny_base, tmp_path / 'other')
  with pytest.raises(UserError, match='trained against dpo.reference=.*, not .*other'):
    trainer.train(config, str(tmp_path / 'dpo'), log=quiet)


def test_the_frozen_reference_is_never_donated_nor_changed(config):
  mesh = sharding.make_mesh(config.mesh)
  objective = objectives.build(config, mesh, quiet)
  saved = jax.tree.map(np.array, objective.frozen)
  tx = optim.optimizer(config.optim, config.steps)
  state = jax.jit(lambda: trainer.new_state(objective, tx, config))()
  state = state.replace(params=objective.start_from(state.params, mesh, quiet))
  step = jax.jit(trainer.make_train_step(objective, tx, config), donate_argnums=0)
  batch = next(iter(objective.train_dataset(config.batch_size)))
  for _ in range(2):
    state, metrics = step(state, batch, objective.frozen)
  assert float(metrics['grad_norm']) > 0
  for before, after in zip(jax.tree.leaves(saved), jax.tree.leaves(objective.frozen)):
    np.testing.assert_array_equal(before, after)


@pytest.mark.slow
def test_restart_from_a_checkpoint_equals_an_uninterrupted_run(config, tmp_path):
  whole, resumed = str(tmp_path / 'whole'), str(tmp_path / 'resumed')
  trainer.train(config, whole, log=quiet)
  trainer.train(config, resumed, log=quiet)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '6'))  # killed just after step 3's checkpoint
  messages = []
  trainer.train(config, resumed, log=messages.append)
  assert any('resuming from step 3' in m for m in messages)
  assert read_metrics(resumed) == read_metrics(whole)
  params = [runs.load(w, log=quiet).params for w in (whole, resumed)]
  for a, b in zip(*map(jax.tree.leaves, params)):
    np.testing.assert_array_equal(a, b)


def test_lora_dpo_starts_at_log_2_and_trains_adapters(config, tmp_path):
  config.lora.update(rank=4, alpha=8.0, targets='attn')
  config.steps = 3
  trainer.train(config, str(tmp_path / 'lora'), log=quiet)
  records = read_metrics(tmp_path / 'lora')
  assert np.float32(records[0]['train_loss']) == np.float32(math.log(2))
  assert records[-1]['train_loss'] < math.log(2)


@pytest.mark.parametrize('setting', ['full', 'lora', 'explicit reference'])
def test_with_dropout_set_the_first_loss_is_still_exactly_log_2(config, tiny_base, tmp_path,
                                                                setting):
  """The policy once ran with dropout and the reference without, so the initial policy was not
  its reference: loss 0.6983 and accuracy 0.375 at step 1 (issue 24, kind 4, TRL #744)."""
  config.model.dropout = 0.1
  if setting == 'lora':
    config.lora.update(rank=4, alpha=8.0, dropout=0.1, targets='all')
  if setting == 'explicit reference':  # the base's parameters, written as another run
    base = runs.load(tiny_base, log=quiet)
    config.dpo.reference = runs.write_params_run(str(tmp_path / 'ref'), runs.read_config(tiny_base),
                                                 base.tokenizer, base.params, 0, 'dpo.reference')
  logs = []
  objective = objectives.build(config, sharding.make_mesh(config.mesh), logs.append)
  assert any('runs every forward pass without dropout, so model.dropout=0.1' in line
             for line in logs)
  params = objective.start_from(objective.init_params(jax.random.PRNGKey(0)), None, quiet)
  batch = next(iter(objective.train_dataset(config.batch_size)))
  for seed in range(2):
    loss, terms = objective.loss(params, batch, rng=jax.random.PRNGKey(seed), step=0,
                                 weights=objective.weights(batch), frozen=objective.frozen)
    assert np.float32(loss) == np.float32(math.log(2)) and float(terms['accuracy']) == 0


@pytest.mark.slow
def test_the_experiment_runs_from_the_command_line(tiny_base, pairs_file, tmp_path):
  workdir = tmp_path / 'dpo'
  result = run_cli(f'--config={os.path.join(ROOT, "experiments", "dpo.py")}',
                   f'--config.init_from={tiny_base}', '--config.dpo.reference=',
                   f'--config.data.tasks={pairs_file}', '--config.data.held_out_tasks=',
                   '--config.seq_len=32', '--config.steps=4',
                   '--config.batch_size=8', '--config.log_every=2', '--config.eval_every=2',
                   '--config.checkpoint_every=4', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  records = read_metrics(workdir)
  assert [r['step'] for r in records] == [2, 4]
  assert set(KEYS) | set(VAL_KEYS) <= set(records[-1])
  assert runs.read_config(str(workdir)).objective == 'dpo'


# --- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize('beta', [0.0, -0.1, float('nan')])
def test_beta_must_be_positive(config, beta):
  config.dpo.beta = beta
  with pytest.raises(UserError, match=r'dpo.beta=.* must be > 0.*--config.dpo.beta') as e:
    objectives.build(config, sharding.make_mesh(config.mesh), quiet)
  assert '\n' not in str(e.value)


def another_run(tiny_base, directory, *, tokenizer=None, **model_settings) -> str:
  """A params-only run like tiny_base's but with another tokenizer or model settings."""
  base = runs.load(tiny_base, log=quiet)
  run_config = runs.read_config(tiny_base)
  run_config.model.update(model_settings)
  params = model.init_params(network.build(run_config.model), jax.random.PRNGKey(0),
                             run_config.seq_len)
  return runs.write_params_run(str(directory), run_config, tokenizer or base.tokenizer, params,
                               0, 'dpo.reference')


def test_a_reference_with_another_tokenizer_or_shape_is_one_line(config, tiny_base, shakespeare,
                                                                tmp_path):
  other_tokenizer = tokenizer_lib.train([d.text for d in shakespeare[:3]], 400)
  mesh = sharding.make_mesh(config.mesh)
  for reference, message in (
      (another_run(tiny_base, tmp_path / 'tok', tokenizer=other_tokenizer),
       'dpo.reference=.* used another tokenizer than this run'),
      (another_run(tiny_base, tmp_path / 'shape', n_embd=32),
       'dpo.reference=.* holds a model of another shape.*pass a reference of the shape'),
      (str(tmp_path / 'missing'), 'dpo.reference=.* is not a run of this project')):
    config.dpo.reference = reference
    with pytest.raises(UserError, match=message) as e:
      objectives.build(config, mesh, quiet)
    assert '\n' not in str(e.value)


def test_a_reference_of_the_same_shape_is_the_frozen_tree(config, tiny_base, tmp_path):
  config.dpo.reference = another_run(tiny_base, tmp_path / 'ref')
  objective = objectives.build(config, sharding.make_mesh(config.mesh), quiet)
  reference = runs.load(config.dpo.reference, log=quiet).params
  for a, b in zip(jax.tree.leaves(objective.frozen), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)
  start = objective.start_from(objective.base.params, None, quiet)  # the policy: init_from's
  base = runs.load(config.init_from, log=quiet).params
  for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, b)


def test_without_init_from_or_pairs_is_one_line(config):
  mesh = sharding.make_mesh(config.mesh)
  config.init_from = ''
  with pytest.raises(UserError, match='objective=dpo fine-tunes a pretrained model'):
    objectives.build(config, mesh, quiet)
  config.data.tasks = ''
  with pytest.raises(UserError, match='objective=dpo needs preference pairs'):
    objectives.build(config, mesh, quiet)
