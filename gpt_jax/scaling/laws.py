"""The laws fitted and extrapolated, on arrays of numbers: power laws y = coef·x^exponent, the
single-variable laws L(X) = (X_c/X)^α (Kaplan et al. 2020) on the frontier runs, the
repetition-adjusted data D' (Muennighoff et al. 2023), and the law L*(C) = E + k·C^-γ of the
lowest loss reachable with C FLOPs (GPT-4's report).
"""

import dataclasses
import math

import numpy as np
import scipy.optimize
from numpy.typing import ArrayLike

from gpt_jax.errors import UserError

R_STAR = 15.4  # Muennighoff et al. 2023 eq. 5: repeats after which extra epochs are worth 1/e
PREDICTION_BUDGETS = 3  # isoFLOP minima the law L*(C) = E + k·C^-γ needs (it has 3 parameters)


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
  with np.errstate(over='ignore'):  # a degenerate bootstrap resample's law: inf, then refused
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


# --- repeated data --------------------------------------------------------------------------


def effective_tokens(tokens: ArrayLike, unique_tokens: ArrayLike, r_star: float = R_STAR
                     ) -> np.ndarray:
  """Repetition-adjusted data D' = U + U·R*·(1 − exp(−R/R*)), R = D/U − 1 repeats of U unique
  tokens (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models", eq. 5); D' = D
  where D ≤ U. Elementwise over arrays of token counts."""
  tokens, unique = np.asarray(tokens, dtype=float), np.asarray(unique_tokens, dtype=float)
  repeats = np.maximum(tokens / unique - 1, 0)
  return np.where(repeats > 0, unique + unique * r_star * -np.expm1(-repeats / r_star), tokens)


# --- the lowest loss reachable with C FLOPs, L*(C) ------------------------------------------


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
