"""The fits of a sweep: the three approaches of Chinchilla (Hoffmann et al. 2022), bootstrap
intervals of their exponents, and fit_sweep, which fits every approach and single-variable law
(gpt_jax.scaling.laws) the data allow.

  Approach 1 (§3.1): the lower envelope of all loss curves against FLOPs; the run on the envelope
    at each C gives (N, D), and power laws N_opt ∝ C^a, D_opt ∝ C^b go through those points.
  Approach 2 (§3.2): per budget, a parabola of loss in log N; its minimum is N_opt(C).
  Approach 3 (§3.3): L(N, D) = E + A/N^α + B/D^β fitted to every run; minimising it under C = 6ND
    gives N_opt ∝ C^a, D_opt ∝ C^b with a = β/(α+β), b = α/(α+β).

Exponents get bootstrap confidence intervals. Only runs.csv rows with role 'sweep' are fitted
(all rows without a role column); approach 3 counts repeated data as Muennighoff et al.'s D'.
"""

import dataclasses
import itertools
import math
from typing import Callable

import numpy as np
import scipy.optimize
import threadpoolctl
from numpy.typing import ArrayLike

from gpt_jax.errors import UserError
from gpt_jax.scaling.laws import (PowerLaw, _check_loss_varies, effective_tokens,
                                  fit_frontier_law, fit_power_law)
from gpt_jax.scaling.tables import BUDGET_RTOL, Table, _rows, compute, role_rows, run_budgets

HUBER_DELTA = 1e-3
# Hoffmann et al. Appendix D.2: L-BFGS from a grid of initial (a, b, e, α, β), keeping the best.
INIT_GRID = np.array(list(itertools.product(np.linspace(0, 25, 6), np.linspace(0, 25, 6),
                                            np.linspace(-1, 1, 5), np.linspace(0, 2, 5),
                                            np.linspace(0, 2, 5))))
POLISHED_STARTS = 20
ENVELOPE_POINTS = 200
BOOTSTRAP_SAMPLES = 100
CI_LEVEL = 0.9  # percentile interval 5..95%
APPROACHES = {'envelope': 'approach 1 (envelope)', 'isoflop': 'approach 2 (isoFLOP)',
              'parametric': 'approach 3 (L(N, D))'}
# Hoffmann et al.'s own results, for comparison (the report, the plots):
CHINCHILLA = {'flops': 5.76e23, 'params': 70e9, 'tokens': 1.4e12}  # at Gopher's budget
PAPER_EXPONENTS = {'envelope': (0.50, 0.50), 'isoflop': (0.49, 0.51), 'parametric': (0.46, 0.54)}


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
  if len(names) == len(curves['name']):
    # One point per name is no curve: the interpolated envelope would exist only at the ends.
    raise UserError(f'each of the {len(names)} curves has one point, so there is no loss curve '
                    'to take the envelope of; give the points of one run (or one model size) '
                    'the same name')
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


def fitted_tokens(runs: Table) -> np.ndarray:
  """The D that approach 3 fits: effective_tokens where the runs say how many tokens are unique."""
  if 'unique_tokens' not in runs:
    return runs['tokens']
  return effective_tokens(runs['tokens'], runs['unique_tokens'])


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

  L-BFGS from all 4500 grid points takes about a minute here, so the objective is evaluated at all
  of them at once and L-BFGS starts from the POLISHED_STARTS lowest. (On five synthetic sweeps, 9
  to 35 runs with 0 to 2% noise, the lowest start alone reached the best of all 4500.)
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
