"""The report of a sweep: a summary's fits as markdown (which reads well as plain text too), and
write_report, which writes DIR/scaling/report.{md,json} and the plots.

The report holds out the largest budget, compares the verification run with its prediction, sets
the spread of the 'seed' runs beside the fits' residuals, and says whether the approaches agree.
"""

import os
from typing import Sequence

import numpy as np

from gpt_jax import files
from gpt_jax.errors import UserError
from gpt_jax.scaling.fit import (APPROACHES, BOOTSTRAP_SAMPLES, CHINCHILLA, PAPER_EXPONENTS,
                                 SweepFit, fit_sweep, fitted_tokens)
from gpt_jax.scaling.plots import plot_contours, plot_isoflop, plot_optimal, plot_verification
from gpt_jax.scaling.prediction import PREDICTION_METHODS, holdout, read_prediction, verification
from gpt_jax.scaling.summary import controls, prediction_budgets, summarize
from gpt_jax.scaling.tables import CURVE_COLUMNS, read_csv


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
  """A markdown table; floats with 4 significant digits."""
  cell = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
  return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header),
          *('| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows)]


def _count(x: float) -> str:
  """70e9 → '70B': parameter and token counts as people say them."""
  for scale, suffix in ((1e12, 'T'), (1e9, 'B'), (1e6, 'M'), (1e3, 'K')):
    if x >= scale:
      return f'{x / scale:.3g}{suffix}'
  return f'{x:.3g}'


def markdown(summary: dict) -> str:
  """The fits of a summary as markdown tables, which read well as plain text too."""
  level = round(100 * summary['ci_level'])

  def interval(key: str, name: str) -> str:
    low_high = summary['intervals'].get(key, {}).get(name)
    return f'{low_high[0]:.3g} .. {low_high[1]:.3g}' if low_high else ''

  parametric = 'E' in summary  # approach 3's numbers are at the top level
  fitted = [key for key in APPROACHES if key in summary or (key == 'parametric' and parametric)]
  exponents = {key: summary.get(key, summary) for key in fitted}
  lines = []  # each section starts with an empty line, the first one's dropped at the end
  if 'verification' in summary:
    lines += ['', *_verification_lines(summary['verification'], level)]
  if parametric:
    lines += ['', f'## Approach 3: L(N, D) = E + A/N^alpha + B/D^beta, fitted to '
              f'{summary["runs"]} runs', '',
              *_table(('', 'fit', f'{level}% CI'),
                      [(name, summary[name], interval('parametric', name))
                       for name in ('E', 'A', 'B', 'alpha', 'beta')])]
    if repetition := summary.get('repetition'):
      lines += ['', f'D is the repetition-adjusted D\' of Muennighoff et al. (2023, R* = '
                f'{repetition["r_star"]}): {repetition["rows_repeated"]} of {summary["runs"]} runs '
                f'repeated data, at most {repetition["max_epochs"]:.3g} epochs.']
  if fitted:
    lines += ['', '## Compute-optimal exponents: N_opt ∝ C^a, D_opt ∝ C^b', '',
              *_table(('approach', 'a', f'{level}% CI', 'b', f'{level}% CI',
                       'Hoffmann et al. a, b'),
                      [(APPROACHES[key], exponents[key]['a'], interval(key, 'a'),
                        exponents[key]['b'], interval(key, 'b'),
                        '%.2f, %.2f' % PAPER_EXPONENTS[key]) for key in fitted])]
  if 'agreement' in summary:
    lines += ['', *_agreement_lines(summary['agreement'], level)]
  if 'holdout' in summary:
    lines += ['', *_holdout_lines(summary['holdout'])]
  if 'noise' in summary:
    lines += ['', *_noise_lines(summary['noise'])]
  if summary.get('controls'):
    lines += ['', *_controls_lines(summary['controls'])]
  if 'isoflop' in summary:
    lines += ['', '## Approach 2: minima of the isoFLOP parabolas', '',
              *_table(('budget C', 'N_opt', 'D_opt', 'D/N', 'loss'),
                      [(m['budget'], _count(m['params']), _count(m['tokens']),
                        m['tokens'] / m['params'], m['loss'])
                       for m in summary['isoflop']['minima']]),
              *(f'\nwarning: {warning}' for warning in summary['isoflop']['warnings'])]
  if summary['single_variable']:
    lines += ['', '## Single-variable laws L(X) = (X_c / X)^alpha, fitted to the frontier runs', '',
              *_table(('X', 'X_c', 'alpha', 'frontier runs'),
                      [(x, law['X_c'], law['alpha'], law['frontier_runs'])
                       for x, law in summary['single_variable'].items()])]
  optimum = lambda o: f'{_count(o["params"])} / {_count(o["tokens"])} ({o["tokens_per_param"]:.3g})'
  if fitted:
    lines += ['', '## Compute-optimal N_opt / D_opt (D/N) at budget C; C = 6ND in approach 3', '',
              *_table(('C (FLOPs)', *(APPROACHES[key] for key in fitted)),
                      [(row['flops'], *(optimum(row[key]) for key in fitted))
                       for row in summary['predictions']]),
              '', f'Chinchilla for comparison: C = {CHINCHILLA["flops"]:.3g}, N_opt / D_opt = '
              f'{_count(CHINCHILLA["params"])} / {_count(CHINCHILLA["tokens"])} (20).']
  if summary['skipped']:
    lines += ['', '## Not fitted', '',
              *(f'- {key}: {why}' for key, why in summary['skipped'].items())]
  return '\n'.join(lines[1:]) + '\n'


def _verification_lines(v: dict, level: int) -> list[str]:
  interval = v['predicted_interval']
  predicted = f'{v["predicted_loss"]:.4f}' + (
      f' ({level}% CI {interval[0]:.4f} .. {interval[1]:.4f})' if interval else '')
  run = f'{_count(v["params"])} params, {_count(v["tokens"])} tokens, C = {v["budget"]:.3g}'
  method = PREDICTION_METHODS[v['method']]
  if v['measured_loss'] is None:
    return [f'**Verification** ({run}): predicted loss {predicted} ({method}); verification run '
            'not trained yet.']
  inside = ('' if not interval else ', inside the interval' if interval[0] <= v['measured_loss']
            <= interval[1] else ', outside the interval')
  lines = [f'**Verification** ({run}): predicted loss {predicted} ({method}), measured '
           f'{v["measured_loss"]:.4f}{inside}: relative error {100 * v["relative_error"]:+.2f}% '
           '(measured − predicted, over predicted).']
  if v['method'] != 'parametric' and v['parametric_loss'] is not None:
    lines += ['', f'Approach 3\'s L(N, D) at this run predicted {v["parametric_loss"]:.4f}: '
              f'relative error {100 * v["parametric_relative_error"]:+.2f}%.']
  return lines


def _agreement_lines(agreement: dict, level: int) -> list[str]:
  met = lambda key: {None: 'not measured', True: 'met', False: 'not met'}[agreement['met'][key]]
  value = lambda key: 'n/a' if agreement[key] is None else f'{agreement[key]:.3g}'
  targets = agreement['targets']
  return ['## Do the approaches agree?', '',
          *_table([APPROACHES[key] for key in agreement['a']], [list(agreement['a'].values())]),
          '', f'- largest difference in a between the {len(agreement["a"])} approaches fitted: '
          f'{value("max_difference")} (target ≤ {targets["max_difference"]}: '
          f'{met("max_difference")})',
          f'- width of approach 3\'s {level}% interval of a: {value("parametric_interval_width")} '
          f'(target < {targets["parametric_interval_width"]}: {met("parametric_interval_width")})']


def _holdout_lines(h: dict) -> list[str]:
  error = h['relative_error']
  return [f'## Held-out budget: fitted without C = {h["budget"]:.3g}, predicted there', '',
          *_table(('', 'predicted', 'measured (parabola minimum)', 'relative error'),
                  [('N_opt (approach 3)', _count(h['predicted_params']),
                    _count(h['measured_params']), f'{100 * error["params"]:+.1f}%'),
                   (f'minimum loss ({PREDICTION_METHODS[h["method"]]})', h['predicted_loss'],
                    h['measured_loss'], f'{100 * error["loss"]:+.2f}%')]),
          '', *([f'The predicted loss\'s 90% interval: {h["loss_interval"][0]:.4f} .. '
                 f'{h["loss_interval"][1]:.4f}.'] if h['loss_interval'] else []),
          f'Approach 3 gives a minimum loss of {h["parametric_loss"]:.4f}.',
          *([f'Approach 2\'s power law gives N_opt = {_count(h["isoflop_params"])}.']
            if h['isoflop_params'] is not None else [])]


def _noise_lines(noise: dict) -> list[str]:
  rms = lambda key: 'n/a' if noise[key] is None else f'{noise[key]:.4f}'
  lines = ['## Noise against the fits (loss in nats/token)', '',
           f'- RMS residual of approach 3 (loss − L(N, D)): {rms("parametric_residual_rms")}',
           f'- RMS residual of approach 2\'s parabolas: {rms("isoflop_residual_rms")}']
  if 'losses' in noise:
    std = 'n/a' if noise['std'] is None else f'{noise["std"]:.4f}'
    lines += [f'- {len(noise["losses"])} seeds of N = {_count(noise["params"])} at C = '
              f'{noise["budget"]:.3g}: mean {noise["mean"]:.4f}, std {std}, max − min '
              f'{noise["range"]:.4f}']
  return lines


def _controls_lines(controls: dict) -> list[str]:
  lines = []
  if probe := controls.get('lr_probe'):
    multipliers = sorted({float(m) for p in probe for m in p['losses']})
    lines += ['## Learning-rate probe: final loss at the width rule\'s lr × m', '',
              *_table(('width', 'N', 'C', *(f'm = {m:g}' for m in multipliers), 'best m'),
                      [(p['n_embd'], _count(p['params']), f'{p["budget"]:.3g}',
                        *(p['losses'].get(f'{m:g}', '') for m in multipliers),
                        f'{p["best"]:g}' + (' (an edge of the range probed)'
                                            if p['best'] in (multipliers[0], multipliers[-1])
                                            else ''))
                       for p in probe]), '']
  if schedule := controls.get('schedule'):
    lines += [f'**WSD against cosine** ({_count(schedule["params"])} params, C = '
              f'{schedule["budget"]:.3g}): a WSD cooldown reached {schedule["wsd_loss"]:.4f}, a '
              f'cosine run of the same length {schedule["cosine_loss"]:.4f} '
              f'({100 * schedule["relative_difference"]:+.2f}%).', '']
  return lines[:-1]


def _runs_table(fit: SweepFit) -> list[str]:
  runs = fit.runs
  columns = [c for c in ('name', 'budget', 'n_layer', 'n_embd', 'n_head', 'params', 'tokens',
                         'flops', 'loss', 'val_bpb') if c in runs]
  order = np.lexsort((runs['params'], fit.budget if fit.budget is not None else runs['params']))
  rows = [[_count(runs[c][i]) if c in ('params', 'tokens') else runs[c][i].item() for c in columns]
          + [runs['tokens'][i] / runs['params'][i]] for i in order]
  if not fit.parametric:
    return _table([*columns, 'D/N'], rows)
  fitted = fit.parametric.loss(runs['params'], fitted_tokens(runs))
  return _table([*columns, 'D/N', 'fitted loss'],
                [row + [fitted[i].item()] for row, i in zip(rows, order)])


def write_report(sweep_dir: str, budgets_to_predict: Sequence[float] | None = None,
                 samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
  """Fits DIR/runs.csv (and DIR/curves.csv if there) and writes DIR/scaling/: report.md,
  report.json (the summary, which it returns), isoflop.png, and, where an approach could be
  fitted, optimal.png and (approach 3) contours.png.

  The summary adds `holdout` (see holdout; or a reason under skipped) and, where DIR/prediction.json
  exists, `verification` (see verification), which report.md states first, with verification.png.
  """
  runs_path = os.path.join(sweep_dir, 'runs.csv')
  if not os.path.isfile(runs_path):
    raise UserError(f'{runs_path}: no such file; pass the directory of a sweep (it holds runs.csv)')
  curves_path = os.path.join(sweep_dir, 'curves.csv')
  curves = read_csv(curves_path, CURVE_COLUMNS) if os.path.isfile(curves_path) else None
  fit = fit_sweep(read_csv(runs_path), curves, samples, seed)
  predict = prediction_budgets(fit) if budgets_to_predict is None else list(budgets_to_predict)
  summary = summarize(fit, predict)
  try:
    summary['holdout'] = holdout(fit, samples, seed)
  except UserError as e:
    summary['skipped']['holdout'] = str(e)
  summary['controls'] = controls(fit)
  prediction = read_prediction(sweep_dir)
  if prediction:
    summary['verification'] = verification(fit, prediction)
  out = os.path.join(sweep_dir, 'scaling')
  plots = {'isoflop.png': ('isoFLOP profiles', lambda path: plot_isoflop(fit, path))}
  if fit.approaches():
    plots['optimal.png'] = ('compute-optimal N and D',
                            lambda path: plot_optimal(fit, predict, path))
  if fit.parametric:
    plots['contours.png'] = ('isoLoss contours', lambda path: plot_contours(fit, path))
  if prediction and fit.parametric and fit.isoflop:
    plots['verification.png'] = ('verification', lambda path: plot_verification(
        fit, summary['verification'], path))
  for name, (_, plot) in plots.items():
    plot(os.path.join(out, name))
  text = [f'# Scaling laws of {sweep_dir}', '', markdown(summary), '## Plots', '',
          *(line for name, (title, _) in plots.items() for line in (f'![{title}]({name})', '')),
          '## Runs', '', *_runs_table(fit)]
  files.write_text(os.path.join(out, 'report.md'), '\n'.join(text) + '\n')
  files.write_json(os.path.join(out, 'report.json'), summary)
  return summary
