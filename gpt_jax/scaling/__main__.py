"""The command line:

`python -m gpt_jax.scaling fit FILE.csv [--json]`
fits any CSV with columns params, tokens, loss (optional flops, budget);
`python -m gpt_jax.scaling report DIR` writes DIR/scaling/report.{md,json} and three plots.
"""

import argparse
import json
import os
from typing import Sequence

from gpt_jax import cli
from gpt_jax.errors import UserError
from gpt_jax.scaling.fit import BOOTSTRAP_SAMPLES, CI_LEVEL, fit_sweep
from gpt_jax.scaling.report import markdown, write_report
from gpt_jax.scaling.summary import summarize
from gpt_jax.scaling.tables import read_csv


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
