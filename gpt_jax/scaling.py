"""Scaling laws from a compute sweep: the three approaches of Chinchilla (Hoffmann et al. 2022).

A sweep trains several model sizes N at each of several compute budgets C and writes DIR/runs.csv
(one row per run: params = N, tokens = D, loss = final validation loss in nats/token, budget = C,
flops = the FLOPs it accounted) and DIR/curves.csv (loss against FLOPs: along each run, or of
each model size through the final losses of its WSD cooldowns). From them:

  Approach 1 (§3.1): the lower envelope of all loss curves against FLOPs; the run on the envelope
    at each C gives (N, D), and power laws N_opt ∝ C^a, D_opt ∝ C^b go through those points.
  Approach 2 (§3.2): per budget, a parabola of loss in log N; its minimum is N_opt(C).
  Approach 3 (§3.3): L(N, D) = E + A/N^α + B/D^β fitted to every run; minimising it under C = 6ND
    gives N_opt ∝ C^a, D_opt ∝ C^b with a = β/(α+β), b = α/(α+β).
  Single-variable laws L(X) = (X_c/X)^α (Kaplan et al. 2020) for X = N, D, C, on frontier runs.

Exponents get bootstrap confidence intervals. Only runs.csv rows with role 'sweep' are fitted
(all rows without a role column); approach 3 counts repeated data as Muennighoff et al.'s D'.

Predicting a larger run before training it (as OpenAI's GPT-4 report did): `predict` gives N_opt,
D_opt and the loss at a budget beyond the sweep's, from approach 3 (with a bootstrap interval),
approach 2 and the law L*(C) = E + k·C^-γ of the isoFLOP minima; the sweep saves it with
`write_prediction` before it trains the 'verification' run. The report holds out the largest
budget the same way, compares the verification run with its prediction, sets the spread of the
'seed' runs beside the fits' residuals, and says whether the approaches agree.

`python -m gpt_jax.scaling fit FILE.csv [--json]`
fits any CSV with columns params, tokens, loss (optional flops, budget);
`python -m gpt_jax.scaling report DIR` writes DIR/scaling/report.{md,json} and three plots.
"""

import argparse
import csv
import dataclasses
import itertools
import json
import math
import os
from typing import Callable, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
import threadpoolctl  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402

from gpt_jax import cli, files  # noqa: E402
from gpt_jax.errors import UserError  # noqa: E402

Table = dict[str, np.ndarray]  # a CSV file's columns by name

RUN_COLUMNS = ('params', 'tokens', 'loss')
CURVE_COLUMNS = ('name', 'params', 'tokens', 'flops', 'loss')
# the fits take their logs (unique_tokens: tokens in one epoch of the corpus)
POSITIVE_COLUMNS = ('params', 'tokens', 'loss', 'flops', 'budget', 'unique_tokens')
BUDGET_RTOL = 0.1  # one budget's runs differ in FLOPs by rounded step counts, budgets far more
HUBER_DELTA = 1e-3
# Hoffmann et al. Appendix D.2: L-BFGS from a grid of initial (a, b, e, α, β), keeping the best.
INIT_GRID = np.array(list(itertools.product(np.linspace(0, 25, 6), np.linspace(0, 25, 6),
                                            np.linspace(-1, 1, 5), np.linspace(0, 2, 5),
                                            np.linspace(0, 2, 5))))
POLISHED_STARTS = 20
ENVELOPE_POINTS = 200
BOOTSTRAP_SAMPLES = 100
CI_LEVEL = 0.9  # percentile interval 5..95%
CHINCHILLA = {'flops': 5.76e23, 'params': 70e9, 'tokens': 1.4e12}  # at Gopher's budget
EXTRA_BUDGETS = (1e18, 1e21, CHINCHILLA['flops'])
APPROACHES = {'envelope': 'approach 1 (envelope)', 'isoflop': 'approach 2 (isoFLOP)',
              'parametric': 'approach 3 (L(N, D))'}
PAPER_EXPONENTS = {'envelope': (0.50, 0.50), 'isoflop': (0.49, 0.51), 'parametric': (0.46, 0.54)}
R_STAR = 15.4  # Muennighoff et al. 2023 eq. 5: repeats after which extra epochs are worth 1/e
PREDICTION_METHODS = {'minimum_loss_law': "L*(C) of the isoFLOP minima, GPT-4's method",
                      'parametric': "approach 3's L(N, D)"}
PREDICTION_BUDGETS = 3  # isoFLOP minima the law L*(C) = E + k·C^-γ needs (it has 3 parameters)
# Issue 14's targets for the approaches to agree: the spread of their a, and approach 3's interval.
AGREEMENT_TARGETS = {'max_difference': 0.1, 'parametric_interval_width': 0.3}


# --- reading --------------------------------------------------------------------------------


def read_csv(path: str, required: Sequence[str] = RUN_COLUMNS) -> Table:
  """The columns of a CSV file: float arrays where every value is a number, else string arrays.

  The columns the fits take logs of (params, tokens, loss, flops, budget) must be positive.
  """
  columns = ','.join(required)
  try:
    # utf-8-sig: Excel's 'CSV UTF-8' starts the file with a byte-order mark
    with open(path, newline='', encoding='utf-8-sig') as f:
      rows = [row for row in csv.reader(f) if row]
  except FileNotFoundError:
    raise UserError(f'{path}: no such file; pass a CSV file with columns {columns}') from None
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise UserError(f'cannot read {path} ({e}); pass a UTF-8 CSV file with a header row') from None
  if not rows:
    raise UserError(f'{path} is empty; pass a CSV file with a header row and one row per run')
  header, body = [name.strip() for name in rows[0]], rows[1:]
  missing = [name for name in required if name not in header]
  if missing:
    raise UserError(f'{path} has no column {",".join(missing)} (its header: '
                    f'{",".join(header)[:200]}); it needs the columns {columns}')
  if not body:
    raise UserError(f'{path} has a header but no rows; it needs one row per run')
  for i, row in enumerate(body, 1):
    if len(row) != len(header):
      raise UserError(f'{path} row {i} has {len(row)} fields but the header has {len(header)}; '
                      'fix that row')
  table = {}
  for j, name in enumerate(header):
    texts = [row[j].strip() for row in body]
    table[name] = _positive(path, name, texts) if name in POSITIVE_COLUMNS else _parse(texts)
  return table


def _positive(path: str, name: str, texts: list[str]) -> np.ndarray:
  values = np.empty(len(texts))
  for i, text in enumerate(texts):
    try:
      values[i] = float(text)
    except ValueError:
      raise UserError(f'{path} row {i + 1}: {name} is {text!r}, not a number; fix or remove '
                      'that row') from None
    if not (math.isfinite(values[i]) and values[i] > 0):
      raise UserError(f'{path} row {i + 1}: {name} is {text}, but must be positive and finite; '
                      'fix or remove that row')
  return values


def _parse(texts: list[str]) -> np.ndarray:
  try:
    return np.array([float(text) for text in texts])
  except ValueError:
    return np.array(texts)


def _rows(table: Table, which: np.ndarray) -> Table:
  return {name: column[which] for name, column in table.items()}


def compute(table: Table) -> np.ndarray:
  """The FLOPs of each run: as the sweep accounted them, else 6ND."""
  return table['flops'] if 'flops' in table else 6 * table['params'] * table['tokens']


def run_budgets(table: Table) -> np.ndarray:
  """The budget C of each run: the budget column, else the geometric mean FLOPs of its group
  (runs whose FLOPs are within BUDGET_RTOL of the group's smallest)."""
  if 'budget' in table:
    return table['budget']
  if 'flops' not in table:
    raise UserError('no budget or flops column to group runs into isoFLOP budgets; add one')
  flops = table['flops']
  group, first, labels = 0, flops.min(), np.empty(len(flops), dtype=int)
  for i in np.argsort(flops):
    if flops[i] > first * (1 + BUDGET_RTOL):
      group, first = group + 1, flops[i]
    labels[i] = group
  means = [np.exp(np.log(flops[labels == g]).mean()) for g in range(group + 1)]
  return np.array(means)[labels]


def role_rows(table: Table, role: str) -> np.ndarray:
  """Which rows have this role ('sweep': an isoFLOP point, fitted; 'seed': a sweep point again
  with another seed, for the noise; 'verification': the held-out large run). Without a role
  column every row is a sweep point."""
  if 'role' not in table:
    return np.full(len(table['loss']), role == 'sweep')
  return table['role'] == role


def effective_tokens(tokens: ArrayLike, unique_tokens: ArrayLike, r_star: float = R_STAR
                     ) -> np.ndarray:
  """Repetition-adjusted data D' = U + U·R*·(1 − exp(−R/R*)), R = D/U − 1 repeats of U unique
  tokens (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models", eq. 5); D' = D
  where D ≤ U. Elementwise over arrays of token counts."""
  tokens, unique = np.asarray(tokens, dtype=float), np.asarray(unique_tokens, dtype=float)
  repeats = np.maximum(tokens / unique - 1, 0)
  return np.where(repeats > 0, unique + unique * r_star * -np.expm1(-repeats / r_star), tokens)


def fitted_tokens(runs: Table) -> np.ndarray:
  """The D that approach 3 fits: effective_tokens where the runs say how many tokens are unique."""
  if 'unique_tokens' not in runs:
    return runs['tokens']
  return effective_tokens(runs['tokens'], runs['unique_tokens'])


# --- power laws -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """y = coef · x^exponent."""
  coef: float
  exponent: float

  def __call__(self, x: ArrayLike) -> np.ndarray:
    return self.coef * np.asarray(x, dtype=float) ** self.exponent


def fit_power_law(x: ArrayLike, y: ArrayLike) -> PowerLaw:
  """Least squares of log y on log x."""
  x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
  if not ((x > 0).all() and (y > 0).all()):
    raise UserError('a power law needs positive x and y; drop the points with values <= 0')
  if len(np.unique(x)) < 2:
    raise UserError(f'a power law needs points at 2 or more different x, got {len(np.unique(x))}; '
                    'add runs of other sizes or budgets')
  exponent, log_coef = np.polyfit(np.log(x), np.log(y), 1)
  return PowerLaw(float(np.exp(log_coef)), float(exponent))


def _check_loss_varies(loss: np.ndarray) -> None:
  """UserError when every run has the same loss: no law of how the loss falls can be fitted."""
  if np.unique(loss).size < 2:
    raise UserError(f'every run has the same loss {loss[0]:.4g}, so there is nothing to fit; check '
                    "that the loss column holds each run's final validation loss")


def frontier(x: ArrayLike, loss: ArrayLike) -> np.ndarray:
  """Indices of the runs that no run with at most the same x beats: the best loss reachable with X.

  The single-variable laws describe the loss when X is the only limit, so they are fitted to these
  runs, not to runs held back by a small budget or model.
  """
  x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
  order = np.lexsort((loss, x))
  best_before = np.minimum.accumulate(np.concatenate([[np.inf], loss[order][:-1]]))
  return order[loss[order] < best_before]


def fit_single_variable(x: ArrayLike, loss: ArrayLike, name: str = 'X') -> tuple[float, float]:
  """(X_c, α) of L(X) = (X_c / X)^α: a power law with exponent −α and coef X_c^α. UserError
  where the loss does not vary or does not fall as X (called `name` in messages) grows."""
  _check_loss_varies(np.asarray(loss, dtype=float))
  law = fit_power_law(x, loss)
  alpha = -law.exponent
  if alpha <= 0:
    raise UserError(f'the loss rises with {name} (L ~ {name}^{law.exponent:.3g}), so the falling '
                    f'L({name}) = ({name}_c/{name})^alpha does not fit; check the runs')
  log_x_c = math.log(law.coef) / alpha
  if log_x_c > math.log(np.finfo(float).max):
    raise UserError(f'the loss hardly falls with {name} (alpha = {alpha:.3g}), so '
                    f'L({name}) = ({name}_c/{name})^alpha has no finite {name}_c; add runs over a '
                    f'wider range of {name}')
  return math.exp(log_x_c), alpha


def fit_frontier_law(x: ArrayLike, loss: ArrayLike, name: str = 'X') -> tuple[float, float, int]:
  """(X_c, α, frontier runs): fit_single_variable on the frontier runs among the runs `x`, `loss`.
  UserError where the loss does not vary, every run has the same X, or the loss does not fall as X
  grows (then the frontier is the one run of the smallest X)."""
  x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
  _check_loss_varies(loss)
  if np.unique(x).size < 2:
    raise UserError(f'every run has the same {name} ({x[0]:.3g}); add runs of other {name}')
  on = frontier(x, loss)
  if len(on) < 2:
    raise UserError(f'no run beats the runs of smaller {name}: the loss does not fall as {name} '
                    'grows; check the runs')
  return (*fit_single_variable(x[on], loss[on], name), len(on))


def _check_growth(approach: str, n_law: PowerLaw, d_law: PowerLaw) -> None:
  """UserError unless N_opt and D_opt both grow with compute (exponents a, b > 0)."""
  if n_law.exponent <= 0 or d_law.exponent <= 0:
    raise UserError(f'{approach} gives N_opt ~ C^{n_law.exponent:.3g} and D_opt ~ '
                    f'C^{d_law.exponent:.3g}, but both must grow with compute C; check for runs '
                    'whose loss rises with N or D')


class _PowerLawOptimum:
  """How approaches 1 and 2 predict: N_opt = n_law(C), D_opt = d_law(C)."""

  def optimal(self, flops: ArrayLike) -> tuple:
    n, d = self.n_law(flops), self.d_law(flops)
    return n, d, d / n

  def exponents(self) -> dict[str, float]:
    return {'a': self.n_law.exponent, 'b': self.d_law.exponent}


# --- approach 1: the envelope of the loss curves --------------------------------------------


@dataclasses.dataclass(frozen=True)
class EnvelopeFit(_PowerLawOptimum):
  """Approach 1: at each FLOP count the run with the lowest loss, and power laws through them."""
  flops: np.ndarray
  loss: np.ndarray
  params: np.ndarray  # N of the run on the envelope
  tokens: np.ndarray  # the tokens it had seen there
  n_law: PowerLaw
  d_law: PowerLaw


def fit_envelope(curves: Table, points: int = ENVELOPE_POINTS) -> EnvelopeFit:
  """The lowest loss over the curves (each interpolated in log FLOPs) at `points` log-spaced FLOP
  counts from the cheapest run's end to the dearest's: below, only partly trained small models
  compete; beyond, nothing was measured. Runs are told apart by name.

  Between the sweep's budgets the envelope runs through the middle of longer runs, whose
  learning-rate schedule has not decayed yet, so it lies above what runs of that length would
  reach (Hoffmann et al. vary the schedule length for this reason).
  """
  names = np.unique(curves['name'])
  if len(names) < 2:
    raise UserError(f'the envelope needs the curves of 2 or more runs, got {len(names)}; '
                    'pass the curves.csv of a sweep')
  _check_loss_varies(curves['loss'])
  log_flops = np.log(curves['flops'])
  ends = np.array([log_flops[curves['name'] == name].max() for name in names])
  if np.isclose(ends.min(), ends.max()):
    raise UserError('all runs end at the same FLOP count, so the envelope spans nothing; '
                    'add runs with other budgets')
  grid = np.linspace(ends.min(), ends.max(), points)
  loss, log_tokens = np.full((2, len(names), points), np.nan)
  params = np.empty(len(names))
  for i, name in enumerate(names):
    run = np.flatnonzero(curves['name'] == name)
    run = run[np.argsort(log_flops[run])]
    loss[i] = np.interp(grid, log_flops[run], curves['loss'][run], left=np.nan, right=np.nan)
    log_tokens[i] = np.interp(grid, log_flops[run], np.log(curves['tokens'][run]), left=np.nan,
                              right=np.nan)
    params[i] = curves['params'][run[0]]
  columns = np.flatnonzero(~np.isnan(loss).all(axis=0))  # no envelope in a gap between curves
  best = np.nanargmin(loss[:, columns], axis=0)
  flops, n, d = np.exp(grid[columns]), params[best], np.exp(log_tokens[best, columns])
  n_law, d_law = fit_power_law(flops, n), fit_power_law(flops, d)
  _check_growth('the envelope', n_law, d_law)
  return EnvelopeFit(flops, loss[best, columns], n, d, n_law, d_law)


# --- approach 2: isoFLOP parabolas ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IsoFlopFit(_PowerLawOptimum):
  """Approach 2: per budget C, loss ≈ a parabola in log N whose minimum is N_opt(C)."""
  parabolas: dict[float, np.ndarray]  # budget → np.polyfit coefficients of loss in log N
  budgets: np.ndarray  # the budgets whose parabola has a minimum, and the minimum:
  n_opt: np.ndarray
  loss_opt: np.ndarray
  n_law: PowerLaw
  d_law: PowerLaw
  warnings: list[str]

  @property
  def d_opt(self) -> np.ndarray:
    return self.budgets / (6 * self.n_opt)


def fit_isoflop(params: ArrayLike, loss: ArrayLike, budget: ArrayLike) -> IsoFlopFit:
  """A parabola for each budget with 3 or more model sizes; D_opt = C/(6 N_opt).

  A parabola that opens downward (or a flat loss) has no minimum and is left out; a minimum
  outside the sampled sizes is an extrapolation and kept; the warnings say which. UserError when
  fewer than 2 budgets have a minimum, or when N_opt or D_opt would fall as C grows.
  """
  params, loss, budget = (np.asarray(v, dtype=float) for v in (params, loss, budget))
  if len(np.unique(budget)) < 2:
    raise UserError(f'every run has the same budget {budget[0]:.3g}, but the isoFLOP fit needs 2 '
                    'or more budgets to see how N_opt grows with it; add runs at other budgets')
  parabolas, minima, warnings = {}, [], []
  for c in np.unique(budget):
    log_n = np.log(params[budget == c])
    sizes = len(np.unique(log_n))
    if sizes < 3:
      warnings.append(f'budget {c:.3g}: {sizes} model size(s), a parabola needs 3; left out')
      continue
    if len(np.unique(loss[budget == c])) < 2:
      warnings.append(f'budget {c:.3g}: the same loss at every size (no minimum); left out')
      continue
    coeffs = np.polyfit(log_n, loss[budget == c], 2)
    parabolas[float(c)] = coeffs
    if coeffs[0] <= 0:
      warnings.append(f'budget {c:.3g}: the parabola opens downward (no minimum); left out')
      continue
    x = -coeffs[1] / (2 * coeffs[0])
    if not log_n.min() <= x <= log_n.max():
      warnings.append(f'budget {c:.3g}: the minimum N = {math.exp(x):.3g} lies outside the sampled '
                      f'sizes {math.exp(log_n.min()):.3g}..{math.exp(log_n.max()):.3g}; add sizes '
                      'beyond it')
    minima.append((c, math.exp(x), np.polyval(coeffs, x)))
  if len(minima) < 2:
    why = f' ({"; ".join(warnings)})' if warnings else ''
    raise UserError(f'the isoFLOP fit needs 2 or more budgets with 3+ model sizes and a parabola '
                    f'that opens upward, got {len(minima)}{why}; add runs to the sweep')
  c, n_opt, loss_opt = (np.array(v) for v in zip(*minima))
  n_law, d_law = fit_power_law(c, n_opt), fit_power_law(c, c / (6 * n_opt))
  _check_growth('the isoFLOP fit', n_law, d_law)
  return IsoFlopFit(parabolas, c, n_opt, loss_opt, n_law, d_law, warnings)


# --- approach 3: the parametric loss L(N, D) ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParametricFit:
  """Approach 3: L(N, D) = E + A/N^α + B/D^β."""
  E: float
  A: float
  B: float
  alpha: float
  beta: float
  huber: float  # the objective at the fit

  @property
  def a(self) -> float:
    return self.beta / (self.alpha + self.beta)

  @property
  def b(self) -> float:
    return self.alpha / (self.alpha + self.beta)

  @property
  def G(self) -> float:
    return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

  @property
  def theta(self) -> np.ndarray:
    """The fitted (a, b, e, α, β), to start another fit from. A fit that drove e = log E below
    float64's range has E = 0; it restarts from the smallest positive E."""
    a, b, e = np.log(np.maximum([self.A, self.B, self.E], np.finfo(float).tiny))
    return np.array([a, b, e, self.alpha, self.beta])

  def exponents(self) -> dict[str, float]:
    return {'alpha': self.alpha, 'beta': self.beta, 'a': self.a, 'b': self.b, 'E': self.E}

  def loss(self, params: ArrayLike, tokens: ArrayLike) -> np.ndarray:
    params, tokens = np.asarray(params, dtype=float), np.asarray(tokens, dtype=float)
    return self.E + self.A / params ** self.alpha + self.B / tokens ** self.beta

  def optimal(self, flops: ArrayLike) -> tuple:
    """(N_opt, D_opt, D_opt/N_opt): the lowest loss at C = 6ND FLOPs (Hoffmann et al. eq. 4)."""
    c = np.asarray(flops, dtype=float) / 6
    n, d = self.G * c ** self.a, c ** self.b / self.G
    return n, d, d / n


def _huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
                     log_loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Σ Huber(LSE(a − α log N, b − β log D, e) − log L) and its gradient in θ = (a, b, e, α, β).

  θ is one point (5,) or a batch (K, 5); the value and gradient have shapes () and (5,), or (K,)
  and (K, 5).
  """
  a, b, e, alpha, beta = theta.T[..., None]
  terms = np.stack([a - alpha * log_n, b - beta * log_d, e + 0 * log_n])  # e for each point
  top = terms.max(axis=0)  # subtracted so that exp cannot overflow
  weights = np.exp(terms - top)
  total = weights.sum(axis=0)
  residual = top + np.log(total) - log_loss
  slope = np.clip(residual, -HUBER_DELTA, HUBER_DELTA)  # Huber's derivative
  value = (slope * (residual - slope / 2)).sum(axis=-1)
  # Huber's derivative times the LSE's derivative in each term (the softmax weights):
  g_a, g_b, g_e = slope * weights / total
  grad = [g_a.sum(-1), g_b.sum(-1), g_e.sum(-1), -(g_a * log_n).sum(-1), -(g_b * log_d).sum(-1)]
  return value, np.stack(grad, axis=-1)


def fit_parametric(params: ArrayLike, tokens: ArrayLike, loss: ArrayLike,
                   init: np.ndarray | None = None) -> ParametricFit:
  """Minimises the Huber loss (δ = 1e-3) of log L with L-BFGS, from `init` or from the paper's grid.

  L-BFGS from all 4500 grid points takes about a minute here, so the objective is evaluated at all of
  them at once and L-BFGS starts from the POLISHED_STARTS lowest. (On five synthetic sweeps, 9 to
  35 runs with 0 to 2% noise, the lowest start alone reached the best of all 4500.)
  """
  params, tokens, loss = (np.asarray(v, dtype=float) for v in (params, tokens, loss))
  if len(loss) < 6:  # with 5 parameters, 5 runs could be matched exactly and would test nothing
    raise UserError(f'the fit L = E + A/N^α + B/D^β has 5 parameters and needs at least 6 runs, '
                    f'got {len(loss)}; add runs')
  if len(np.unique(params)) < 2 or len(np.unique(tokens)) < 2:
    raise UserError('the fit L = E + A/N^α + B/D^β needs runs of 2 or more model sizes and of 2 or '
                    'more token counts; add runs')
  _check_loss_varies(loss)
  log_compute = np.log(params * tokens)
  if log_compute.max() - log_compute.min() <= math.log1p(BUDGET_RTOL):
    raise UserError('every run has the same compute 6ND (one budget), so N and D move together '
                    'and the fit L = E + A/N^α + B/D^β cannot tell their effects apart; add runs '
                    'at other budgets')
  data = (np.log(params), np.log(tokens), np.log(loss))
  if init is None:
    starts = INIT_GRID[np.argsort(_huber_objective(INIT_GRID, *data)[0])[:POLISHED_STARTS]]
  else:
    starts = [init]
  # L-BFGS-B stops when f falls by less than ftol·max(|f|, 1); f is ~1e-5 here, so the default
  # ftol would stop a refit from a nearby start (in the bootstrap) before it moved.
  options = {'ftol': 1e-12, 'gtol': 1e-12}
  # L-BFGS-B calls BLAS on 5x5 matrices, where BLAS threads only add synchronisation: on a busy
  # 2-core machine they made each fit 10-30x slower.
  with threadpoolctl.threadpool_limits(1, user_api='blas'):
    best = min((scipy.optimize.minimize(_huber_objective, start, data, method='L-BFGS-B',
                                        jac=True, options=options) for start in starts),
               key=lambda result: result.fun)
  a, b, e, alpha, beta = best.x
  rising = [(x, f'{name} = {value:.3g}') for x, name, value
            in (('N', 'alpha', alpha), ('D', 'beta', beta)) if value <= 0]
  if rising:
    xs, exponents = zip(*rising)
    raise UserError(f'the fit L = E + A/N^α + B/D^β gives {" and ".join(exponents)}: the loss does '
                    f'not fall as {" and ".join(xs)} grows, so there is no compute-optimal '
                    'trade-off; check for runs whose loss rises with model size or data')
  return ParametricFit(math.exp(e), math.exp(a), math.exp(b), float(alpha), float(beta),
                       float(best.fun))


# --- bootstrap ------------------------------------------------------------------------------


def bootstrap(refit: Callable[[np.ndarray], dict[str, float]], strata: np.ndarray,
              samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
              level: float = CI_LEVEL) -> tuple[dict[str, list[float]], int]:
  """Percentile intervals of refit's numbers over resamples of the runs, and how many refits worked.

  refit takes the indices of a resample (with repeats). Runs are drawn with replacement within
  each stratum (budget), so every resample keeps the sweep's design; a resample that cannot be
  refitted (a budget left with too few sizes) is dropped. UserError if every one is.
  """
  rng = np.random.default_rng(seed)
  groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
  draws, failures = [], []
  for _ in range(samples):
    try:
      draws.append(refit(np.concatenate([rng.choice(group, len(group)) for group in groups])))
    except UserError as e:
      failures.append(str(e))
  if failures and not draws:
    raise UserError(f'none of the {samples} resampled sweeps could be refitted (the last one: '
                    f'{failures[-1]})')
  tails = (50 * (1 - level), 50 * (1 + level))
  names = draws[0] if draws else {}
  intervals = {name: np.percentile([d[name] for d in draws], tails).tolist() for name in names}
  return intervals, len(draws)


# --- a whole sweep --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepFit:
  """Every fit the data allow, with bootstrap intervals of their exponents."""
  all_runs: Table  # every row of the CSV
  runs: Table  # the rows fitted: role 'sweep'
  budget: np.ndarray | None  # each run's isoFLOP budget, where the CSV tells
  parametric: ParametricFit | None
  isoflop: IsoFlopFit | None
  envelope: EnvelopeFit | None
  single_variable: dict[str, tuple[float, float, int]]  # 'N', 'D', 'C' → (X_c, α, frontier runs)
  intervals: dict[str, dict[str, list[float]]]  # approach → exponent → [low, high]
  refits: dict[str, int]  # approach → bootstrap resamples that could be refitted
  skipped: dict[str, str]  # fit → why the data do not allow it

  def approaches(self) -> dict:
    """The approaches that could be fitted, by key of APPROACHES."""
    return {key: getattr(self, key) for key in APPROACHES if getattr(self, key) is not None}


def fit_sweep(runs: Table, curves: Table | None = None, samples: int = BOOTSTRAP_SAMPLES,
              seed: int = 0) -> SweepFit:
  """Each approach and single-variable law where the data allow, and `samples` bootstrap refits
  of each approach fitted; `skipped` says why each other one could not be fitted. UserError, with
  every reason, when nothing can be fitted.

  Only the role 'sweep' rows are fitted (see role_rows); approach 3 fits L(N, D') on the
  repetition-adjusted tokens D' (fitted_tokens), the other fits the tokens trained on.
  """
  all_runs, runs = runs, _rows(runs, role_rows(runs, 'sweep'))
  if not len(runs['loss']):
    raise UserError("no row has role 'sweep', so there is nothing to fit; add the sweep's runs")
  n, d, loss = runs['params'], runs['tokens'], runs['loss']
  d_fit = fitted_tokens(runs)
  if curves is not None and 'role' in all_runs and 'name' in all_runs:  # seed, verification: out
    others = all_runs['name'][~role_rows(all_runs, 'sweep')]
    curves = _rows(curves, ~np.isin(curves['name'], others))
  skipped = {}

  def attempt(key: str, fit: Callable, *args):
    try:
      return fit(*args)
    except UserError as e:
      skipped[key] = str(e)
      return None

  parametric = attempt('parametric', fit_parametric, n, d_fit, loss)
  budget = attempt('isoflop', run_budgets, runs)
  isoflop = None if budget is None else attempt('isoflop', fit_isoflop, n, loss, budget)
  if curves is None:
    skipped['envelope'] = 'no loss curves (a sweep writes them to curves.csv)'
  envelope = None if curves is None else attempt('envelope', fit_envelope, curves)
  single_variable = {}
  for x_name, x in (('N', n), ('D', d), ('C', compute(runs))):
    law = attempt(f'L({x_name})', fit_frontier_law, x, loss, x_name)
    if law:
      single_variable[x_name] = law
  if not (parametric or isoflop or envelope or single_variable):
    keys_by_reason = {}
    for key, why in skipped.items():
      keys_by_reason.setdefault(why, []).append(key)
    raise UserError('nothing can be fitted to these runs: ' + ' | '.join(
        f'{", ".join(keys)}: {why}' for why, keys in keys_by_reason.items()))

  strata = budget if budget is not None else np.zeros(len(loss))
  refits = {}
  if parametric:
    # Refits of approach 3 start from the full-data fit instead of the grid: a resample moves the
    # optimum a little, and one L-BFGS run instead of POLISHED_STARTS keeps the bootstrap fast.
    refits['parametric'] = (lambda i: fit_parametric(n[i], d_fit[i], loss[i], parametric.theta)
                            .exponents(), strata)
  if isoflop:
    refits['isoflop'] = (lambda i: fit_isoflop(n[i], loss[i], budget[i]).exponents(), strata)
  if envelope:
    names = np.unique(curves['name'])
    run_budget = (np.array([curves['budget'][curves['name'] == name][0] for name in names])
                  if 'budget' in curves else np.zeros(len(names)))
    # A run drawn twice adds nothing to an envelope, so a resample is its set of distinct runs.
    refits['envelope'] = (lambda i: fit_envelope(_rows(curves, np.isin(curves['name'], names[i])))
                          .exponents(), run_budget)
  intervals, counts = {}, {}
  for key, (refit, key_strata) in refits.items():
    refitted = attempt(f'{key} intervals', bootstrap, refit, key_strata, samples, seed)
    intervals[key], counts[key] = refitted or ({}, 0)
  return SweepFit(all_runs, runs, budget, parametric, isoflop, envelope, single_variable,
                  intervals, counts, skipped)


def prediction_budgets(fit: SweepFit) -> list[float]:
  """The sweep's own budgets and EXTRA_BUDGETS, without near-duplicates."""
  own = np.unique(fit.budget) if fit.budget is not None else []
  merged = np.sort(np.concatenate([own, EXTRA_BUDGETS]))
  return merged[np.concatenate([[True], merged[1:] > merged[:-1] * (1 + 1e-6)])].tolist()


# --- predicting a larger run ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MinimumLossLaw:
  """L*(C) = E + k·C^−γ: the lowest loss reachable with C FLOPs, fitted to the isoFLOP minima (the
  form OpenAI's GPT-4 report, 2023, §3.1, extrapolated from; under approach 3's L(N, D) the
  compute-optimal loss has exactly this form, with γ = αβ/(α+β))."""
  E: float
  k: float
  gamma: float

  def __call__(self, flops: ArrayLike) -> np.ndarray:
    return self.E + self.k * np.asarray(flops, dtype=float) ** -self.gamma


def fit_minimum_loss_law(budgets: ArrayLike, loss: ArrayLike) -> MinimumLossLaw:
  """Least squares of L*(C) on (budget C in FLOPs, minimum loss in nats/token) points: for a given
  γ the law is linear in (E, k), so only γ is searched (a grid over (0, 2], then Brent's method
  around its best point), which no starting guess can send astray. Where the best E is negative
  (minima that fall in a straight line in log-log, which E → −∞, γ → 0 chases), E = 0 and k, γ
  come from a line through log L*. UserError with fewer than 3 budgets or a loss that does not
  fall with C."""
  c, loss = np.asarray(budgets, dtype=float), np.asarray(loss, dtype=float)
  if len(np.unique(c)) < PREDICTION_BUDGETS:
    raise UserError(f'the law L*(C) = E + k·C^-γ has 3 parameters and needs the minima of '
                    f'{PREDICTION_BUDGETS} or more budgets, got {len(np.unique(c))}; add budgets')
  x = np.log(c / c.min())  # C/C_min keeps C^-γ near 1

  def solve(gamma: float) -> tuple[np.ndarray, float]:
    design = np.stack([np.ones_like(x), np.exp(-gamma * x)], axis=1)
    coef = np.linalg.lstsq(design, loss, rcond=None)[0]
    return coef, float(((design @ coef - loss) ** 2).sum())

  step = 0.01
  grid = np.arange(1, 201) * step
  best = grid[np.argmin([solve(g)[1] for g in grid])]
  gamma = scipy.optimize.minimize_scalar(lambda g: solve(g)[1], method='bounded',
                                         bounds=(max(best - step, step / 100), best + step),
                                         options={'xatol': 1e-10}).x
  (e, k), _ = solve(gamma)
  if e < 0:  # a loss floor below zero is no floor: the minima fall as a pure power law, E = 0
    slope, intercept = np.polyfit(x, np.log(loss), 1)
    e, k, gamma = 0.0, math.exp(intercept), -slope
  if k <= 0 or gamma <= 0:
    raise UserError(f'the isoFLOP minima do not fall with compute (L*(C) = E + k·C^-γ gives k = '
                    f'{k:.3g}), so no loss can be extrapolated; check the runs')
  return MinimumLossLaw(float(e), float(k * c.min() ** gamma), float(gamma))


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


def _budget_column(table: Table) -> np.ndarray:
  """Each row's budget: the budget column, else the FLOPs it accounted (compute)."""
  return table['budget'] if 'budget' in table else compute(table)


def _point_rows(table: Table, budget: float, params: float) -> np.ndarray:
  """Which rows are runs of this budget and size."""
  return np.isclose(_budget_column(table), budget) & np.isclose(table['params'], params)


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
              f'{schedule["budget"]:.3g}): a WSD cooldown reached {schedule["wsd_loss"]:.4f}, a cosine '
              f'run of the same length {schedule["cosine_loss"]:.4f} '
              f'({100 * schedule["relative_difference"]:+.2f}%).', '']
  return lines[:-1]


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


# --- output ---------------------------------------------------------------------------------


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


def _save_loss_plot(fig: plt.Figure, ax: plt.Axes, xlabel: str, title: str, path: str) -> None:
  """Final validation loss against a log-scaled x, gridded, with a legend; saved to `path`."""
  ax.set_xscale('log')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('final validation loss (nats/token)')
  ax.set_title(title)
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8)
  _save(fig, path)


def _save(fig: plt.Figure, path: str) -> None:
  fig.tight_layout()
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, dpi=120)
  plt.close(fig)


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
  _save(fig, path)


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
  _save(fig, path)


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
  os.makedirs(out, exist_ok=True)
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


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m gpt_jax.scaling',
                                   description='Scaling-law fits of Hoffmann et al. (2022).')
  commands = parser.add_subparsers(dest='command', required=True)
  fit = commands.add_parser('fit', help='fit a CSV file with columns params, tokens, loss '
                            "(optional: flops, budget, role: only 'sweep' rows are fitted, "
                            'unique_tokens: repeated data) and print the fits')
  fit.add_argument('csv')
  fit.add_argument('--json', action='store_true', help='print one JSON object instead of tables')
  report = commands.add_parser('report', help='write DIR/scaling/: report.md, report.json, plots')
  report.add_argument('dir', help='a sweep directory: runs.csv and, for approach 1, curves.csv')
  report.add_argument('--predict', type=float, nargs='+', metavar='FLOPS',
                      help="budgets to predict N_opt, D_opt at (default: the sweep's, 1e18, 1e21, "
                      '5.76e23)')
  for command in (fit, report):
    command.add_argument('--bootstrap', type=int, default=BOOTSTRAP_SAMPLES, metavar='N',
                         help=f'resamples for the {round(100 * CI_LEVEL)}%% confidence intervals, '
                         f'0 for none (default {BOOTSTRAP_SAMPLES})')
    command.add_argument('--seed', type=int, default=0, help='seed of the resampling')
  args = parser.parse_args(argv)
  if args.bootstrap < 0:
    raise UserError(f'--bootstrap {args.bootstrap} is negative; pass 0 (no intervals) or more')
  if args.command == 'fit':
    summary = summarize(fit_sweep(read_csv(args.csv), samples=args.bootstrap, seed=args.seed))
    if args.json:
      print(json.dumps(summary, sort_keys=True))
    else:
      print(f'# Scaling-law fit of {args.csv}\n\n{markdown(summary)}', end='')
  else:
    if args.predict and min(args.predict) <= 0:
      raise UserError(f'--predict {min(args.predict)} is not a positive FLOP count; pass e.g. 1e21')
    write_report(args.dir, args.predict, args.bootstrap, args.seed)
    print(f'wrote {os.path.join(args.dir, "scaling", "report.md")} and its plots')


if __name__ == '__main__':
  cli.run(main)
