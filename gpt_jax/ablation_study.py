"""The ablation study: what each change of a recipe buys at equal wall time.

For each time budget in config.ablation.budgets (seconds of training on this machine, see
config.time_budget_s), trains the baseline (the config without its `ablation` section), the
baseline with each change of config.ablation.changes ((name, settings) pairs) alone, and the
baseline with all of them, one run after another (runs side by side would slow each other), on the
same data with the same seed. Every run trains as many steps as fit its budget at its own measured
speed, so a change that makes steps slower pays for it. Writes DIR/ablation_report.md: validation
bits per byte of each run, and its change against the baseline. A finished run is reused when the
study is run again; delete its folder to measure it anew.
"""

import copy
import os
import re

from gpt_jax import cli, files, flops, metrics, trainer
from gpt_jax.errors import UserError


def _quiet(_):
  pass


def _slug(name: str) -> str:
  return re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')


def flat(settings: dict, prefix: str = '') -> dict:
  """{'optim': {'lr': 4e-3}} -> {'optim.lr': 4e-3}."""
  return {k: v for key, value in settings.items()
          for k, v in (flat(value, f'{prefix}{key}.').items() if isinstance(value, dict)
                       else [(prefix + key, value)])}


def apply(config, settings: dict, name: str) -> None:
  """Sets the change called `name`, nested like the config ({'optim': {'lr': 4e-3}}), in config;
  UserError for a key the config lacks."""
  for key, value in flat(settings).items():
    if cli.unknown_key(config, key):
      raise UserError(f'ablation change {name!r} sets {key!r}, which is not a config key; '
                      'check the spelling against gpt_jax/config.py')
    *sections, leaf = key.split('.')
    node = config
    for section in sections:
      node = node[section]
    node[leaf] = value


def variants(config) -> dict:
  """name -> the config of that run: 'baseline' (config without its ablation section), '+ CHANGE'
  for each of config.ablation.changes (settings over the baseline, see apply) and
  'all'."""
  baseline = copy.deepcopy(config)
  with baseline.unlocked():  # the command line locks configs against new keys
    del baseline.ablation
  changes = dict(config.ablation.changes)
  runs = {'baseline': baseline}
  for name, settings in changes.items():
    runs[f'+ {name}'] = copy.deepcopy(baseline)
    apply(runs[f'+ {name}'], settings, name)
  runs['all'] = copy.deepcopy(baseline)
  for name, settings in changes.items():
    apply(runs['all'], settings, name)
  return runs


def run_study(config, workdir: str, log=print) -> dict:
  """Trains what is missing in `workdir` and writes the report; returns {budget: {run: final
  metrics}}."""
  budgets = [float(b) for b in config.ablation.budgets]
  if not budgets or min(budgets) <= 0:
    raise UserError(f'ablation.budgets={tuple(config.ablation.budgets)} must be positive seconds, '
                    'e.g. (60, 300)')
  runs = variants(config)
  results = {}
  total = len(budgets) * len(runs)
  for b, budget in enumerate(budgets):
    results[budget] = {}
    for r, (name, run) in enumerate(runs.items()):
      run.time_budget_s = budget
      run_dir = os.path.join(workdir, f'{budget:g}s', _slug(name))
      log(f'[{b * len(runs) + r + 1}/{total}] {budget:g} s, {name} -> {run_dir}')
      trainer.train(run, run_dir, log=_quiet)
      records = metrics.read_jsonl(os.path.join(run_dir, metrics.METRICS))
      results[budget][name] = records[-1]
      log(f'    {records[-1]["step"]} steps, {records[-1]["val_bpb"]:.4f} bits/byte')
  _write_report(config, runs, results, workdir)
  log(f'report: {os.path.join(workdir, "ablation_report.md")}')
  return results


def _write_report(config, runs, results, workdir: str) -> None:
  budgets = list(results)
  head = ' | '.join(f'{b:g} s: bits/byte (steps) | vs baseline' for b in budgets)
  rows = []
  for name in runs:
    cells = []
    for budget in budgets:
      record, base = results[budget][name], results[budget]['baseline']['val_bpb']
      cells.append(f'{record["val_bpb"]:.4f} ({record["step"]}) | '
                   f'{100 * (record["val_bpb"] / base - 1):+.1f}%')
    rows.append(f'| {name} | {" | ".join(cells)} |')
  changes = [f'- {name}: ' + ', '.join(f'`{k}={v!r}`' for k, v in flat(settings).items())
             for name, settings in config.ablation.changes]
  text = ['# Ablation at equal wall time', '',
          f'Each run trains for its budget of seconds on this machine ({flops.cpu_key()}), as '
          'many steps as fit at its own measured speed (time_budget_s; compiling and evaluating '
          'are not counted), then scores the validation split in bits per byte (lower is better).',
          '', f'| run | {head} |', '|---' * (1 + 2 * len(budgets)) + '|', *rows, '',
          'The changes, each over the baseline:', *changes, '']
  files.write_text(os.path.join(workdir, 'ablation_report.md'), '\n'.join(text))
