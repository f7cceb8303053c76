"""Run tables: reading a sweep's CSV files into columns, and the columns the fits derive from them.

A sweep writes DIR/runs.csv (one row per run: params = N, tokens = D, loss = final validation loss
in nats/token, budget = C, flops = the FLOPs it accounted) and DIR/curves.csv (loss against FLOPs:
along each run, or of each model size through the final losses of its WSD cooldowns); any CSV
with columns params, tokens, loss can be fitted. A row's role says what it is for (role_rows):
only rows with role 'sweep' are fitted (all rows without a role column).
"""

import csv
import math
from typing import Sequence

import numpy as np

from gpt_jax.errors import UserError

Table = dict[str, np.ndarray]  # a CSV file's columns by name

RUN_COLUMNS = ('params', 'tokens', 'loss')
CURVE_COLUMNS = ('name', 'params', 'tokens', 'flops', 'loss')
# the fits take their logs (unique_tokens: tokens in one epoch of the corpus)
POSITIVE_COLUMNS = ('params', 'tokens', 'loss', 'flops', 'budget', 'unique_tokens')
BUDGET_RTOL = 0.1  # one budget's runs differ in FLOPs by rounded step counts, budgets far more


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


def _budget_column(table: Table) -> np.ndarray:
  """Each row's budget: the budget column, else the FLOPs it accounted (compute)."""
  return table['budget'] if 'budget' in table else compute(table)


def _point_rows(table: Table, budget: float, params: float) -> np.ndarray:
  """Which rows are runs of this budget and size."""
  return np.isclose(_budget_column(table), budget) & np.isclose(table['params'], params)
