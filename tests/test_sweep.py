"""The Chinchilla sweep: planning budgets × sizes, and the resumable runner."""

import csv
import json
import math
import os
import shutil

import pytest

from conftest import ROOT
from gpt_jax import cli, flops, sweep, trainer
from gpt_jax.errors import UserError

CHINCHILLA = os.path.join(ROOT, 'experiments', 'chinchilla.py')


def cpu_config():
  return cli.load_experiment(CHINCHILLA)


CAP = 4 * 4_702_813  # four passes over vocab-320 Shakespeare's training split


def test_cpu_plan_spends_each_budget_within_the_epoch_cap_and_spans_30x_or_more():
  config = cpu_config()
  grid = sweep.isoflop_points(config, max_tokens=CAP)
  budgets = sorted(config.sweep.budgets)
  assert budgets[-1] / budgets[0] >= 30
  assert len(grid) == len(budgets) * config.sweep.sizes_per_budget
  for point in grid:
    run = point.config
    params = flops.param_count(run.model)
    spent = 6 * params * point.tokens
    # Whole steps: within half a step of the budget.
    assert abs(spent - point.budget) <= 0.5 * 6 * params * run.batch_size * run.seq_len
    assert point.tokens <= CAP and run.steps >= config.sweep.min_steps
    assert run.optim.schedule == 'wsd' and run.optim.warmup_steps == config.sweep.warmup_steps
    assert run.optim.lr == pytest.approx(
        config.sweep.lr * (config.sweep.lr_width / run.model.n_embd) ** (1 / 3))
  for budget in budgets:
    sizes = [flops.param_count(p.config.model) for p in grid if p.budget == budget]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_each_width_trains_one_trunk_and_branches_its_shorter_points_from_it():
  config = cpu_config()
  grid = sweep.isoflop_points(config, max_tokens=CAP)
  points = sweep.plan(config, max_tokens=CAP)
  isoflop = [p for p in points if p.role == 'sweep']
  assert sorted(p.name for p in isoflop) == sorted(p.name for p in grid)
  for width in {p.width for p in grid}:
    same = [p for p in isoflop if p.width == width]
    trunk, branches = same[0], same[1:]  # trunk first: branches read its checkpoints
    assert trunk.trunk == '' and trunk.config.steps == max(p.config.steps for p in same)
    f = config.optim.decay_fraction
    for branch in branches:
      run = branch.config
      assert branch.trunk == trunk.name
      # The cooldown starts where the branch's own decay would, inside the trunk's stable phase.
      assert branch.branch_step == run.steps - max(1, round(f * run.steps))
      assert config.sweep.warmup_steps < branch.branch_step < trunk.config.steps * (1 - f)
    assert trunk.config.checkpoint_steps == tuple(sorted(b.branch_step for b in branches))


def test_probe_and_seed_runs_are_straight_copies_of_sweep_points():
  config = cpu_config()
  points = sweep.plan(config, max_tokens=CAP)
  by_name = {p.name: p for p in points}
  probe = [p for p in points if p.role == 'lr_probe']
  widths = [p.width for p in points if p.role == 'sweep']
  widest_twice = max(w for w in widths if widths.count(w) > 1)
  assert widest_twice < max(widths)  # the widest appears once, at the top budget: too dear
  assert sorted({p.width for p in probe}) == [min(widths), widest_twice]
  assert sorted(p.lr_multiplier for p in probe) == [0.5, 0.5, 2.0, 2.0]
  seeds = [p for p in points if p.role == 'seed']
  assert [p.config.seed for p in seeds] == [1, 2]
  [cosine] = [p for p in points if p.role == 'cosine']
  assert cosine.config.optim.schedule == 'cosine' and cosine.name == seeds[0].name[:-6] + '_cosine'
  for p in probe + seeds + [cosine]:
    original = by_name[p.name.rsplit('_', 1)[0]]
    assert p.trunk == '' and p.config.steps == original.config.steps
    assert p.config.optim.lr == pytest.approx(original.config.optim.lr * p.lr_multiplier)


def test_sizes_slide_to_larger_models_when_the_smallest_needs_more_than_the_epochs():
  config = cpu_config()
  unlimited = [p for p in sweep.isoflop_points(config) if p.budget == 8e11]
  limited = [p for p in sweep.isoflop_points(config, max_tokens=10_000_000) if p.budget == 8e11]
  assert max(p.tokens for p in unlimited) > 10_000_000 >= max(p.tokens for p in limited)
  assert limited[0].config.model.n_embd > unlimited[0].config.model.n_embd
  with pytest.raises(UserError, match='more than the 10,000 the corpus gives in '
                     'data.num_epochs=4 pass'):
    sweep.isoflop_points(config, max_tokens=10_000)


def test_verification_run_is_at_the_predicted_size_or_refused_with_the_largest_budget():
  config = cpu_config()
  point = sweep.verification_point(config, params=80_000, max_tokens=CAP)
  assert point.role == 'verification' and point.budget == 3 * 2e12
  assert point.config.model.n_embd == 48  # 72,000 parameters: the nearest width
  assert abs(6 * flops.param_count(point.config.model) * point.tokens - 6e12) < 6 * 80_000 * 1024
  with pytest.raises(UserError, match=r'needs 28,\d\d\d,\d+ tokens at width 32 \(35,712 '
                     r'parameters, the nearest to 30,000\) .* at that size it feeds at most '
                     r'4\.0\de\+12 FLOPs'):
    sweep.verification_point(config, params=30_000, max_tokens=CAP)


def test_chinchilla_flop_accounting_buys_fewer_tokens():
  config = cpu_config()
  six_nd = sweep.isoflop_points(config)
  config.sweep.flops = 'chinchilla'
  exact = sweep.isoflop_points(config)
  assert all(e.tokens < s.tokens for e, s in zip(exact, six_nd))
  assert exact[0].flops_per_step == flops.chinchilla_flops_per_sequence(
      exact[0].config.model, config.seq_len) * config.batch_size


@pytest.mark.parametrize('key, value, message', [
    ('flops', 'kaplan', "sweep.flops='kaplan' is not '6nd' or 'chinchilla'"),
    ('schedule', 'step', "sweep.schedule='step' is not 'wsd' or 'cosine'"),
    ('sizes_per_budget', 10, 'exceeds the 9 sweep.widths'),
    ('min_steps', 10_000, 'buys only'),
    ('seeds', 0, 'sweep.seeds=0 must be at least 1'),
    ('budgets', (1e11, 2e11, 3e11), 'too few to fit a prediction'),
    ('verify_factor', 0.5, 'sweep.verify_factor=0.5 must be >= 1'),
    ('lr_probe', (0.5, 0.0), 'holds a multiplier <= 0'),
    ('lr_probe', (0.5, 'nan'), 'holds a multiplier <= 0'),
    ('budgets', (5e10, 1.25e11, 1.251e11, 3e11, 8e11), r'two runs of the sweep would be named '
     r'C1\.25e11_d\d+_L2: sweep\.budgets .* agree to 3 significant digits'),
])
def test_bad_sweep_configs(key, value, message):
  config = cpu_config()
  config.sweep[key] = value
  with pytest.raises(UserError, match=message):
    sweep.plan(config)


@pytest.mark.parametrize('key, value, message', [
    ('decay_fraction', 1.0, 'leaves a WSD run no constant phase'),
    ('decay_fraction', float('nan'), r'must be in \(0, 1\]'),
    ('schedule', 'foo', "optim.schedule='foo' is not one of"),
])
def test_bad_optimizer_settings_of_a_sweep(key, value, message):
  config = cpu_config()
  config.optim[key] = value
  with pytest.raises(UserError, match=message):
    sweep.plan(config)


def test_seed_repeats_count_from_the_configs_seed_and_a_probe_of_1x_is_the_sweep_run():
  config = cpu_config()
  config.seed = 5
  config.sweep.lr_probe = (0.5, 1.0)
  points = sweep.plan(config)
  assert [p.config.seed for p in points if p.role == 'seed'] == [6, 7]
  assert [p.lr_multiplier for p in points if p.role == 'lr_probe'] == [0.5, 0.5]


def test_gpu_variant_needs_a_bigger_corpus_than_shakespeare():
  config = cli.load_experiment(CHINCHILLA + ':gpu')
  assert min(config.sweep.budgets) == 1e17 and max(config.sweep.budgets) == 1e19
  assert config.sweep.schedule == 'wsd' and config.data.num_epochs == 1
  with pytest.raises(UserError, match='pass a larger corpus'):
    sweep.plan(config, max_tokens=4_702_813)
  with pytest.raises(UserError, match='unknown chinchilla variant'):
    cli.load_experiment(CHINCHILLA + ':laptop')


# --- the runner on a micro sweep -------------------------------------------------------------


@pytest.fixture
def micro(small_corpus):
  """4 budgets × 3 tiny sizes on the small corpus, a one-multiplier probe, one seed repeat and a
  cosine run: about a minute."""
  config = cpu_config()
  config.data.corpus = small_corpus
  config.seq_len = 32
  config.batch_size = 4
  config.eval_batches = 2
  config.model.block_size = 32
  config.sweep.update(budgets=(1.5e8, 3e8, 6e8, 1.2e9), widths=(8, 12, 16, 24),
                      sizes_per_budget=3, tokens_per_param_guess=40.0, min_steps=10,
                      warmup_steps=3, lr_probe=(0.5,), seeds=2)
  return config


def test_curves_join_the_final_losses_of_one_model_size_across_budgets(tmp_path):
  """curves.csv is approach 1's input: one curve per size, through its points' final losses."""
  def row(name, budget, width, loss, role='sweep'):
    tokens = budget / (6 * 1000 * width)
    return {**dict.fromkeys(sweep.RUN_COLUMNS, ''), 'name': name, 'role': role,
            'budget': budget, 'n_layer': 2, 'n_embd': width, 'params': 1000 * width,
            'tokens': tokens, 'flops': budget, 'loss': loss}
  for args in (('C2e11_d16_L2', 2e11, 16, 2.0), ('C1e11_d16_L2', 1e11, 16, 2.2),
               ('C1e11_d32_L2', 1e11, 32, 2.3), ('C1e11_d16_L2_seed1', 1e11, 16, 2.1, 'seed')):
    sweep._add_row(str(tmp_path), row(*args))
  curves = read_rows(tmp_path / 'curves.csv')
  assert [(c['name'], float(c['flops']), float(c['loss'])) for c in curves] == [
      ('d16_L2', 1e11, 2.2), ('d16_L2', 2e11, 2.0), ('d32_L2', 1e11, 2.3)]
  assert len(read_rows(tmp_path / 'runs.csv')) == 4


def read_rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_runner_branches_predicts_verifies_and_resumes_a_half_finished_branch(micro, tmp_path,
                                                                              monkeypatch):
  workdir = str(tmp_path / 'sweep')
  logs = []
  micro.sweep.workers = 2  # two worker processes; the resume below trains in this one
  sweep.run_sweep(micro, workdir, log=logs.append)
  rows = read_rows(os.path.join(workdir, 'runs.csv'))
  planned = sweep.plan(micro)
  verification = next(r for r in rows if r['role'] == 'verification')
  assert sorted(r['name'] for r in rows if r is not verification) == sorted(
      p.name for p in planned)
  assert float(verification['budget']) == 3 * 1.2e9
  grid = [r['role'] == 'sweep' for r in rows]  # the isoFLOP points first: the fit reads them
  assert grid == sorted(grid, reverse=True)
  by_name = {r['name']: r for r in rows}
  for row, point in ((by_name[p.name], p) for p in planned):
    assert (row['role'], row['trunk'], int(row['branch_step'])) == (
        point.role, point.trunk, point.branch_step)
    assert float(row['tokens']) * 6 * float(row['params']) == pytest.approx(
        float(row['flops_6nd'])) == pytest.approx(float(row['flops']))
    assert 0 < float(row['loss']) < math.log(320)
    assert 0 < float(row['step_seconds']) < float(row['wall_seconds'])
  prediction = json.load(open(os.path.join(workdir, 'prediction.json')))
  report = json.load(open(os.path.join(workdir, 'scaling', 'report.json')))
  measured = float(verification['loss'])
  assert report['verification']['measured_loss'] == pytest.approx(measured)
  assert report['verification']['predicted_loss'] == prediction['loss']
  assert any('inside train steps' in line for line in logs)
  probe, schedule = report['controls']['lr_probe'], report['controls']['schedule']
  for p in probe:  # beside the sweep's own run at multiplier 1
    own = next(r for r in rows if r['role'] == 'sweep' and float(r['params']) == p['params']
               and float(r['budget']) == p['budget'])
    assert p['losses'] == {'0.5': float(by_name[own['name'] + '_lr0.5x']['loss']),
                           '1': float(own['loss'])}
  cosine = next(r for r in rows if r['role'] == 'cosine')
  assert schedule['cosine_loss'] == float(cosine['loss'])
  assert schedule['wsd_loss'] == float(by_name[cosine['name'][:-len('_cosine')]]['loss'])

  # Kill a branch during its cooldown: its row and its newest checkpoint are lost.
  branch = next(p for p in planned if p.trunk)
  kept = [r for r in rows if r['name'] != branch.name]
  with open(os.path.join(workdir, 'runs.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=sweep.RUN_COLUMNS)
    writer.writeheader()
    writer.writerows(kept)
  checkpoints = os.path.join(workdir, 'runs', branch.name, 'checkpoints')
  steps = sorted(int(s) for s in os.listdir(checkpoints))
  assert steps[-1] == branch.config.steps and len(steps) >= 2
  shutil.rmtree(os.path.join(checkpoints, str(steps[-1])))

  trained = []
  micro.sweep.workers = 1
  real_train = trainer.train
  monkeypatch.setattr(trainer, 'train', lambda config, run_dir, **kwargs: trained.append(run_dir)
                      or real_train(config, run_dir, **kwargs))
  sweep.run_sweep(micro, workdir, log=lambda _: None)
  assert trained == [os.path.join(workdir, 'runs', branch.name)]
  again = {r['name']: r for r in read_rows(os.path.join(workdir, 'runs.csv'))}
  timing = ('wall_seconds', 'step_seconds')
  for row in rows:  # the branch resumed here ends bit for bit where a worker process ended it
    assert {k: v for k, v in again[row['name']].items() if k not in timing} == {
        k: v for k, v in row.items() if k not in timing}

  micro.sweep.verify_factor = 4.0  # the prediction on disk is for another run: refused
  with pytest.raises(UserError, match=r'prediction\.json predicts a run of 3\.6e\+09 FLOPs but '
                     r'this config verifies at 4\.8e\+09'):
    sweep.run_sweep(micro, workdir, log=lambda _: None)
  assert len(trained) == 1
