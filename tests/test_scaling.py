"""Scaling-law fits: recovery of known laws from synthetic sweeps, bootstrap intervals, the report,
and one-line errors for bad CSV files."""

import json
import os
import re

import numpy as np
import pytest

from conftest import run_cli as run_command
from gpt_jax import scaling
from gpt_jax.errors import UserError
from gpt_jax.scaling.__main__ import main

# Hoffmann et al.'s own fit (eq. 10) as the true law of the synthetic sweeps.
TRUE = scaling.ParametricFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, huber=0.0)
BUDGETS = np.geomspace(1e17, 1e19, 5)


def sweep(sigma: float = 0.005, seed: int = 0, sizes: int = 7, spread: float = 8.0) -> dict:
  """An isoFLOP sweep: per budget, `sizes` model sizes from 1/spread to spread times the true
  optimum, with final losses from TRUE times log-normal noise of `sigma`."""
  rng = np.random.default_rng(seed)
  budget = np.repeat(BUDGETS, sizes)
  params = np.concatenate([TRUE.optimal(c)[0] * np.geomspace(1 / spread, spread, sizes)
                           for c in BUDGETS])
  tokens = budget / (6 * params)
  loss = TRUE.loss(params, tokens) * np.exp(rng.normal(0, sigma, len(budget)))
  names = np.array([f'run{i}' for i in range(len(budget))])
  return {'name': names, 'budget': budget, 'params': params, 'tokens': tokens, 'flops': budget,
          'loss': loss}


def curves(runs: dict, points: int = 20) -> dict:
  """Each run's loss curve: TRUE at log-spaced token counts up to its final tokens."""
  fractions = np.geomspace(0.02, 1, points)
  tokens = np.concatenate([d * fractions for d in runs['tokens']])
  params = np.repeat(runs['params'], points)
  return {'name': np.repeat(runs['name'], points), 'budget': np.repeat(runs['budget'], points),
          'params': params, 'step': np.tile(np.arange(1, points + 1), len(runs['params'])),
          'tokens': tokens, 'flops': 6 * params * tokens, 'loss': TRUE.loss(params, tokens)}


def write_csv(path: os.PathLike, table: dict) -> str:
  rows = zip(*(column.tolist() for column in table.values()))
  with open(path, 'w') as f:
    f.write(','.join(table) + '\n' + ''.join(','.join(map(str, row)) + '\n' for row in rows))
  return str(path)


def run_cli(*args):
  return run_command(*args, module='gpt_jax.scaling', timeout=120)


# --- the building blocks --------------------------------------------------------------------


def test_power_law_is_exact_on_noiseless_data():
  x = np.geomspace(1e17, 1e22, 6)
  law = scaling.fit_power_law(x, 0.03 * x ** 0.52)
  assert law.coef == pytest.approx(0.03, rel=1e-9)
  assert law.exponent == pytest.approx(0.52, abs=1e-12)
  assert law(1e20) == pytest.approx(0.03 * 1e20 ** 0.52, rel=1e-9)


def test_single_variable_law_recovers_x_c_and_alpha():
  n = np.geomspace(1e6, 1e9, 8)
  x_c, alpha = scaling.fit_single_variable(n, (8.8e13 / n) ** 0.076)  # Kaplan et al.'s L(N)
  assert x_c == pytest.approx(8.8e13, rel=1e-6)
  assert alpha == pytest.approx(0.076, abs=1e-12)


def test_single_variable_law_of_a_flat_or_rising_loss_is_refused():
  n = np.geomspace(1e3, 1e5, 5)
  with pytest.raises(UserError, match='^the loss hardly falls with N .* no finite N_c'):
    scaling.fit_single_variable(n, 2.5 * (n / 1e3) ** -1e-4, 'N')
  for loss in (np.full(5, 2.5) * (1 + 1e-5 * np.arange(5)), 2.5 * (n / 1e3) ** 1e-4):
    with pytest.raises(UserError, match=r'^the loss rises with X \(L ~ X\^'):
      scaling.fit_single_variable(n, loss)
  with pytest.raises(UserError, match='^every run has the same loss 2.5, so there is nothing'):
    scaling.fit_single_variable(n, np.full(5, 2.5))


def test_frontier_law_needs_a_loss_that_falls():
  x = np.array([1e6, 2e6, 4e6, 8e6])
  x_c, alpha, runs = scaling.fit_frontier_law(x, np.array([4.0, 3.0, 3.5, 2.5]), 'N')
  assert runs == 3 and alpha == pytest.approx(np.polyfit(np.log(x[[0, 1, 3]]),
                                                        -np.log([4.0, 3.0, 2.5]), 1)[0])
  with pytest.raises(UserError, match='^no run beats the runs of smaller N: the loss does not'):
    scaling.fit_frontier_law(x, np.array([3.0, 3.1, 3.2, 3.3]), 'N')
  with pytest.raises(UserError, match=r'^every run has the same C \(1e\+18\); add runs of'):
    scaling.fit_frontier_law(np.full(4, 1e18), np.array([3.0, 3.1, 3.2, 3.3]), 'C')


def test_frontier_keeps_the_runs_no_smaller_x_beats():
  x = np.array([1, 1, 2, 3, 4, 4])
  loss = np.array([5.0, 4.0, 4.5, 3.0, 3.5, 2.0])
  assert sorted(scaling.frontier(x, loss)) == [1, 3, 5]


def test_optimal_minimises_the_loss_at_fixed_compute():
  log_n = np.linspace(10, 35, 2_000_001)  # spacing 1.25e-5
  for c in (1e18, 1e21, 5.76e23):
    n, d, ratio = TRUE.optimal(c)
    best = np.exp(log_n[np.argmin(TRUE.loss(np.exp(log_n), c / (6 * np.exp(log_n))))])
    assert n == pytest.approx(best, rel=2e-5)
    assert 6 * n * d == pytest.approx(c, rel=1e-12)
    assert ratio == pytest.approx(d / n)
  assert (TRUE.a, TRUE.b) == pytest.approx((0.28 / 0.62, 0.34 / 0.62))


# --- approach 3 -----------------------------------------------------------------------------


def test_parametric_fit_is_exact_without_noise():
  runs = sweep(sigma=0)
  fit = scaling.fit_parametric(runs['params'], runs['tokens'], runs['loss'])
  for name in ('E', 'A', 'B', 'alpha', 'beta'):
    assert getattr(fit, name) == pytest.approx(getattr(TRUE, name), rel=1e-4), name


def test_parametric_fit_with_noise():
  # Over 20 seeds of this design with 0.5% noise the errors had standard deviations of 0.010
  # (alpha), 0.009 (beta), 0.06 (E) and 0.009 (a, b); the tolerances are about 3 of them.
  runs = sweep(sigma=0.005)
  fit = scaling.fit_parametric(runs['params'], runs['tokens'], runs['loss'])
  assert fit.alpha == pytest.approx(TRUE.alpha, abs=0.03)
  assert fit.beta == pytest.approx(TRUE.beta, abs=0.03)
  assert fit.E == pytest.approx(TRUE.E, abs=0.2)
  assert fit.a == pytest.approx(TRUE.a, abs=0.03)
  assert fit.b == pytest.approx(TRUE.b, abs=0.03)


# --- approach 2 -----------------------------------------------------------------------------


def test_isoflop_minima_of_exact_parabolas():
  budget = np.repeat(BUDGETS, 5)
  n_true = 0.3 * budget ** 0.45
  params = n_true * np.tile(np.geomspace(0.2, 3, 5), len(BUDGETS))
  loss = 2 + 0.1 * np.log(params / n_true) ** 2
  fit = scaling.fit_isoflop(params, loss, budget)
  assert fit.n_opt == pytest.approx(0.3 * BUDGETS ** 0.45, rel=1e-9)
  assert fit.loss_opt == pytest.approx(np.full(len(BUDGETS), 2.0))
  assert (fit.n_law.exponent, fit.n_law.coef) == pytest.approx((0.45, 0.3), rel=1e-9)
  assert fit.d_law.exponent == pytest.approx(0.55, rel=1e-9)
  assert fit.warnings == []


def test_isoflop_minima_of_the_parametric_law():
  runs = sweep(sigma=0)
  fit = scaling.fit_isoflop(runs['params'], runs['loss'], runs['budget'])
  # The isoFLOP profile is not a parabola in log N: over sizes 1/8..8 times the optimum the
  # parabola's minimum is 3.4% too large. The profile has the same shape at every budget, so the
  # error is the same at every budget and the exponents are exact.
  assert fit.n_opt == pytest.approx(TRUE.optimal(BUDGETS)[0], rel=0.05)
  assert fit.n_law.exponent == pytest.approx(TRUE.a, abs=1e-9)
  assert fit.d_law.exponent == pytest.approx(TRUE.b, abs=1e-9)


def test_isoflop_warns_about_bad_parabolas():
  params = np.tile([1e7, 2e7, 4e7], 4)
  budget = np.repeat([1e17, 1e18, 1e19, 1e20], 3)
  loss = np.array([3.0, 2.9, 3.0,  # minimum inside
                   3.0, 2.8, 2.7,  # minimum beyond the largest size
                   2.5, 2.7, 2.5,  # opens downward
                   2.4, 2.3, 2.4])
  fit = scaling.fit_isoflop(params[:-1], loss[:-1], budget[:-1])  # 1e20 keeps 2 sizes
  assert fit.budgets.tolist() == [1e17, 1e18]
  assert len(fit.warnings) == 3
  assert 'outside the sampled sizes' in fit.warnings[0]
  assert 'opens downward' in fit.warnings[1]
  assert '2 model size(s)' in fit.warnings[2]
  with pytest.raises(UserError, match=r'^every run has the same budget 1e\+17, but the isoFLOP'):
    scaling.fit_isoflop(params[:3], loss[:3], budget[:3])
  flat = loss.copy()
  flat[3:6] = 2.9  # the 1e18 budget: no minimum either
  with pytest.raises(UserError, match=r'needs 2 or more budgets with 3\+ model sizes'):
    scaling.fit_isoflop(params[:-1], flat[:-1], budget[:-1])


def test_isoflop_optimum_that_shrinks_with_compute_is_refused():
  budget = np.repeat(BUDGETS, 5)
  n_true = 1e9 * budget ** -0.2  # N_opt falls as C grows: no scaling law
  params = n_true * np.tile(np.geomspace(0.2, 3, 5), len(BUDGETS))
  loss = 2 + 0.1 * np.log(params / n_true) ** 2
  with pytest.raises(UserError, match=r'^the isoFLOP fit gives N_opt ~ C\^-0.2 and D_opt ~ C\^1.2, '
                     'but both must grow with compute C'):
    scaling.fit_isoflop(params, loss, budget)


def test_parametric_fit_of_degenerate_runs_is_refused():
  n = np.geomspace(1e6, 3.2e7, 6)
  with pytest.raises(UserError, match='^every run has the same loss 3, so there is nothing to fit'):
    scaling.fit_parametric(n, 20 * n, np.full(6, 3.0))
  with pytest.raises(UserError, match=r'^every run has the same compute 6ND \(one budget\)'):
    scaling.fit_parametric(n, 1e15 / n, np.array([3.3, 3.1, 3.0, 3.05, 3.2, 3.5]))
  with pytest.raises(UserError, match=r'^the fit L = E \+ A/N\^α \+ B/D\^β gives alpha = -\d.*: '
                     'the loss does not fall as N grows'):
    scaling.fit_parametric(n, 20 * n, np.linspace(3.0, 3.5, 6))  # rising with N and D


# --- approach 1 -----------------------------------------------------------------------------


def test_envelope_of_curves():
  fit = scaling.fit_envelope(curves(sweep(sigma=0)))
  assert (fit.flops.min(), fit.flops.max()) == pytest.approx((BUDGETS[0], BUDGETS[-1]))
  # The envelope can only choose among the sweep's sizes (steps of 2x); a came out 0.005 too high.
  assert fit.n_law.exponent == pytest.approx(TRUE.a, abs=0.03)
  assert fit.d_law.exponent == pytest.approx(TRUE.b, abs=0.03)


def test_envelope_of_degenerate_curves_is_refused():
  flops = np.geomspace(1e15, 1e17, 5)
  # The envelope spans 1e17..1e18: at 1e17 the big model, ending there, is best; then only the
  # small one goes on, so N_opt falls as C grows.
  table = {'name': np.array(['big'] * 5 + ['small'] * 5),
           'params': np.repeat([1e8, 1e6], 5), 'flops': np.concatenate([flops, flops * 10]),
           'loss': np.concatenate([3 - np.arange(5) / 10, 3.5 - np.arange(5) / 10])}
  table['tokens'] = table['flops'] / (6 * table['params'])
  with pytest.raises(UserError, match=r'^the envelope gives N_opt ~ C\^-0.0594 and D_opt ~ '
                     r'C\^1.06, but both must grow'):
    scaling.fit_envelope(table)
  with pytest.raises(UserError, match='^every run has the same loss 3, so there is nothing to fit'):
    scaling.fit_envelope({**table, 'loss': np.full(10, 3.0)})
  one_point_each = {**table, 'name': np.array([f'run{i}' for i in range(10)])}
  with pytest.raises(UserError, match='^each of the 10 curves has one point, so there is no loss '
                     'curve'):
    scaling.fit_envelope(one_point_each)


# --- bootstrap ------------------------------------------------------------------------------


def test_bootstrap_intervals_contain_the_truth_and_shrink_with_less_noise():
  widths = {}
  for sigma in (0.002, 0.01):
    runs = sweep(sigma=sigma)
    fit = scaling.fit_sweep(runs, curves(runs), samples=40)
    assert fit.refits == {'parametric': 40, 'isoflop': 40, 'envelope': 40}
    for name in ('alpha', 'beta', 'a', 'b'):
      low, high = fit.intervals['parametric'][name]
      assert low <= getattr(TRUE, name) <= high, (sigma, name)
    for key in ('isoflop', 'envelope'):
      low, high = fit.intervals[key]['a']
      assert low <= TRUE.a <= high, (sigma, key)
    widths[sigma] = {name: np.diff(fit.intervals['parametric'][name])[0] for name in ('alpha', 'a')}
  for name in ('alpha', 'a'):
    assert widths[0.002][name] < widths[0.01][name] / 2


def test_bootstrap_where_no_resample_can_be_refitted():
  def refit(i):
    raise UserError(f'cannot refit {len(i)} runs')
  with pytest.raises(UserError, match=r'^none of the 5 resampled sweeps could be refitted \(the '
                     r'last one: cannot refit 3 runs\)$'):
    scaling.bootstrap(refit, np.zeros(3), samples=5)
  assert scaling.bootstrap(refit, np.zeros(3), samples=0) == ({}, 0)


# --- reading CSV files, and the one-line errors ---------------------------------------------

GOOD = 'params,tokens,loss\n' + ''.join(f'{n}e6,{20 * n}e6,{3 + 1 / n}\n' for n in range(1, 8))


@pytest.mark.parametrize('text, message', [
    ('', 'is empty'),
    ('params,loss\n1e6,3.0\n', 'has no column tokens (its header: params,loss)'),
    ('params,tokens,loss\n', 'has a header but no rows'),
    ('params,tokens,loss\n1e6,2e7\n', 'row 1 has 2 fields but the header has 3'),
    ('params,tokens,loss\n1e6,2e7,3.0\n1e7,abc,2.5\n', "row 2: tokens is 'abc', not a number"),
    ('params,tokens,loss\n1e6,2e7,3.0\n-1e7,2e8,2.5\n', 'row 2: params is -1e7, but must be'),
    ('params,tokens,loss\n1e6,2e7,nan\n', 'row 1: loss is nan, but must be positive'),
    ('params,tokens,loss,flops\n1e6,2e7,3,0\n', 'row 1: flops is 0, but must be positive'),
])
def test_bad_csv_files(tmp_path, text, message):
  path = tmp_path / 'runs.csv'
  path.write_text(text)
  with pytest.raises(UserError, match='^' + re.escape(str(path))) as error:
    scaling.read_csv(str(path))
  assert message in str(error.value) and '\n' not in str(error.value)


def test_csv_columns_are_numbers_or_text(tmp_path):
  path = tmp_path / 'runs.csv'
  path.write_text('name,params,tokens,loss,n_layer\na,1e6,2e7,3.5,2\nb,2e6,4e7,3.25,4\n')
  table = scaling.read_csv(str(path))
  assert table['name'].tolist() == ['a', 'b']
  assert table['loss'].tolist() == [3.5, 3.25] and table['n_layer'].dtype == float


def test_budgets_from_flops_groups():
  flops = np.array([1.02e18, 0.99e18, 1e17, 1.03e17, 1e18, 3e17])
  expected = [1e18, 1e18, 1e17, 1e17, 1e18, 3e17]
  assert scaling.run_budgets({'flops': flops}) == pytest.approx(expected, rel=0.02)
  assert scaling.run_budgets({'flops': flops, 'budget': flops}) is flops


def test_too_few_runs(tmp_path):
  runs = sweep()
  with pytest.raises(UserError, match='has 5 parameters and needs at least 6 runs, got 3'):
    scaling.fit_parametric(runs['params'][:3], runs['tokens'][:3], runs['loss'][:3])
  with pytest.raises(UserError, match='needs 2 or more budgets with 3\\+ model sizes'):
    scaling.fit_isoflop(runs['params'][:9], runs['loss'][:9], runs['budget'][:9])
  with pytest.raises(UserError, match='no such file'):
    scaling.read_csv(str(tmp_path / 'missing.csv'))


@pytest.mark.parametrize('text, message', [
    ('params,loss\n1e6,3.0\n', 'has no column tokens'),
    (GOOD.replace('\n4e6,', '\nx,'), "row 4: params is 'x', not a number"),
])
def test_cli_errors_are_one_line(tmp_path, text, message):
  path = tmp_path / 'bad.csv'
  path.write_text(text)
  result = run_cli('fit', path)
  assert result.returncode == 2
  assert result.stdout == ''
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], result.stderr


# --- the CLI and the report -----------------------------------------------------------------


def test_cli_fit_json(tmp_path):
  runs = sweep(sigma=0.002)
  result = run_cli('fit', write_csv(tmp_path / 'runs.csv', runs), '--json', '--bootstrap', '10')
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout)
  assert {'E', 'A', 'B', 'alpha', 'beta', 'a', 'b'} <= summary.keys()
  assert summary['alpha'] == pytest.approx(TRUE.alpha, abs=0.02)
  assert summary['isoflop']['a'] == pytest.approx(TRUE.a, abs=0.02)
  assert set(summary['single_variable']) == {'N', 'D', 'C'}
  assert 'envelope' in summary['skipped']


def test_report(tmp_path):
  runs = sweep()
  write_csv(tmp_path / 'runs.csv', runs)
  write_csv(tmp_path / 'curves.csv', curves(runs))
  summary = scaling.write_report(str(tmp_path), samples=10)
  out = tmp_path / 'scaling'
  assert sorted(os.listdir(out)) == ['contours.png', 'isoflop.png', 'optimal.png', 'report.json',
                                     'report.md']
  for png in ('contours.png', 'isoflop.png', 'optimal.png'):
    assert (out / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert json.loads((out / 'report.json').read_text()) == json.loads(json.dumps(summary))
  assert summary['skipped'] == {}
  assert {row['flops'] for row in summary['predictions']} >= {1e18, 1e21, 5.76e23}
  chinchilla = summary['predictions'][-1]['parametric']
  assert chinchilla['params'] * chinchilla['tokens'] * 6 == pytest.approx(5.76e23)
  text = (out / 'report.md').read_text()
  for heading in ('Approach 3', 'isoFLOP parabolas', 'envelope', 'Single-variable', '## Runs'):
    assert heading in text
  assert text.count('| run') == len(runs['name'])


def test_report_command_predicts_the_budgets_asked_for(tmp_path):
  write_csv(tmp_path / 'runs.csv', sweep())
  main(['report', str(tmp_path), '--predict', '1e20', '3e22', '--bootstrap', '0'])
  summary = json.loads((tmp_path / 'scaling' / 'report.json').read_text())
  assert [row['flops'] for row in summary['predictions']] == [1e20, 3e22]
  assert summary['intervals'] == {'parametric': {}, 'isoflop': {}}
  assert summary['skipped'] == {'envelope': 'no loss curves (a sweep writes them to curves.csv)'}


def test_a_csv_with_a_byte_order_mark_fits_as_without(tmp_path):
  runs = sweep()
  # params first: a mark read as text would stick to its name
  plain = write_csv(tmp_path / 'plain.csv', {'params': runs.pop('params'), **runs})
  with_bom = tmp_path / 'excel.csv'  # Excel's "CSV UTF-8" starts with the byte-order mark
  with_bom.write_bytes(b'\xef\xbb\xbf' + open(plain, 'rb').read())
  fits = [scaling.summarize(scaling.fit_sweep(scaling.read_csv(str(path)), samples=0))
          for path in (plain, with_bom)]
  assert fits[0] == fits[1] and fits[0]['runs'] == len(runs['loss'])


# --- runs that cannot be fitted: one line, whatever the approach ------------------------------

SIZES = ('1e6', '2e6', '4e6', '8e6', '1.6e7', '3.2e7')


@pytest.mark.parametrize('losses, reasons', [
    ((3.0,) * 6, ['parametric, L(N), L(D), L(C): every run has the same loss 3, so there is',
                  'isoflop: no budget or flops column', 'envelope: no loss curves']),
    ((3.0, 3.1, 3.2, 3.3, 3.4, 3.5),  # rising with N and D
     ['parametric: the fit L = E + A/N^α + B/D^β gives alpha = -0.0444: the loss does not fall',
      'as N grows',
      'L(N): no run beats the runs of smaller N: the loss does not fall as N grows',
      'L(D): no run beats the runs of smaller D', 'L(C): no run beats the runs of smaller C']),
])
def test_cli_nothing_can_be_fitted_is_one_line(tmp_path, losses, reasons):
  path = tmp_path / 'runs.csv'
  path.write_text('params,tokens,loss\n' + ''.join(f'{n},{20 * float(n)},{loss}\n'
                                                   for n, loss in zip(SIZES, losses)))
  result = run_cli('fit', path)
  assert result.returncode == 2 and result.stdout == ''
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: nothing can be fitted to these runs: ')
  for reason in reasons:
    assert reason in lines[0], lines[0]


def test_cli_fits_what_one_budget_allows_and_says_why_not_the_rest(tmp_path):
  path = tmp_path / 'runs.csv'
  losses = (3.3, 3.1, 3.0, 3.05, 3.2, 3.5)  # one isoFLOP profile
  path.write_text('params,tokens,loss,budget\n' + ''.join(
      f'{n},{1.6e14 / float(n)},{loss},9.6e14\n' for n, loss in zip(SIZES, losses)))
  result = run_cli('fit', path, '--bootstrap', '0')
  assert result.returncode == 0 and result.stderr == ''
  text = result.stdout
  assert '| N | 3.24e+13 | 0.06875 | 3 |' in text and '| D | 9.463e+13 | 0.07364 | 4 |' in text
  not_fitted = text[text.index('## Not fitted'):].splitlines()[2:]
  assert not_fitted == [
      '- parametric: every run has the same compute 6ND (one budget), so N and D move together and '
      'the fit L = E + A/N^α + B/D^β cannot tell their effects apart; add runs at other budgets',
      '- isoflop: every run has the same budget 9.6e+14, but the isoFLOP fit needs 2 or more '
      'budgets to see how N_opt grows with it; add runs at other budgets',
      '- envelope: no loss curves (a sweep writes them to curves.csv)',
      '- L(C): every run has the same C (9.6e+14); add runs of other C']
  assert 'Approach 3' not in text and 'Compute-optimal' not in text


def test_report_of_one_budget_leaves_out_what_was_not_fitted(tmp_path):
  write_csv(tmp_path / 'runs.csv', {'params': np.array([1e6, 2e6, 4e6, 8e6]),
                                    'tokens': np.array([8e7, 4e7, 2e7, 1e7]),
                                    'loss': np.array([3.1, 3.0, 3.05, 3.2]),
                                    'budget': np.full(4, 4.8e14)})
  summary = scaling.write_report(str(tmp_path), samples=0)
  assert sorted(os.listdir(tmp_path / 'scaling')) == ['isoflop.png', 'report.json', 'report.md']
  assert set(summary['skipped']) == {'parametric', 'isoflop', 'envelope', 'L(C)', 'holdout'}
  assert 'alpha' not in summary and set(summary['single_variable']) == {'N', 'D'}
  text = (tmp_path / 'scaling' / 'report.md').read_text()
  assert '![isoFLOP profiles](isoflop.png)\n\n## Runs' in text
  assert '| budget | params | tokens | loss | D/N |\n' in text  # and no fitted loss


# --- repeated data, predicting a larger run, and checking the prediction ---------------------


def test_effective_tokens_of_repeated_data():
  unique = np.array([1e9, 1e9, 1e9])
  # 5 epochs: R = 4, D' = U + U·15.4·(1 − exp(−4/15.4)) = 1e9 · (1 + 15.4 · 0.2287481...)
  expected = 1e9 * (1 + 15.4 * (1 - 0.7712518849544867))
  tokens = scaling.effective_tokens(np.array([5e9, 1e9, 0.5e9]), unique)
  assert tokens == pytest.approx([expected, 1e9, 0.5e9], rel=1e-12)
  assert tokens[0] == pytest.approx(4.52272097e9, rel=1e-8)
  assert scaling.effective_tokens(1e15, 1e9) == pytest.approx(16.4e9, rel=1e-9)  # U·(1 + R*)


def test_minimum_loss_law_is_exact_on_its_own_form():
  budgets = np.geomspace(1e17, 1e20, 4)
  law = scaling.fit_minimum_loss_law(budgets, 1.7 + 3e4 * budgets ** -0.25)
  assert (law.E, law.k, law.gamma) == pytest.approx((1.7, 3e4, 0.25), rel=1e-6)
  with pytest.raises(UserError, match='^the isoFLOP minima do not fall with compute'):
    scaling.fit_minimum_loss_law(budgets, 3 + 0.1 * np.log10(budgets / 1e17))
  # Minima on a straight line in log-log: no positive floor fits them, so E = 0.
  law = scaling.fit_minimum_loss_law(budgets, 50 * budgets ** -0.1)
  assert (law.E, law.k, law.gamma) == pytest.approx((0, 50, 0.1), rel=1e-9, abs=1e-12)


def test_predict_a_three_times_larger_budget():
  fit = scaling.fit_sweep(sweep(sigma=0.002), samples=20)
  budget = 3 * BUDGETS[-1]
  prediction = scaling.predict(fit, budget, samples=20)
  n, d, _ = TRUE.optimal(budget)
  # Errors seen on 3 noise seeds at 0.2%: N_opt 0.9%, loss 0.14%, L*(C) 0.18%; approach 2's
  # N_opt is 3.4% large from the parabola's bias (test_isoflop_minima_of_the_parametric_law).
  assert prediction['parametric']['params'] == pytest.approx(n, rel=0.03)
  assert prediction['params'] == prediction['parametric']['params']
  assert prediction['tokens'] * 6 * prediction['params'] == pytest.approx(budget)
  assert prediction['loss'] == pytest.approx(TRUE.loss(n, d), rel=0.005)
  low, high = prediction['loss_interval']
  assert low <= TRUE.loss(n, d) <= high and prediction['bootstrap_refits'] == 20
  assert prediction['method'] == 'minimum_loss_law'
  assert prediction['loss'] == prediction['minimum_loss_law']['loss']
  assert prediction['parametric']['loss_at_params'] == pytest.approx(TRUE.loss(n, d), rel=0.005)
  low, high = prediction['parametric']['loss_interval']
  assert low <= TRUE.loss(n, d) <= high
  assert prediction['isoflop']['params'] == pytest.approx(1.034 * n, rel=0.02)
  at_half = scaling.predict(fit, budget, params=n / 2, samples=0)
  assert at_half['parametric']['loss_at_params'] == pytest.approx(TRUE.loss(n / 2, 2 * d),
                                                                  rel=0.005)
  assert at_half['loss'] == prediction['loss']  # the compute-optimal loss, whatever the size
  assert at_half['loss_interval'] is None
  optimum = lambda p: {k: p['parametric'][k] for k in ('params', 'tokens', 'loss')}
  assert optimum(at_half) == optimum(prediction)


def test_predict_needs_three_budgets_below():
  fit = scaling.fit_sweep(sweep(), samples=0)
  with pytest.raises(UserError, match=r'^budgets too close to fit a prediction: 2 budget\(s\) lie '
                     r'below 1e\+18 FLOPs, a prediction needs 3; add smaller budgets to the '
                     'sweep$'):
    scaling.predict(fit, BUDGETS[2], samples=0)


def sweep_dir(tmp_path, verification_loss: float | None) -> tuple[dict, dict]:
  """A sweep directory as the sweep leaves it: runs.csv with roles (the point of the 3rd budget
  and 4th size repeated with 2 more seeds, a verification run at 3x the largest budget unless
  its loss is None) and the prediction.json written before the verification run trained."""
  runs = sweep(sigma=0.002)
  count = len(runs['loss'])
  runs.update(role=np.array(['sweep'] * count), seed=np.zeros(count, dtype=int),
              unique_tokens=np.full(count, 1e10))  # 6 runs, of the 2 largest budgets, repeat data
  repeated = scaling.effective_tokens(runs['tokens'], runs['unique_tokens'])
  runs['loss'] *= TRUE.loss(runs['params'], repeated) / TRUE.loss(runs['params'], runs['tokens'])
  fit = scaling.fit_sweep(runs, samples=0)
  prediction = scaling.predict(fit, 3 * BUDGETS[-1], samples=10)
  scaling.write_prediction(str(tmp_path), prediction)
  point = 2 * 7 + 3
  extra = {'name': ['seed1', 'seed2'], 'role': ['seed', 'seed'], 'seed': [1, 2],
           'loss': [runs['loss'][point] + 0.004, runs['loss'][point] - 0.002]}
  if verification_loss is not None:
    extra = {key: [*value, new] for (key, value), new in zip(
        extra.items(), ('big', 'verification', 0, verification_loss))}
  rows = np.array([point, point, 0][:len(extra['name'])])
  table = {key: np.concatenate([column, extra[key] if key in extra else column[rows]])
           for key, column in runs.items()}
  if verification_loss is not None:
    table['params'][-1], table['budget'][-1] = prediction['params'], prediction['budget']
    table['tokens'][-1], table['flops'][-1] = prediction['tokens'], prediction['budget']
  write_csv(tmp_path / 'runs.csv', table)
  return table, prediction


def test_report_checks_a_held_out_budget_and_the_verification_run(tmp_path):
  table, prediction = sweep_dir(tmp_path, verification_loss=2.8)
  summary = scaling.write_report(str(tmp_path), samples=5)
  assert summary['runs'] == 35  # neither the seeds nor the verification run are fitted
  assert summary['repetition'] == {'rows_repeated': 6, 'max_epochs': pytest.approx(
      table['tokens'][:35].max() / 1e10), 'r_star': 15.4}
  fit = scaling.fit_sweep(table, samples=0)
  rest = scaling.fit_sweep({k: v[:28] for k, v in table.items()}, samples=0)
  guess = scaling.predict(rest, BUDGETS[-1], samples=0)
  holdout = summary['holdout']
  assert holdout['budget'] == BUDGETS[-1]
  assert holdout['measured_params'] == fit.isoflop.n_opt[-1]
  assert holdout['measured_loss'] == fit.isoflop.loss_opt[-1]
  assert holdout['predicted_params'] == guess['params']
  assert holdout['predicted_loss'] == guess['loss']
  assert holdout['relative_error']['loss'] == pytest.approx(
      fit.isoflop.loss_opt[-1] / guess['loss'] - 1, rel=1e-12)
  assert abs(holdout['relative_error']['loss']) < 0.01
  assert summary['verification'] == {
      'budget': prediction['budget'], 'params': prediction['params'],
      'tokens': prediction['tokens'], 'predicted_loss': prediction['loss'],
      'method': 'minimum_loss_law', 'predicted_interval': prediction['loss_interval'],
      'measured_loss': 2.8,
      'relative_error': pytest.approx((2.8 - prediction['loss']) / prediction['loss']),
      'parametric_loss': prediction['parametric']['loss_at_params'],
      'parametric_relative_error': pytest.approx(
          2.8 / prediction['parametric']['loss_at_params'] - 1)}
  noise = summary['noise']
  seeds = table['loss'][[2 * 7 + 3, 35, 36]]
  assert noise['seeds'] == [0, 1, 2] and noise['losses'] == seeds.tolist()
  assert noise['std'] == pytest.approx(np.std(seeds, ddof=1))
  assert noise['range'] == pytest.approx(0.006) and noise['mean'] == pytest.approx(seeds.mean())
  assert (noise['params'], noise['budget']) == (table['params'][17], BUDGETS[2])
  assert 0 < noise['parametric_residual_rms'] < 0.01 and 0 < noise['isoflop_residual_rms'] < 0.01
  agreement = summary['agreement']
  assert agreement['a'] == {'isoflop': summary['isoflop']['a'], 'parametric': summary['a']}
  assert agreement['max_difference'] == abs(summary['a'] - summary['isoflop']['a'])
  out = tmp_path / 'scaling'
  assert (out / 'verification.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  lines = (out / 'report.md').read_text().splitlines()
  assert lines[2].startswith('**Verification** (')
  assert ', measured 2.8000, outside the interval: relative error +0.5' in lines[2]
  text = '\n'.join(lines)
  for heading in ('## Held-out budget', '## Do the approaches agree?', '## Noise', '6 of 35 runs'):
    assert heading in text
  assert '(target ≤ 0.1: met)' in text


def test_report_of_a_prediction_not_yet_trained(tmp_path):
  _, prediction = sweep_dir(tmp_path, verification_loss=None)
  summary = scaling.write_report(str(tmp_path), samples=0)
  assert summary['verification']['measured_loss'] is None
  assert summary['verification']['predicted_loss'] == prediction['loss']
  lines = (tmp_path / 'scaling' / 'report.md').read_text().splitlines()
  assert lines[2].endswith('verification run not trained yet.')


def test_a_fit_whose_floor_underflowed_still_starts_a_refit():
  fit = scaling.ParametricFit(E=0.0, A=4e5, B=7.5, alpha=1.67, beta=0.1, huber=2e-4)
  assert fit.theta[2] == np.log(np.finfo(float).tiny) and np.isfinite(fit.theta).all()
