"""Training: the step function, the loop's outputs, exact resume, and the CLI's bad-input errors."""

import copy
import errno
import json
import types
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, TINY, directory_digest, read_metrics, run_cli, run_main
from gpt_jax import checkpoint, cli, config as config_lib, losses, network, optim, runs
from gpt_jax import trainer
from gpt_jax.objectives import lm
from gpt_jax.errors import UserError


@pytest.fixture
def tiny(small_corpus):
  """tiny.py on the small corpus: the settings of conftest's tiny_base, the run that the tests
  which need a finished run of them copy (or read) instead of training it again."""
  config = cli.load_experiment(TINY)
  config.data.corpus = small_corpus
  config.sample.num = 0
  return config


# --- the step function -----------------------------------------------------------------------


def step_setup(tiny, **overrides):
  for key, value in overrides.items():
    tiny[key] = value
  gpt = network.build(tiny.model)
  tx = optim.optimizer(tiny.optim, tiny.steps)
  state = jax.jit(lambda: trainer.new_state(lm.LanguageModeling.without_data(tiny), tx, tiny))()
  return gpt, tx, state


def test_tiny_model_overfits_one_batch(tiny):
  tiny.steps = 150
  tiny.optim.update(warmup_steps=10, weight_decay=0.0)
  gpt, tx, state = step_setup(tiny)
  step = jax.jit(trainer.make_train_step(lm.LanguageModeling.without_data(tiny), tx, tiny))
  tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 33), 0, 512, dtype=jnp.int32)
  for _ in range(150):
    state, metrics = step(state, {'tokens': tokens})
  assert float(metrics['train_loss']) < 0.1  # from log(512) = 6.24


def test_grad_accumulation_equals_one_big_batch(tiny):
  tokens = jax.random.randint(jax.random.PRNGKey(0), (8, 33), 0, 512, dtype=jnp.int32)
  # Adam's first update is lr·g/(|g| + eps): with a tiny eps it turns the rounding differences of
  # two summation orders in near-zero gradients into whole updates.
  tiny.optim.eps = 1e-3
  results = []
  for accum in (1, 4):
    tiny.grad_accum = accum
    gpt, tx, state = step_setup(tiny)
    new_state, metrics = jax.jit(trainer.make_train_step(
      lm.LanguageModeling.without_data(tiny), tx, tiny))(state, {'tokens': tokens})
    results.append((new_state.params, metrics))
  (p1, m1), (p4, m4) = results
  np.testing.assert_allclose(m1['train_loss'], m4['train_loss'], rtol=1e-6)
  np.testing.assert_allclose(m1['grad_norm'], m4['grad_norm'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize('tie_embeddings, dtype', [(True, 'bfloat16'), (False, 'float32')])
def test_bfloat16_parameters_train(tiny, tie_embeddings, dtype):
  """Every custom VJP returns cotangents in its primal's dtype, so bf16 parameters compile and
  train (tied head: the fused head loss; untied: its own kernel)."""
  tiny.model.update(param_dtype='bfloat16', dtype=dtype, tie_embeddings=tie_embeddings)
  gpt, tx, state = step_setup(tiny)
  batch = {'tokens': jax.random.randint(jax.random.PRNGKey(0), (8, 33), 0, 512, dtype=jnp.int32)}
  step = jax.jit(trainer.make_train_step(lm.LanguageModeling.without_data(tiny), tx, tiny),
                 donate_argnums=0).lower(state, batch).compile(trainer.train_compiler_options())
  first = None
  for _ in range(10):
    state, metrics = step(state, batch)
    first = first or float(metrics['train_loss'])
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.bfloat16)}
  assert first == pytest.approx(np.log(512), rel=0.02)
  assert float(metrics['train_loss']) < first - 0.3


def test_mask_drops_targets_from_the_loss():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 11))
  targets = jnp.arange(10).reshape(2, 5) % 11
  mask = jnp.array([[1, 1, 0, 0, 1], [0, 0, 0, 0, 1]], jnp.float32)
  loss, _ = losses.next_token_loss(logits, targets, mask)
  nll = -jax.nn.log_softmax(logits)[jnp.arange(2)[:, None], jnp.arange(5), targets]
  np.testing.assert_allclose(loss, (nll * mask).sum() / 4, rtol=1e-6)


def test_z_loss_adds_mean_squared_log_normaliser():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 7)) * 3
  targets = jnp.zeros((2, 3), jnp.int32)
  ones = jnp.ones((2, 3))
  plain, _ = losses.next_token_loss(logits, targets, ones)
  with_z, terms = losses.next_token_loss(logits, targets, ones, z_loss=1e-2)
  expected = 1e-2 * jnp.mean(jax.nn.logsumexp(logits, -1) ** 2)
  np.testing.assert_allclose(with_z - plain, expected, rtol=1e-5)
  np.testing.assert_allclose(terms['ce'], plain, rtol=1e-6)


def test_weight_decay_only_on_matrices(tiny):
  gpt, _, state = step_setup(tiny)
  mask = optim.decay_mask(state.params)
  assert mask['h_0']['attn']['query']['kernel'] and mask['h_0']['mlp']['fc']['kernel']
  assert not mask['wte']['embedding'] and not mask['wpe']
  assert not mask['h_0']['ln_1']['scale'] and not mask['h_0']['mlp']['fc']['bias']


def test_schedule_warms_up_then_decays_to_the_floor(tiny):
  tiny.optim.update(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
  lr = optim.schedule(tiny.optim, 100)
  # update s has the rate at its end, s + 1: the first one already moves the parameters
  np.testing.assert_allclose([lr(0), lr(4), lr(9), lr(99)], [1e-4, 5e-4, 1e-3, 1e-4], rtol=1e-5)
  assert lr(9) > lr(50) > lr(98) > lr(99)


def test_the_first_update_moves_the_parameters(tiny):
  gpt, tx, state = step_setup(tiny)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (8, 33), 0, 512, dtype=jnp.int32)
  new_state, metrics = jax.jit(trainer.make_train_step(
      lm.LanguageModeling.without_data(tiny), tx, tiny))(state, {'tokens': tokens})
  assert float(metrics['lr']) == pytest.approx(tiny.optim.lr / tiny.optim.warmup_steps)
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
  assert all(jax.tree.leaves(moved))


def test_metrics_are_read_back_with_byte_order_marks_and_a_broken_line_is_named(tmp_path):
  from gpt_jax.metrics import read_jsonl
  path = tmp_path / 'metrics.jsonl'
  path.write_text('\ufeff{"step": 5}\n\ufeff{"step": 10}\n')  # edited, saved by Notepad, joined
  assert read_jsonl(str(path)) == [{'step': 5}, {'step': 10}]
  path.write_text('{"step": 5}\n{"step": 1')
  with pytest.raises(UserError, match=r'metrics.jsonl line 2 is not JSON \(.*\); a run writes one '
                     r'JSON record a line: remove the broken line$'):
    read_jsonl(str(path))


# --- whole runs --------------------------------------------------------------------------------


def test_run_writes_metrics_plot_and_checkpoints(tiny, tiny_base, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_base, workdir)  # the run trainer.train(tiny, ...) wrote
  final = read_metrics(workdir, timing=True)[-1]  # what that train() returned
  records = read_metrics(workdir)
  assert [r['step'] for r in records] == [5, 10, 15, 20]
  for key in ('train_loss', 'lr', 'grad_norm'):
    assert all(np.isfinite(r[key]) for r in records)
  assert 'val_loss' in records[1] and 'val_loss' not in records[0]
  assert records[-1]['val_loss'] < records[1]['val_loss'] < np.log(512)
  np.testing.assert_allclose(final['val_ppl'], np.exp(final['val_loss']), rtol=1e-6)
  assert 1.0 < final['val_bpb'] < final['val_loss'] / np.log(2)  # > 1 byte per token
  assert final['tokens_per_sec'] > 0 and final['mfu'] > 0
  assert os.path.getsize(os.path.join(workdir, 'loss.png')) > 1000
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20']
  assert json.load(open(os.path.join(workdir, 'config.json')))['model']['n_layer'] == 2
  # Running a finished run again trains nothing and reports the same final metrics.
  assert trainer.train(tiny, workdir, log=lambda _: None) == final
  assert [r['step'] for r in read_metrics(workdir)] == [5, 10, 15, 20]


@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_restart_from_a_checkpoint_equals_an_uninterrupted_run(tiny, tmp_path, optimizer):
  """N + N steps with a restart in between give bit-for-bit the metrics of 2N steps, with
  either optimizer's state."""
  tiny.model.dropout = 0.1  # so the dropout RNG must be restored too
  tiny.optim.name = optimizer
  whole, resumed = str(tmp_path / 'whole'), str(tmp_path / 'resumed')
  trainer.train(tiny, whole, log=lambda _: None)
  trainer.train(tiny, resumed, log=lambda _: None)
  # Lose everything after step 10, as if the run had been killed just after that checkpoint.
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '20'))
  messages = []
  trainer.train(tiny, resumed, log=messages.append)
  assert any('resuming from step 10' in m for m in messages)
  assert read_metrics(resumed) == read_metrics(whole)


def test_steps_in_one_call_are_the_steps_one_call_each(tiny, tmp_path):
  """steps_per_call steps run in one compiled loop of the step itself (make_train_steps), each
  call ending where a step is logged, evaluated or saved: every logged metric and the parameters
  equal those of one step per call, bit for bit."""
  tiny.update(steps=23, log_every=3, eval_every=10, checkpoint_every=7, checkpoint_steps=(12,))
  results = []
  for per_call in (1, 5):
    tiny.steps_per_call = per_call
    workdir = str(tmp_path / str(per_call))
    trainer.train(tiny, workdir, log=lambda _: None)
    results.append((read_metrics(workdir), runs.load(workdir, log=lambda _: None).params))
  assert [r['step'] for r in results[0][0]] == [3, 6, 9, 10, 12, 15, 18, 20, 21, 23]
  assert results[1][0] == results[0][0]
  jax.tree.map(np.testing.assert_array_equal, results[1][1], results[0][1])


def test_a_time_budget_sets_the_steps_from_the_measured_rate(tiny, tmp_path, monkeypatch):
  """time_budget_s / seconds per step steps are trained (capped by the data), recorded in
  config.json and kept on resume, so the schedule does not move."""
  seconds = trainer.measure_step_seconds(
      lm.LanguageModeling.build(tiny, None, lambda _: None), tiny,
      jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ('data', 'fsdp', 'tensor')),
      lm.LanguageModeling.build(tiny, None, lambda _: None).train_dataset(tiny.batch_size),
      seconds=0.1)
  assert 0 < seconds < 10
  monkeypatch.setattr(trainer, 'measure_step_seconds', lambda *args: 0.25)
  tiny.update(time_budget_s=3.0, steps=1000)  # 1000: ignored
  workdir = str(tmp_path / 'budget')
  logs = []
  trainer.train(tiny, workdir, log=logs.append)
  assert 'time budget 3 s: 4.00 steps/s measured, so 12 steps' in logs
  assert read_metrics(workdir)[-1]['step'] == 12
  assert runs.read_config(workdir).steps == 12
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '12'))
  monkeypatch.setattr(trainer, 'measure_step_seconds', lambda *args: 0.5)  # a slower machine
  logs = []
  tiny.steps = 1000
  trainer.train(tiny, workdir, log=logs.append)
  assert 'time budget 3 s: resuming with the 12 steps this run chose' in logs
  assert read_metrics(workdir)[-1]['step'] == 12
  tiny.time_budget_s = 1e6  # more steps than the data holds
  objective = lm.LanguageModeling.build(tiny, None, lambda _: None)
  train_ds = objective.train_dataset(tiny.batch_size)
  logs = []
  assert trainer.budget_steps(objective, tiny, None, train_ds, str(tmp_path / 'new'),
                              logs.append) == len(train_ds)
  assert logs == [f'time budget 1e+06 s: 2.00 steps/s measured, so {len(train_ds)} steps (the '
                  f'{len(train_ds)} batches of the training split; raise data.num_epochs for '
                  'more)']


def test_a_branched_cooldown_equals_a_run_trained_to_its_length(tiny, tmp_path):
  """WSD (Hägele et al. 2024): a 10-step run is the first 8 updates of a 20-step one at the
  stable lr, then its own 2-update cooldown, so branching it off the long run's step 8 gives
  bit for bit the parameters and metrics of training it straight."""
  tiny.optim.update(schedule='wsd', decay_fraction=0.2)
  trunk, branched, straight = (str(tmp_path / name) for name in ('trunk', 'branched', 'straight'))
  tiny.update(checkpoint_steps=(8,), keep_checkpoints=1)  # 10 goes, 8 stays
  trainer.train(tiny, trunk, log=lambda _: None)
  assert sorted(os.listdir(os.path.join(trunk, 'checkpoints')), key=int) == ['8', '20']
  tiny.update(steps=10, checkpoint_steps=())
  checkpoint.branch(trunk, 8, branched)
  logs = []
  trainer.train(tiny, branched, log=logs.append)
  assert f'resuming from step 8 in {branched}' in logs
  trainer.train(tiny, straight, log=lambda _: None)
  jax.tree.map(np.testing.assert_array_equal, runs.load(branched).params,
               runs.load(straight).params)
  assert read_metrics(branched)[-1] == read_metrics(straight)[-1]
  checkpoint.branch(trunk, 8, branched)  # a started branch resumes from its own checkpoints
  assert os.listdir(os.path.join(branched, 'checkpoints')) == ['10']
  with pytest.raises(UserError, match=r'trunk has no complete checkpoint at step 9 to branch '
                                      r'from \(its steps: 8, 20\)'):
    checkpoint.branch(trunk, 9, str(tmp_path / 'other'))
  assert not os.path.exists(tmp_path / 'other')


@pytest.mark.slow
def test_kill_9_then_rerun_reproduces_the_metrics(small_corpus, tmp_path):
  args = [f'--config={TINY}', f'--config.data.corpus={small_corpus}', '--config.steps=60',
          '--config.checkpoint_every=10', '--config.log_every=2', '--config.sample.num=0']
  whole = str(tmp_path / 'whole')
  assert run_cli(*args, f'--workdir={whole}').returncode == 0
  killed = str(tmp_path / 'killed')
  proc = subprocess.Popen([sys.executable, '-m', 'gpt_jax.train', *args, f'--workdir={killed}'],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not os.path.exists(os.path.join(killed, 'checkpoints', '20')) and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  rerun = run_cli(*args, f'--workdir={killed}')
  assert rerun.returncode == 0, rerun.stderr
  assert 'resuming from step' in rerun.stdout
  assert read_metrics(killed) == read_metrics(whole)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(small_corpus, tmp_path):
  workdir = str(tmp_path / 'run')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'gpt_jax.train', f'--config={TINY}', f'--workdir={workdir}',
       f'--config.data.corpus={small_corpus}', '--config.steps=5000', '--config.sample.num=0',
       '--config.data.num_epochs=10', '--config.checkpoint_every=100000'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline, log = time.time() + 240, os.path.join(workdir, 'metrics.jsonl')
  while not (os.path.exists(log) and os.path.getsize(log)) and time.time() < deadline:
    time.sleep(0.05)  # until the first logged step: training is under way
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert 'stopped by SIGTERM: saved a checkpoint at step' in stderr
  saved = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert len(saved) == 1 and 0 < int(saved[0]) < 5000


# --- bad input -------------------------------------------------------------------------------


BAD_CONFIGS = [
    (['--config.model.n_embd=66'], 'model.n_embd=66 is not divisible by model.n_head=4'),
    (['--config.model.n_kv_head=3'], 'model.n_head=4 is not divisible by model.n_kv_head=3'),
    (['--config.seq_len=65'], 'seq_len=65 is beyond the learned position table'),
    (['--config.model.colour=3'], 'unknown config key config.model.colour'),
    (['--config.data.corpus=/nonexistent/x.txt'], '/nonexistent/x.txt'),
    (['--config.steps=100000'], 'steps=100000 needs 100000 batches'),
    (['--config.batch_size=6', '--config.grad_accum=4'], 'batch_size=6 is not divisible'),
    (['--config.sample.temperature=-1'], 'sample.temperature=-1.0 must be >= 0'),
    (['--config.optim.decay_fraction=0'], 'optim.decay_fraction=0.0 must be in (0, 1]'),
    (['--config.sample.prompt=' + 'To be, or not to be. ' * 20], 'no room left in the 64-token'),
]


def assert_bad_config_is_one_line(run, overrides, message, small_corpus, tmp_path):
  result = run(f'--config={TINY}', f'--config.data.corpus={small_corpus}', *overrides,
               f'--workdir={tmp_path / "run"}')
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], result.stderr
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.parametrize('overrides, message', BAD_CONFIGS)
def test_bad_config_is_one_line(overrides, message, small_corpus, tmp_path):
  """Each mistake through the command's main() in this process (no interpreter start per case);
  test_bad_config_through_python_m runs one as the command."""
  assert_bad_config_is_one_line(run_main, overrides, message, small_corpus, tmp_path)


def test_bad_config_through_python_m(small_corpus, tmp_path):
  overrides, message = BAD_CONFIGS[5]  # found after JAX starts and the data is prepared
  assert_bad_config_is_one_line(run_cli, overrides, message, small_corpus, tmp_path)


def test_corpus_errors(tiny, tmp_path):
  empty = tmp_path / 'empty.txt'
  empty.write_text('')
  binary = tmp_path / 'binary.txt'
  binary.write_bytes(bytes(range(128, 256)) * 50)
  for path, message in ((empty, 'empty'), (binary, 'not valid UTF-8')):
    tiny.data.corpus = str(path)
    with pytest.raises(UserError, match=message):
      trainer.train(tiny, str(tmp_path / 'run'), log=lambda _: None)


def test_vocab_smaller_or_larger_than_the_tokenizers(tiny, tiny_base, tmp_path):
  tiny.data.tokenizer = os.path.join(tiny_base, 'tokenizer.model')  # the tokenizer of a tiny run
  tiny.model.vocab_size = 300
  with pytest.raises(UserError, match='model.vocab_size'):
    trainer.train(tiny, str(tmp_path / 'second'), log=lambda _: None)
  # A vocabulary padded beyond the tokenizer's 512 ids: the ids beyond are never sampled (the
  # tokenizer could not decode them), here in the samples that end training.
  tiny.model.vocab_size = 640
  tiny.sample.update(num=4, temperature=1.0, max_tokens=48)
  logs = []
  trainer.train(tiny, str(tmp_path / 'padded'), log=logs.append)
  assert sum(line.startswith('--- sample') for line in logs) == 4


def test_workdir_of_another_model_shape_is_refused_untouched(tiny, tiny_base, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_base, workdir)  # a finished run of `tiny`
  before = directory_digest(workdir)
  tiny.model.n_embd = 128
  with pytest.raises(UserError, match=r'holds a run trained with other settings \(model.n_embd: '
                                       r'64 -> 128\)'):
    trainer.train(tiny, workdir, log=lambda _: None)
  tiny.allow_config_changes = True  # then the checkpoint itself does not fit
  with pytest.raises(UserError, match='holds a model of another shape'):
    trainer.train(tiny, workdir, log=lambda _: None)
  assert directory_digest(workdir) == before


def test_resume_with_a_changed_trajectory_is_refused_unless_allowed(tiny, tiny_base, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_base, workdir)  # a finished run of `tiny`
  before = directory_digest(workdir)
  tiny.update(steps=30, log_every=10, keep_checkpoints=5)  # log_every, keep: free to change
  tiny.optim.update(lr=1e-3, grad_clip=0.0)  # clipping off: the optimizer state keeps its layout
  changes = 'optim.grad_clip: 1.0 -> 0.0; optim.lr: 0.003 -> 0.001; steps: 20 -> 30'
  with pytest.raises(UserError, match=re.escape(f'({changes})')):
    trainer.train(tiny, workdir, log=lambda _: None)
  assert directory_digest(workdir) == before
  tiny.allow_config_changes = True
  logs = []
  trainer.train(tiny, workdir, log=logs.append)
  assert f'resuming with changed settings (config.allow_config_changes): {changes}' in logs
  assert [r['step'] for r in read_metrics(workdir)] == [5, 10, 15, 20, 30]
  assert json.load(open(os.path.join(workdir, 'config.json')))['steps'] == 30


def test_a_checkpoint_of_another_optimizer_layout_is_one_line(tiny, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  # the layout of a run saved before clipping always had a place in the optimizer's state
  adamw_alone = lambda o, steps, param_axes: optax.adamw(optim.schedule(o, steps),
                                                        mask=optim.decay_mask)
  with monkeypatch.context() as m:
    m.setattr(trainer.optim, 'optimizer', adamw_alone)
    trainer.train(tiny, workdir, log=lambda _: None)
  with pytest.raises(UserError, match='checkpoint step 20 in .* holds a train state of another '
                                      'structure than this config builds'):
    trainer.train(tiny, workdir, log=lambda _: None)


def test_validation_scores_the_same_tokens_whatever_the_microbatching(tiny, tmp_path):
  """grad_accum changes how the batch is fed, not which validation rows are scored."""
  val_loss = {}
  for accum in (1, 4):
    tiny.grad_accum = accum
    tiny.optim.eps = 1e-3  # as in test_grad_accumulation_equals_one_big_batch
    final = trainer.train(tiny, str(tmp_path / f'accum{accum}'), log=lambda _: None)
    val_loss[accum] = final['val_loss']
  assert val_loss[1] == pytest.approx(val_loss[4], abs=2e-5)


def test_padded_vocabulary_ids_get_no_probability(tiny):
  """With a model vocabulary beyond the tokenizer's, the train and eval steps' softmax is over
  the tokenizer's ids: the padded ids get no gradient and change no loss."""
  gpt, tx, state = step_setup(tiny)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (8, 33), 0, 400, dtype=jnp.int32)
  objective = lm.LanguageModeling.without_data(tiny, types.SimpleNamespace(vocab_size=400))
  step = jax.jit(trainer.make_train_step(objective, tx, tiny))
  new_state, metrics = step(state, {'tokens': tokens})
  embedding = network.head_weight(state.params, tiny.model)
  logits = gpt.apply({'params': state.params}, tokens[:, :-1])
  expected = -jax.nn.log_softmax(logits[..., :400])[
      jnp.arange(8)[:, None], jnp.arange(32), tokens[:, 1:]].mean()
  np.testing.assert_allclose(metrics['train_loss'], expected, rtol=1e-5)
  np.testing.assert_array_equal(network.head_weight(new_state.params, tiny.model)[400:],
                                embedding[400:])  # no gradient, no decay: embeddings aren't decayed
  eval_out = jax.jit(trainer.make_eval_step(objective))(state, {'tokens': tokens})
  np.testing.assert_allclose(eval_out['loss_sum'] / eval_out['targets'], expected, rtol=1e-5)


def test_a_diverged_run_stops_and_keeps_its_good_checkpoints(tiny, tmp_path):
  workdir = str(tmp_path / 'run')
  tiny.update(steps=40, checkpoint_every=2, log_every=20, eval_every=20)
  tiny.optim.update(lr=1e4, grad_clip=0.0)  # the loss is NaN within a few steps
  with pytest.raises(UserError, match=r'training diverged: the loss is nan at step (\d+); stopped '
                                      r'without saving it \(the last checkpoint, step (\d+)'
                     ) as error:
    trainer.train(tiny, workdir, log=lambda _: None)
  diverged, kept = map(int, re.search(r'step (\d+);.*step (\d+)', str(error.value)).groups())
  assert 0 < kept < diverged <= kept + 2
  assert max(map(int, os.listdir(os.path.join(workdir, 'checkpoints')))) == kept
  params = runs.load(workdir, log=lambda _: None).params
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))
  assert not os.path.exists(os.path.join(workdir, runs.LOCK))


def truncate_array_files(step_dir):
  """Damages a checkpoint as a failing disk or an interrupted copy does: every array data file
  (TensorStore's OCDBT chunks) is cut to nothing. Cutting each in half was not enough: OCDBT
  writes arrays one after another into a few files, and in some sessions every array a model
  load reads lay in the first halves (the load then succeeded at the damaged step)."""
  chunks = os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd')
  for name in os.listdir(chunks):
    with open(os.path.join(chunks, name), 'r+b') as f:
      f.truncate(0)


def test_a_damaged_newest_checkpoint_is_skipped(tiny_base, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_base, workdir)  # a finished run of `tiny`
  truncate_array_files(os.path.join(workdir, 'checkpoints', '20'))
  logs = []
  loaded = runs.load(workdir, log=logs.append)  # what sample and evaluate read
  assert loaded.step == 10
  assert len(logs) == 1 and logs[0].startswith(f'skipping checkpoint step 20 in {workdir}')
  # A step directory without its commit marker is not trusted at all.
  os.remove(os.path.join(workdir, 'checkpoints', '10', checkpoint.COMMIT_MARKER))
  with open(os.path.join(workdir, 'checkpoints', '10', checkpoint.STEP_METADATA), 'w') as f:
    f.write('{}')
  with pytest.raises(UserError, match=r'no checkpoint in .* can be read \(step 20: '):
    runs.load(workdir, log=lambda _: None)


def test_training_resumes_from_the_step_before_a_damaged_one(tiny, tiny_base, tmp_path):
  whole, damaged = tiny_base, str(tmp_path / 'damaged')  # both runs of `tiny`; whole read only
  shutil.copytree(whole, damaged)
  truncate_array_files(os.path.join(damaged, 'checkpoints', '20'))
  logs = []
  trainer.train(tiny, damaged, log=logs.append)
  assert any(m.startswith('skipping checkpoint step 20') for m in logs)
  assert f'resuming from step 10 in {damaged}' in logs
  assert os.path.isdir(os.path.join(damaged, 'checkpoints', '20' + checkpoint.UNREADABLE_SUFFIX))
  assert read_metrics(damaged) == read_metrics(whole)  # steps 15 and 20 trained again, exactly


def test_a_second_run_on_a_workdir_in_use_stops(tiny, tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    (workdir / runs.LOCK).write_text(json.dumps(
        {'host': socket.gethostname(), 'pid': holder.pid, 'since': 'now'}))
    with pytest.raises(UserError, match=rf'{workdir} is in use by another run: process '
                                        rf'{holder.pid} on {socket.gethostname()}'):
      trainer.train(tiny, str(workdir), log=lambda _: None)
    assert not os.path.exists(workdir / 'checkpoints')
  finally:
    holder.kill()
    holder.wait()
  logs = []  # the holder is gone: its lock is stale
  trainer.train(tiny, str(workdir), log=logs.append)
  assert any(m.startswith('taking over the stale lock of process') for m in logs)
  assert not os.path.exists(workdir / runs.LOCK)
  (workdir / runs.LOCK).write_text(json.dumps({'host': 'elsewhere', 'pid': 1, 'since': 'now'}))
  with pytest.raises(UserError, match=rf'process 1 on elsewhere .*delete {workdir}/lock.json'):
    trainer.train(tiny, str(workdir), log=lambda _: None)


def test_a_full_disk_is_one_line(tiny, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  usage = shutil.disk_usage(tmp_path)
  monkeypatch.setattr(shutil, 'disk_usage', lambda path: usage._replace(free=1 << 20))
  with pytest.raises(UserError, match=r'no space for a checkpoint in .*/run/checkpoints: 1 MiB '
                     r'are free but a checkpoint needs about 2 MiB; nothing saved'):
    trainer.train(tiny, workdir, log=lambda _: None)
  monkeypatch.undo()
  # and when the write itself fails (the disk filled up meanwhile)
  def full_disk():
    try:
      raise OSError(errno.ENOSPC, 'No space left on device')
    except OSError as e:
      raise ValueError('writing a TensorStore chunk failed') from e

  ckpts = checkpoint.Checkpoints(str(tmp_path / 'ckpts'), keep=1)
  monkeypatch.setattr(ckpts._manager, 'wait_until_finished', full_disk)
  with pytest.raises(UserError, match='the disk is full; nothing saved'):
    ckpts.wait()


def test_init_from_starts_from_that_runs_parameters(tiny, tiny_base, tmp_path):
  source = str(tmp_path / 'source')
  shutil.copytree(tiny_base, source)  # a finished run of `tiny`, named as the errors below expect
  tiny.init_from = source
  tiny.optim.lr = 0.0  # so the fine-tuned parameters must be exactly where they started
  logs = []
  trainer.train(tiny, str(tmp_path / 'tuned'), log=logs.append)
  assert any(line.startswith(f'starting from the parameters of {source}') for line in logs)
  jax.tree.map(np.testing.assert_array_equal, runs.load(str(tmp_path / 'tuned')).params,
               runs.load(source).params)

  tiny.model.n_embd = 128
  with pytest.raises(UserError, match=r"init_from='.*source' holds a model of another shape"):
    trainer.train(tiny, str(tmp_path / 'other'), log=lambda _: None)
  assert not os.path.exists(tmp_path / 'other' / 'config.json')


def test_a_setting_only_another_objective_reads_is_no_change():
  saved = config_lib.base_config()
  saved.objective = 'sft'
  config = copy.deepcopy(saved)
  config.ppo.kl_coef, config.dpo.beta, config.task.shots = 0.5, 0.3, (1,)
  assert runs.config_changes(saved.to_dict(), config) == []
  config.sft.shots = 0
  assert runs.config_changes(saved.to_dict(), config) == ['sft.shots: 2 -> 0']
  config.objective = 'ppo'
  assert 'ppo.kl_coef: 0.05 -> 0.5' in runs.config_changes(saved.to_dict(), config)
