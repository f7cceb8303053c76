"""The fits of a sweep as JSON (summarize), with the checks that go beside them: the noise of the
runs against the fits' residuals, whether the approaches agree, and the control runs.
"""

from typing import Sequence

import numpy as np

from gpt_jax.scaling.fit import CHINCHILLA, CI_LEVEL, SweepFit, fitted_tokens
from gpt_jax.scaling.laws import R_STAR
from gpt_jax.scaling.tables import Table, _budget_column, _point_rows, role_rows

EXTRA_BUDGETS = (1e18, 1e21, CHINCHILLA['flops'])
# Issue 14's targets for the approaches to agree: the spread of their a, and approach 3's interval.
AGREEMENT_TARGETS = {'max_difference': 0.1, 'parametric_interval_width': 0.3}


def prediction_budgets(fit: SweepFit) -> list[float]:
  """The sweep's own budgets and EXTRA_BUDGETS, without near-duplicates."""
  own = np.unique(fit.budget) if fit.budget is not None else []
  merged = np.sort(np.concatenate([own, EXTRA_BUDGETS]))
  return merged[np.concatenate([[True], merged[1:] > merged[:-1] * (1 + 1e-6)])].tolist()


def noise(fit: SweepFit) -> dict:
  """The fits' residual RMS in loss (nats/token; approach 3 at D', approach 2's parabolas), and,
  where runs.csv has role 'seed' rows, the spread of the loss over the seeds of the sweep point
  repeated most: its loss with each seed (the sweep row's first), their mean, sample std and
  max − min."""
  runs = fit.runs
  summary = {'parametric_residual_rms': None, 'isoflop_residual_rms': None}
  if fit.parametric:
    residual = runs['loss'] - fit.parametric.loss(runs['params'], fitted_tokens(runs))
    summary['parametric_residual_rms'] = float(np.sqrt(np.mean(residual ** 2)))
  if fit.isoflop:
    residual = np.concatenate([
        runs['loss'][at] - np.polyval(fit.isoflop.parabolas[float(c)], np.log(runs['params'][at]))
        for c in fit.isoflop.budgets for at in [fit.budget == c]])
    summary['isoflop_residual_rms'] = float(np.sqrt(np.mean(residual ** 2)))
  table = fit.all_runs
  seeds = np.flatnonzero(role_rows(table, 'seed'))
  if not len(seeds):
    return summary
  budget = _budget_column(table)
  points = [(budget[i], table['params'][i]) for i in seeds]
  point = max(points, key=points.count)  # the point repeated most; the first such where tied
  same = _point_rows(table, *point)
  rows = np.concatenate([np.flatnonzero(same & role_rows(table, 'sweep')),
                         np.flatnonzero(same & role_rows(table, 'seed'))])
  loss = table['loss'][rows]
  return {**summary, 'budget': float(point[0]), 'params': float(point[1]),
          'seeds': [_number(table['seed'][i]) for i in rows] if 'seed' in table else None,
          'losses': loss.tolist(), 'mean': float(loss.mean()),
          'std': float(loss.std(ddof=1)) if len(loss) > 1 else None,
          'range': float(loss.max() - loss.min())}


def _number(value) -> int | float | str:
  """A CSV cell as JSON: whole numbers as int."""
  value = value.item()
  return int(value) if isinstance(value, float) and value.is_integer() else value


def agreement(fit: SweepFit) -> dict:
  """The approaches' a (N_opt ∝ C^a) side by side, the largest difference between two of them and
  the width of approach 3's interval of a, each against AGREEMENT_TARGETS."""
  a = {key: approach.exponents()['a'] for key, approach in fit.approaches().items()}
  spread = max(a.values()) - min(a.values()) if len(a) > 1 else None
  low_high = fit.intervals.get('parametric', {}).get('a')
  width = low_high[1] - low_high[0] if low_high else None
  measured = {'max_difference': spread, 'parametric_interval_width': width}
  return {'a': a, **measured, 'targets': AGREEMENT_TARGETS,
          'met': {'max_difference': None if spread is None
                  else spread <= AGREEMENT_TARGETS['max_difference'],
                  'parametric_interval_width': None if width is None
                  else width < AGREEMENT_TARGETS['parametric_interval_width']}}


def _same_point(table: Table, i: int) -> np.ndarray:
  """The role 'sweep' rows of the same budget and size as row i: the sweep's own run there."""
  return (_point_rows(table, _budget_column(table)[i], table['params'][i])
          & role_rows(table, 'sweep'))


def controls(fit: SweepFit) -> dict:
  """The sweep's control runs beside the sweep run they copy (same budget and size), as JSON:
  lr_probe, per probed size {params, budget, n_embd, losses: {lr multiplier: loss}, best} (from
  role 'lr_probe' rows; multiplier 1 is the sweep's run, at the width rule's learning rate), and
  schedule {params, budget, wsd_loss, cosine_loss, relative_difference = (wsd − cosine)/cosine}
  (from a role 'cosine' row: the same run with a cosine schedule). Empty without such rows."""
  table, out = fit.all_runs, {}
  budget = _budget_column(table)
  probes = {}
  for i in np.flatnonzero(role_rows(table, 'lr_probe')):
    own = np.flatnonzero(_same_point(table, i))
    key = (float(table['params'][i]), float(budget[i]))
    losses = probes.setdefault(key, {'n_embd': _number(table['n_embd'][i]) if 'n_embd' in table
                                     else None, 'losses': {}})['losses']
    losses[float(table['lr_multiplier'][i])] = float(table['loss'][i])
    if len(own):
      losses[1.0] = float(table['loss'][own[0]])
  if probes:
    out['lr_probe'] = [{'params': n, 'budget': c, 'n_embd': p['n_embd'],
                        'losses': {f'{m:g}': p['losses'][m] for m in sorted(p['losses'])},
                        'best': float(min(p['losses'], key=p['losses'].get))}
                       for (n, c), p in sorted(probes.items())]
  for i in np.flatnonzero(role_rows(table, 'cosine')):
    own = np.flatnonzero(_same_point(table, i))
    if len(own):
      wsd, cosine = float(table['loss'][own[0]]), float(table['loss'][i])
      out['schedule'] = {'params': float(table['params'][i]), 'budget': float(budget[i]),
                         'wsd_loss': wsd, 'cosine_loss': cosine,
                         'relative_difference': (wsd - cosine) / cosine}
  return out


def summarize(fit: SweepFit, predict: Sequence[float] | None = None) -> dict:
  """The fits as JSON: approach 3's numbers (if fitted) at the top level, the others under their
  keys, and the compute-optimal N, D of each approach at the budgets in `predict` (or
  prediction_budgets)."""
  summary = {'runs': len(fit.runs['loss']), 'intervals': fit.intervals, 'ci_level': CI_LEVEL,
             'bootstrap_refits': fit.refits, 'skipped': fit.skipped,
             'single_variable': {x: {'X_c': x_c, 'alpha': alpha, 'frontier_runs': runs}
                                 for x, (x_c, alpha, runs) in fit.single_variable.items()}}
  if p := fit.parametric:
    summary.update(E=p.E, A=p.A, B=p.B, alpha=p.alpha, beta=p.beta, a=p.a, b=p.b, G=p.G,
                   huber=p.huber)
  for key, approach in fit.approaches().items():
    if key != 'parametric':
      summary[key] = {**approach.exponents(), 'n_coef': approach.n_law.coef,
                      'd_coef': approach.d_law.coef}
  if fit.isoflop:
    iso = fit.isoflop
    summary['isoflop']['warnings'] = iso.warnings
    summary['isoflop']['minima'] = [
        {'budget': c, 'params': n, 'tokens': d, 'loss': loss} for c, n, d, loss
        in zip(*(v.tolist() for v in (iso.budgets, iso.n_opt, iso.d_opt, iso.loss_opt)))]
  if 'unique_tokens' in fit.runs:
    epochs = fit.runs['tokens'] / fit.runs['unique_tokens']
    summary['repetition'] = {'rows_repeated': int((epochs > 1).sum()),
                             'max_epochs': float(epochs.max()), 'r_star': R_STAR}
  summary['noise'] = noise(fit)
  summary['agreement'] = agreement(fit)
  if fit.envelope:
    summary['envelope']['points'] = len(fit.envelope.flops)
    summary['envelope']['runs_on_envelope'] = len(np.unique(fit.envelope.params))
  summary['predictions'] = []
  for c in prediction_budgets(fit) if predict is None else predict:
    row = {'flops': float(c)}
    for key, approach in fit.approaches().items():
      n, d, ratio = (float(v) for v in approach.optimal(c))
      row[key] = {'params': n, 'tokens': d, 'tokens_per_param': ratio}
    summary['predictions'].append(row)
  return summary
