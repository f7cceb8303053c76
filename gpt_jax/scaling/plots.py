"""The report's plots (PNG files, drawn with matplotlib's headless backend): the isoFLOP profiles,
the compute-optimal N and D against C, the isoLoss contours of L(N, D), and the verification run.
"""

from typing import Sequence

import numpy as np

from gpt_jax.figures import plt, save
from gpt_jax.errors import UserError
from gpt_jax.scaling.fit import APPROACHES, CHINCHILLA, SweepFit
from gpt_jax.scaling.laws import fit_minimum_loss_law
from gpt_jax.scaling.tables import compute



def _save_loss_plot(fig: plt.Figure, ax: plt.Axes, xlabel: str, title: str, path: str) -> None:
  """Final validation loss against a log-scaled x, gridded, with a legend; saved to `path`."""
  ax.set_xscale('log')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('final validation loss (nats/token)')
  ax.set_title(title)
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8)
  save(fig, path)


def plot_isoflop(fit: SweepFit, path: str) -> None:
  """Loss against N for each budget, with the fitted parabolas and their minima."""
  n, loss = fit.runs['params'], fit.runs['loss']
  budget = fit.budget if fit.budget is not None else np.zeros(len(loss))
  groups = np.unique(budget)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for c, color in zip(groups, plt.cm.viridis(np.linspace(0, 0.9, len(groups)))):
    at = budget == c
    ax.scatter(n[at], loss[at], color=color, s=20, label=f'C = {c:.2g} FLOPs' if c else 'runs')
    if fit.isoflop and float(c) in fit.isoflop.parabolas:
      log_n = np.linspace(np.log(n[at].min()) - 0.2, np.log(n[at].max()) + 0.2, 100)
      ax.plot(np.exp(log_n), np.polyval(fit.isoflop.parabolas[float(c)], log_n), color=color)
  if fit.isoflop:
    ax.scatter(fit.isoflop.n_opt, fit.isoflop.loss_opt, marker='*', s=160, color='crimson',
               zorder=3, label='parabola minimum')
  _save_loss_plot(fig, ax, 'parameters N', 'IsoFLOP profiles (approach 2)', path)


def plot_optimal(fit: SweepFit, predict: Sequence[float], path: str) -> None:
  """N_opt and D_opt against C: each approach's points and power law, out to the largest budget
  in `predict`, and Chinchilla for comparison."""
  flops = compute(fit.runs)
  flops = np.geomspace(flops.min(), max(*predict, flops.max()), 100)
  colors = {'envelope': 'tab:blue', 'isoflop': 'tab:orange', 'parametric': 'tab:green'}
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  for i, ax, quantity, exponent in zip((0, 1), axes, ('parameters N', 'tokens D'), 'ab'):
    for key, approach in fit.approaches().items():
      ax.plot(flops, approach.optimal(flops)[i], color=colors[key],
              label=f'{APPROACHES[key]}: ∝ C^{approach.exponents()[exponent]:.3f}')
    if fit.envelope:
      ax.scatter(fit.envelope.flops, (fit.envelope.params, fit.envelope.tokens)[i], s=4,
                 color=colors['envelope'], alpha=0.5)
    if fit.isoflop:
      ax.scatter(fit.isoflop.budgets, (fit.isoflop.n_opt, fit.isoflop.d_opt)[i], s=30,
                 color=colors['isoflop'], edgecolor='black', zorder=3)
    ax.scatter(CHINCHILLA['flops'], CHINCHILLA[('params', 'tokens')[i]], marker='*', s=200,
               color='black', zorder=3, label='Chinchilla (70B, 1.4T)')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('compute C (FLOPs)')
    ax.set_ylabel(f'compute-optimal {quantity}')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
  fig.suptitle('Compute-optimal model size and data')
  save(fig, path)


def plot_contours(fit: SweepFit, path: str) -> None:
  """The fitted loss over (C, N) as in Hoffmann et al. Figure 4, with the runs, the budgets'
  isoFLOP lines and the efficient frontier N_opt(C)."""
  n, flops = fit.runs['params'], 6 * fit.runs['params'] * fit.runs['tokens']
  grid_c, grid_n = np.meshgrid(np.geomspace(flops.min() / 10, flops.max() * 10, 200),
                               np.geomspace(n.min() / 10, n.max() * 10, 200))
  loss = fit.parametric.loss(grid_n, grid_c / (6 * grid_n))
  levels = np.geomspace(loss.min(), np.quantile(loss, 0.8), 12)
  fig, ax = plt.subplots(figsize=(7.5, 5.5))
  filled = ax.contourf(grid_c, grid_n, loss, levels=levels, cmap='viridis_r', extend='max')
  ax.clabel(ax.contour(grid_c, grid_n, loss, levels=levels, colors='white', linewidths=0.5),
            fmt='%.2f', fontsize=7)
  fig.colorbar(filled, ax=ax, label='fitted loss L(N, D = C/6N)', format='%.2f')
  for i, c in enumerate(np.unique(fit.budget) if fit.budget is not None else []):
    ax.axvline(c, color='gray', linestyle=':', label='isoFLOP lines (budgets)' if i == 0 else None)
  ax.plot(grid_c[0], fit.parametric.optimal(grid_c[0])[0], color='tab:red', linewidth=2,
          label=f'efficient frontier N_opt ∝ C^{fit.parametric.a:.3f}')
  ax.scatter(flops, n, color='white', edgecolor='black', s=25, zorder=3, label='runs (C = 6ND)')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('compute C (FLOPs)')
  ax.set_ylabel('parameters N')
  ax.set_title('IsoLoss contours of L(N, D) = E + A/N^α + B/D^β')
  ax.legend(fontsize=8, loc='lower right', framealpha=0.9)
  save(fig, path)


def plot_verification(fit: SweepFit, v: dict, path: str) -> None:
  """Loss against C: the sweep's runs (faint) and isoFLOP minima, the law L*(C) and approach 3's
  compute-optimal loss out to the verification budget, and the verification run predicted (with
  its interval) and measured."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.scatter(compute(fit.runs), fit.runs['loss'], s=10, color='gray', alpha=0.3,
             label='sweep runs')
  flops = np.geomspace(compute(fit.runs).min(), v['budget'], 100)
  if fit.isoflop:
    ax.scatter(fit.isoflop.budgets, fit.isoflop.loss_opt, s=40, color='tab:orange',
               edgecolor='black', zorder=3, label='isoFLOP minima')
    try:
      law = fit_minimum_loss_law(fit.isoflop.budgets, fit.isoflop.loss_opt)
      ax.plot(flops, law(flops), color='tab:orange',
              label=f'L*(C) = {law.E:.3g} + {law.k:.3g}·C^-{law.gamma:.3g}')
    except UserError:
      pass  # predict() went without the law too
  ax.plot(flops, fit.parametric.loss(*fit.parametric.optimal(flops)[:2]), color='tab:green',
          linestyle='--', label='approach 3 at N_opt(C)')
  interval = v['predicted_interval']
  yerr = ([[v['predicted_loss'] - interval[0]], [interval[1] - v['predicted_loss']]]
          if interval else None)
  ax.errorbar(v['budget'], v['predicted_loss'], yerr=yerr, fmt='o', color='tab:blue', capsize=4,
              zorder=4, label='predicted')
  if v['measured_loss'] is not None:
    ax.scatter(v['budget'], v['measured_loss'], marker='*', s=250, facecolor='none',
               edgecolor='crimson', zorder=5, label='measured')  # hollow: shows the prediction
  _save_loss_plot(fig, ax, 'compute C (FLOPs)',
                  'Verification: the large run, predicted before it trained', path)
