"""Predicting a larger run before training it (as OpenAI's GPT-4 report did), and checking
predictions.

`predict` gives N_opt, D_opt and the loss at a budget beyond the sweep's, from approach 3 (with a
bootstrap interval), approach 2 and the law L*(C) = E + k·C^-γ of the isoFLOP minima; the sweep
saves it with `write_prediction` before it trains the 'verification' run. `holdout` holds out the
largest budget the same way, and `verification` compares the verification run with its
prediction.
"""

import dataclasses
import json
import os
from typing import Callable

import numpy as np

from gpt_jax import files
from gpt_jax.errors import UserError
from gpt_jax.scaling.fit import (BOOTSTRAP_SAMPLES, CI_LEVEL, SweepFit, bootstrap, fit_isoflop,
                                 fit_parametric, fit_sweep, fitted_tokens)
from gpt_jax.scaling.laws import PREDICTION_BUDGETS, effective_tokens, fit_minimum_loss_law
from gpt_jax.scaling.tables import _point_rows, _rows, role_rows

PREDICTION_METHODS = {'minimum_loss_law': "L*(C) of the isoFLOP minima, GPT-4's method",
                      'parametric': "approach 3's L(N, D)"}


def _intervals(refit: Callable, strata: np.ndarray, samples: int, seed: int) -> tuple[dict, int]:
  """bootstrap(), but no intervals (and 0 refits) where no resample can be refitted: a
  prediction stands without its interval."""
  try:
    return bootstrap(refit, strata, samples, seed)
  except UserError:
    return {}, 0


def predict(fit: SweepFit, budget: float, params: float | None = None,
            tokens: float | None = None, unique_tokens: float | None = None,
            samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
  """The run of `budget` FLOPs foretold by the sweep, as JSON (counts, FLOPs, nats/token):

    budget, params (`params`, else approach 3's N_opt), tokens (`tokens`, else budget/(6·params));
    loss, method: the predicted final loss. 'minimum_loss_law' (GPT-4's method, OpenAI 2023,
      §3.1): L*(budget) of the law fitted to the isoFLOP minima, the loss of a compute-optimal run;
      where the minima do not allow that law, 'parametric': approach 3's L(params, D');
    loss_interval: its CI_LEVEL percentile interval over `samples` bootstrap refits (`seed`),
      bootstrap_refits of them worked;
    parametric: approach 3's {params, tokens, loss} at its optimum, and loss_at_params with
      loss_interval at (params, D'), D' the tokens adjusted for repetition beyond
      `unique_tokens` (effective_tokens); its refits start from the full fit;
    isoflop: approach 2's {params, tokens}, its power laws extrapolated;
    minimum_loss_law: {E, k, gamma, loss} of L*(C) (each None where the minima do not allow it).

  UserError without approach 3, or with fewer than 3 of the sweep's budgets below `budget`.
  """
  if not fit.parametric:
    raise UserError(f'a prediction needs approach 3, which could not be fitted '
                    f'({fit.skipped.get("parametric", "")})')
  budgets = np.unique(fit.budget) if fit.budget is not None else np.array([])
  below = budgets[budgets < budget]
  if len(below) < PREDICTION_BUDGETS:
    raise UserError(f'budgets too close to fit a prediction: {len(below)} budget(s) lie below '
                    f'{budget:.3g} FLOPs, a prediction needs {PREDICTION_BUDGETS}; add smaller '
                    'budgets to the sweep')
  runs, d_fit = fit.runs, fitted_tokens(fit.runs)
  isoflop = law = None
  if fit.isoflop:
    isoflop = dict(zip(('params', 'tokens'), (float(v) for v in fit.isoflop.optimal(budget)[:2])))
    try:
      law = fit_minimum_loss_law(fit.isoflop.budgets, fit.isoflop.loss_opt)
    except UserError:
      pass  # too few minima or a loss that does not fall: the prediction stands on approach 3
  p = fit.parametric
  n_opt, d_opt, _ = (float(v) for v in p.optimal(budget))
  n = n_opt if params is None else float(params)
  d = budget / (6 * n) if tokens is None else float(tokens)
  d_seen = d if unique_tokens is None else float(effective_tokens(d, unique_tokens))
  parametric_interval, refits = _intervals(
      lambda i: {'loss': float(fit_parametric(runs['params'][i], d_fit[i], runs['loss'][i],
                                              p.theta).loss(n, d_seen))},
      fit.budget, samples, seed)
  parametric = {'params': n_opt, 'tokens': d_opt, 'loss': float(p.loss(n_opt, d_opt)),
                'loss_at_params': float(p.loss(n, d_seen)),
                'loss_interval': parametric_interval.get('loss'), 'bootstrap_refits': refits}
  if law:
    def law_refit(i):
      iso = fit_isoflop(runs['params'][i], runs['loss'][i], fit.budget[i])
      return {'loss': float(fit_minimum_loss_law(iso.budgets, iso.loss_opt)(budget))}
    interval, refits = _intervals(law_refit, fit.budget, samples, seed)
    loss, method = float(law(budget)), 'minimum_loss_law'
  else:
    interval, loss, method = parametric_interval, parametric['loss_at_params'], 'parametric'
  return {'budget': float(budget), 'params': n, 'tokens': d, 'effective_tokens': d_seen,
          'loss': loss, 'method': method, 'loss_interval': interval.get('loss'),
          'ci_level': CI_LEVEL, 'bootstrap_refits': refits, 'parametric': parametric,
          'isoflop': isoflop,
          'minimum_loss_law': law and {**dataclasses.asdict(law), 'loss': float(law(budget))}}


def write_prediction(sweep_dir: str, prediction: dict) -> None:
  """Writes DIR/prediction.json before the verification run trains: predict's output and the
  budget, params, tokens of the run chosen. write_report compares it with the run's loss."""
  files.write_json(os.path.join(sweep_dir, 'prediction.json'), prediction)


def read_prediction(sweep_dir: str) -> dict | None:
  """DIR/prediction.json, or None where there is none; UserError where it cannot be read."""
  path = os.path.join(sweep_dir, 'prediction.json')
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      prediction = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f'cannot read {path} ({e}); delete it and let the sweep write it '
                    'again') from None
  if not isinstance(prediction, dict):
    raise UserError(f'{path} holds no JSON object; delete it and let the sweep write it again')
  missing = [key for key in ('budget', 'params', 'tokens', 'loss') if key not in prediction]
  if missing:
    raise UserError(f'{path} has no {", ".join(missing)}; delete it and let the sweep write it '
                    'again')
  return prediction


def holdout(fit: SweepFit, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
  """Every sweep budget but the largest fitted, predicting its N_opt (approach 3) and minimum loss
  (predict's method), against the parabola minimum measured there (approach 2 on all runs).
  relative_error = (measured − predicted) / predicted, for params and loss. UserError where there
  are too few budgets or the largest has no parabola minimum."""
  if not fit.isoflop:
    raise UserError(f'no isoFLOP minima to hold one out ({fit.skipped.get("isoflop")})')
  top = float(fit.budget.max())
  if top not in fit.isoflop.budgets:
    raise UserError(f'the largest budget {top:.3g} has no parabola minimum to compare with; add '
                    'model sizes around its optimum')
  rest = fit_sweep(_rows(fit.runs, fit.budget < top), samples=0)
  predicted = predict(rest, top, samples=samples, seed=seed)
  at = fit.isoflop.budgets == top
  measured = {'params': float(fit.isoflop.n_opt[at][0]), 'loss': float(fit.isoflop.loss_opt[at][0])}
  guess = {'params': predicted['params'], 'loss': predicted['loss']}
  return {'budget': top, 'predicted_params': guess['params'], 'measured_params': measured['params'],
          'predicted_loss': guess['loss'], 'method': predicted['method'],
          'measured_loss': measured['loss'], 'loss_interval': predicted['loss_interval'],
          'parametric_loss': predicted['parametric']['loss'],
          'isoflop_params': (predicted['isoflop'] or {}).get('params'),
          'relative_error': {key: (measured[key] - guess[key]) / guess[key] for key in guess}}


def verification(fit: SweepFit, prediction: dict) -> dict:
  """The prediction of the verification run against its loss (the last runs.csv row with role
  'verification' of the predicted budget and size; measured_loss None while it is not trained).
  relative_error = (measured − predicted) / predicted."""
  table = fit.all_runs
  rows = np.flatnonzero(role_rows(table, 'verification')
                        & _point_rows(table, prediction['budget'], prediction['params']))
  measured = float(table['loss'][rows[-1]]) if len(rows) else None
  error = lambda predicted: None if measured is None else (measured - predicted) / predicted
  predicted = prediction['loss']
  parametric = (prediction.get('parametric') or {}).get('loss_at_params')
  return {'budget': prediction['budget'], 'params': prediction['params'],
          'tokens': prediction['tokens'], 'predicted_loss': predicted,
          'method': prediction.get('method', 'parametric'),
          'predicted_interval': prediction.get('loss_interval'), 'measured_loss': measured,
          'relative_error': error(predicted), 'parametric_loss': parametric,
          'parametric_relative_error': None if parametric is None else error(parametric)}
