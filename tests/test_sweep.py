"""The Chinchilla sweep: planning budgets × sizes, and the resumable runner."""

import csv
import math
import os

import pytest

from gpt_jax import cli, flops, sweep, trainer
from gpt_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHINCHILLA = os.path.join(ROOT, 'experiments', 'chinchilla.py')


def cpu_config():
  return cli.load_experiment(CHINCHILLA)


def test_cpu_plan_spends_each_budget_and_fits_one_epoch():
  config = cpu_config()
  points = sweep.plan(config, max_tokens=4_702_813)  # vocab-320 Shakespeare's training split
  assert len(points) == len(config.sweep.budgets) * config.sweep.sizes_per_budget >= 15
  for point in points:
    run = point.config
    params = flops.param_count(run.model)
    spent = 6 * params * point.tokens
    # Whole steps: within half a step of the budget.
    assert abs(spent - point.budget) <= 0.5 * 6 * params * run.batch_size * run.seq_len
    assert point.tokens <= 4_702_813 and run.steps >= config.sweep.min_steps
    assert run.optim.warmup_steps == max(1, round(0.05 * run.steps))
    assert run.optim.lr == pytest.approx(
        config.sweep.lr * config.sweep.lr_width / run.model.n_embd)
  for budget in config.sweep.budgets:
    sizes = [flops.param_count(p.config.model) for p in points if p.budget == budget]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_sizes_slide_to_larger_models_when_the_smallest_needs_more_than_an_epoch():
  config = cpu_config()
  unlimited = [p for p in sweep.plan(config) if p.budget == 2e11]
  limited = [p for p in sweep.plan(config, max_tokens=4_000_000) if p.budget == 2e11]
  assert max(p.tokens for p in unlimited) > 4_000_000 >= max(p.tokens for p in limited)
  assert limited[0].config.model.n_embd > unlimited[0].config.model.n_embd
  with pytest.raises(UserError, match='more than the 10,000 of one pass over the corpus'):
    sweep.plan(config, max_tokens=10_000)


def test_chinchilla_flop_accounting_buys_fewer_tokens():
  config = cpu_config()
  six_nd = sweep.plan(config)
  config.sweep.flops = 'chinchilla'
  exact = sweep.plan(config)
  assert all(e.tokens < s.tokens for e, s in zip(exact, six_nd))
  assert exact[0].flops_per_step == flops.chinchilla_flops_per_sequence(
      exact[0].config.model, config.seq_len) * config.batch_size


@pytest.mark.parametrize('key, value, message', [
    ('flops', 'kaplan', "sweep.flops='kaplan' is not '6nd' or 'chinchilla'"),
    ('sizes_per_budget', 9, 'exceeds the 7 sweep.widths'),
    ('min_steps', 10_000, 'buys only'),
])
def test_bad_sweep_configs(key, value, message):
  config = cpu_config()
  config.sweep[key] = value
  with pytest.raises(UserError, match=message):
    sweep.plan(config)


def test_gpu_variant_needs_a_bigger_corpus_than_shakespeare():
  config = cli.load_experiment(CHINCHILLA + ':gpu')
  assert min(config.sweep.budgets) == 1e17 and max(config.sweep.budgets) == 1e19
  with pytest.raises(UserError, match='pass a larger corpus'):
    sweep.plan(config, max_tokens=4_702_813)
  with pytest.raises(UserError, match='unknown chinchilla variant'):
    cli.load_experiment(CHINCHILLA + ':laptop')


# --- the runner on a micro sweep -------------------------------------------------------------


@pytest.fixture
def micro(small_corpus):
  """3 budgets × 3 tiny sizes on the small corpus: about a minute."""
  config = cpu_config()
  config.data.corpus = small_corpus
  config.seq_len = 32
  config.batch_size = 4
  config.eval_batches = 2
  config.model.block_size = 32
  config.sweep.update(budgets=(1e8, 2e8, 4e8), widths=(8, 12, 16, 24), sizes_per_budget=3,
                      tokens_per_param_guess=40.0, min_steps=10, evals_per_run=4)
  return config


def read_rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_runner_writes_rows_skips_finished_points_and_resumes_unfinished(micro, tmp_path,
                                                                         monkeypatch):
  workdir = str(tmp_path / 'sweep')
  logs = []
  sweep.run_sweep(micro, workdir, log=logs.append)
  rows = read_rows(os.path.join(workdir, 'runs.csv'))
  assert [r['name'] for r in rows] == [p.name for p in sweep.plan(micro)]
  assert any(line.startswith('[9/9] ') for line in logs)
  for row in rows:
    assert float(row['tokens']) * 6 * float(row['params']) == pytest.approx(
        float(row['flops_6nd'])) == pytest.approx(float(row['flops']))
    assert 0 < float(row['loss']) < math.log(320) and float(row['wall_seconds']) > 0
  curves = read_rows(os.path.join(workdir, 'curves.csv'))
  for row in rows:  # each curve ends where its run did, at the loss runs.csv reports
    curve = [c for c in curves if c['name'] == row['name']]
    assert len(curve) >= 4 and curve[-1]['step'] == row['steps']
    assert curve[-1]['loss'] == row['loss'] and curve[-1]['tokens'] == row['tokens']
  assert os.path.exists(os.path.join(workdir, 'scaling', 'report.md'))

  # Lose the last point's row and its final checkpoint, as if killed during its last steps.
  last = rows[-1]['name']
  with open(os.path.join(workdir, 'runs.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=sweep.RUN_COLUMNS)
    writer.writeheader()
    writer.writerows(rows[:-1])
  checkpoints = os.path.join(workdir, 'runs', last, 'checkpoints')
  import shutil
  shutil.rmtree(os.path.join(checkpoints, max(os.listdir(checkpoints), key=int)))

  trained = []
  real_train = trainer.train
  monkeypatch.setattr(trainer, 'train', lambda config, run_dir, **kwargs: trained.append(run_dir)
                      or real_train(config, run_dir, **kwargs))
  sweep.run_sweep(micro, workdir, log=lambda _: None)
  assert trained == [os.path.join(workdir, 'runs', last)]
  again = read_rows(os.path.join(workdir, 'runs.csv'))
  drop_time = lambda r: {k: v for k, v in r.items() if k != 'wall_seconds'}
  assert [drop_time(r) for r in again] == [drop_time(r) for r in rows]
  assert read_rows(os.path.join(workdir, 'curves.csv')) == curves
