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

The package, each module importing only those listed above it:
  tables      reading run tables (CSV) and the columns derived from them (compute, budgets, roles)
  laws        power laws, the single-variable laws, repeated data D', the minimum-loss law L*(C)
  fit         the three approaches, the bootstrap, a whole sweep's fit (fit_sweep)
  prediction  predicting a larger run and checking predictions (holdout, verification)
  summary     the fits and the sweep's checks (noise, agreement, controls) as JSON
  plots       the report's plots
  report      the report: markdown and DIR/scaling/
  __main__    the command:

`python -m gpt_jax.scaling fit FILE.csv [--json]`
fits any CSV with columns params, tokens, loss (optional flops, budget);
`python -m gpt_jax.scaling report DIR` writes DIR/scaling/report.{md,json} and three plots.
"""

from gpt_jax.scaling.tables import (BUDGET_RTOL, CURVE_COLUMNS, POSITIVE_COLUMNS, RUN_COLUMNS,
                                    Table, compute, read_csv, role_rows, run_budgets)
from gpt_jax.scaling.laws import (PREDICTION_BUDGETS, R_STAR, MinimumLossLaw, PowerLaw,
                                  effective_tokens, fit_frontier_law, fit_minimum_loss_law,
                                  fit_power_law, fit_single_variable, frontier)
from gpt_jax.scaling.fit import (APPROACHES, BOOTSTRAP_SAMPLES, CHINCHILLA, CI_LEVEL,
                                 ENVELOPE_POINTS, HUBER_DELTA, INIT_GRID, PAPER_EXPONENTS,
                                 POLISHED_STARTS, EnvelopeFit, IsoFlopFit, ParametricFit, SweepFit,
                                 bootstrap, fit_envelope, fit_isoflop, fit_parametric, fit_sweep,
                                 fitted_tokens)
from gpt_jax.scaling.prediction import (PREDICTION_METHODS, holdout, predict, read_prediction,
                                        verification, write_prediction)
from gpt_jax.scaling.summary import (AGREEMENT_TARGETS, EXTRA_BUDGETS, agreement, controls, noise,
                                     prediction_budgets, summarize)
from gpt_jax.scaling.plots import plot_contours, plot_isoflop, plot_optimal, plot_verification
from gpt_jax.scaling.report import markdown, write_report

# The names of the former module gpt_jax.scaling (its command, main, is in __main__).
__all__ = [
    # tables
    'BUDGET_RTOL', 'CURVE_COLUMNS', 'POSITIVE_COLUMNS', 'RUN_COLUMNS', 'Table', 'compute',
    'read_csv', 'role_rows', 'run_budgets',
    # laws
    'PREDICTION_BUDGETS', 'R_STAR', 'MinimumLossLaw', 'PowerLaw', 'effective_tokens',
    'fit_frontier_law', 'fit_minimum_loss_law', 'fit_power_law', 'fit_single_variable', 'frontier',
    # fit
    'APPROACHES', 'BOOTSTRAP_SAMPLES', 'CHINCHILLA', 'CI_LEVEL', 'ENVELOPE_POINTS', 'HUBER_DELTA',
    'INIT_GRID', 'PAPER_EXPONENTS', 'POLISHED_STARTS', 'EnvelopeFit', 'IsoFlopFit',
    'ParametricFit', 'SweepFit', 'bootstrap', 'fit_envelope', 'fit_isoflop', 'fit_parametric',
    'fit_sweep', 'fitted_tokens',
    # prediction
    'PREDICTION_METHODS', 'holdout', 'predict', 'read_prediction', 'verification',
    'write_prediction',
    # summary
    'AGREEMENT_TARGETS', 'EXTRA_BUDGETS', 'agreement', 'controls', 'noise', 'prediction_budgets',
    'summarize',
    # plots
    'plot_contours', 'plot_isoflop', 'plot_optimal', 'plot_verification',
    # report
    'markdown', 'write_report',
]
