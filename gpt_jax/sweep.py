"""A Chinchilla-style isoFLOP sweep: for each compute budget C, train a family of model sizes
N on the D = C / (FLOPs per token) tokens the budget buys, then fit scaling laws to the results.

The sweep is data (`config.sweep`, see experiments/chinchilla.py): budgets, a ladder of widths
with a depth rule, how many sizes each budget trains, and the learning-rate rule. Each point is a
normal training run in DIR/runs/<name>; a finished one appends a row to DIR/runs.csv and its
validation curve to DIR/curves.csv, so an interrupted sweep re-run skips finished points and
resumes an unfinished one from its checkpoint. At the end, `scaling.write_report` writes
DIR/scaling/.
"""

import copy
import csv
import dataclasses
import math
import os
import time

import ml_collections

from gpt_jax import data, files, flops, metrics, scaling, trainer
from gpt_jax.errors import UserError

RUN_COLUMNS = ('name', 'budget', 'n_layer', 'n_embd', 'n_head', 'seq_len', 'batch_size', 'steps',
               'params', 'params_nonembed', 'tokens', 'flops', 'flops_6nd', 'loss', 'train_loss',
               'val_bpb', 'wall_seconds')
CURVE_COLUMNS = ('name', 'budget', 'params', 'step', 'tokens', 'flops', 'loss')


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of the sweep: a model size trained at one budget."""
  name: str
  budget: float
  config: ml_collections.ConfigDict  # a complete training config
  flops_per_step: float  # by the sweep's accounting (sweep.flops)

  @property
  def tokens(self) -> int:
    return self.config.steps * self.config.batch_size * self.config.seq_len


def shape(sweep: ml_collections.ConfigDict, width: int) -> dict:
  """The model shape of a width: depth from the aspect-ratio rule, heads of sweep.head_dim."""
  return dict(n_embd=width, n_layer=max(sweep.min_layers, round(width / sweep.width_per_layer)),
              n_head=max(1, width // sweep.head_dim), n_kv_head=max(1, width // sweep.head_dim))


def flops_per_sequence(run: ml_collections.ConfigDict, method: str) -> float:
  """Training FLOPs of one sequence: 6ND ('6nd') or Chinchilla's Appendix F ('chinchilla')."""
  if method == 'chinchilla':
    return flops.chinchilla_flops_per_sequence(run.model, run.seq_len)
  return 6 * flops.param_count(run.model) * run.seq_len


def plan(config: ml_collections.ConfigDict, max_tokens: float = math.inf) -> list[Point]:
  """Every point of the sweep, budget by budget, smallest model first.

  Each budget trains `sizes_per_budget` consecutive widths centred on the guess
  N = sqrt(C / (6 · tokens_per_param_guess)), slid towards larger models while the smallest would
  need more than `max_tokens` (one epoch of the corpus).
  """
  sweep = config.sweep
  if sweep.flops not in ('6nd', 'chinchilla'):
    raise UserError(f"sweep.flops={sweep.flops!r} is not '6nd' or 'chinchilla'; pick one")
  if sweep.sizes_per_budget > len(sweep.widths):
    raise UserError(f'sweep.sizes_per_budget={sweep.sizes_per_budget} exceeds the '
                    f'{len(sweep.widths)} sweep.widths; add widths or train fewer sizes')
  base = copy.deepcopy(config)
  with base.unlocked():  # the command line locks configs against new keys
    del base.sweep
  candidates = []
  for width in sorted(sweep.widths):
    run = copy.deepcopy(base)
    run.model.update(shape(sweep, width))
    run.optim.lr = sweep.lr * (sweep.lr_width / width) ** sweep.lr_width_exponent
    candidates.append(run)
  params = [flops.param_count(run.model) for run in candidates]
  flops_per_step = [flops_per_sequence(run, sweep.flops) * run.batch_size for run in candidates]
  tokens_per_step = config.batch_size * config.seq_len

  points = []
  for budget in sorted(sweep.budgets):
    guess = math.sqrt(budget / (6 * sweep.tokens_per_param_guess))
    centre = min(range(len(params)), key=lambda i: abs(math.log(params[i] / guess)))
    last_start = len(params) - sweep.sizes_per_budget
    first = min(max(0, centre - sweep.sizes_per_budget // 2), last_start)
    while budget / flops_per_step[first] * tokens_per_step > max_tokens:
      if first == last_start:
        raise UserError(
            f'budget {budget:.3g} needs {budget / flops_per_step[first] * tokens_per_step:,.0f} '
            f'tokens even for width {candidates[first].model.n_embd}, more than the '
            f'{max_tokens:,.0f} of one pass over the corpus; lower sweep.budgets, add wider '
            'sweep.widths, or pass a larger corpus with --config.data.corpus')
      first += 1
    for i in range(first, first + sweep.sizes_per_budget):
      run = copy.deepcopy(candidates[i])
      steps = round(budget / flops_per_step[i])
      if steps < sweep.min_steps:
        raise UserError(
            f'budget {budget:.3g} buys only {steps} steps of model width {run.model.n_embd} '
            f'(sweep.min_steps={sweep.min_steps}); raise the budget or remove wide sweep.widths')
      run.steps = steps
      run.optim.warmup_steps = max(1, round(sweep.warmup_fraction * steps))
      run.eval_every = max(1, steps // sweep.evals_per_run)
      run.log_every = run.eval_every
      run.checkpoint_every = max(1, steps // 4)
      run.sample.num = 0
      name = f'C{budget:.2g}_d{run.model.n_embd}_L{run.model.n_layer}'.replace('+', '')
      points.append(Point(name, budget, run, flops_per_step[i]))
  return points


def _read_csv(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _append_rows(path: str, columns: tuple, rows: list[dict]) -> None:
  """Rewrites the CSV with `rows` in place of any earlier rows of the same runs, atomically: a
  killed sweep never leaves half a row, and a point finished twice is listed once."""
  names = {row['name'] for row in rows}
  kept = [row for row in _read_csv(path) if row['name'] not in names]
  everything = kept + [{k: row[k] for k in columns} for row in rows]
  with files.atomic_path(path) as tmp, open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(everything)


def _result_rows(point: Point, workdir: str, wall_seconds: float) -> tuple[dict, list[dict]]:
  """The runs.csv row and the curves.csv rows of a finished point."""
  run = point.config
  records = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  final = records[-1]
  params = flops.param_count(run.model)
  tokens_per_step = run.batch_size * run.seq_len
  flops_per_step = point.flops_per_step
  row = dict(name=point.name, budget=point.budget, n_layer=run.model.n_layer,
             n_embd=run.model.n_embd, n_head=run.model.n_head, seq_len=run.seq_len,
             batch_size=run.batch_size, steps=run.steps, params=params,
             params_nonembed=flops.param_count(run.model, embeddings=False), tokens=point.tokens,
             flops=flops_per_step * run.steps, flops_6nd=6 * params * point.tokens,
             loss=final['val_loss'], train_loss=final['train_loss'], val_bpb=final['val_bpb'],
             wall_seconds=round(wall_seconds, 1))
  curve = [dict(name=point.name, budget=point.budget, params=params, step=r['step'],
                tokens=r['step'] * tokens_per_step, flops=r['step'] * flops_per_step,
                loss=r['val_loss']) for r in records if 'val_loss' in r]
  return row, curve


def run_sweep(config: ml_collections.ConfigDict, workdir: str, log=print) -> dict:
  """Trains every point not yet in DIR/runs.csv, then writes the scaling-law report."""
  plan(config)  # a bad sweep config fails before the corpus is read
  prepared = data.prepare(config.data, config.model.vocab_size, log=log)
  points = plan(config, max_tokens=prepared.manifest['splits']['train']['tokens'] *
                config.data.num_epochs)
  for point in points:
    trainer.validate_config(point.config)

  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, 'sweep_config.json'), config.to_dict())
  runs_csv, curves_csv = os.path.join(workdir, 'runs.csv'), os.path.join(workdir, 'curves.csv')
  finished = {row['name'] for row in _read_csv(runs_csv)}
  todo = [p for p in points if p.name not in finished]
  log(f'sweep: {len(points)} runs over {len(config.sweep.budgets)} budgets '
      f'({len(points) - len(todo)} already finished) in {workdir}')
  total_tokens = sum(p.tokens for p in todo)
  done_tokens, start = 0, time.perf_counter()
  for point in todo:
    elapsed = time.perf_counter() - start
    eta = (f', about {elapsed / done_tokens * (total_tokens - done_tokens) / 60:.1f} min left'
           if done_tokens else '')
    run = point.config
    log(f'[{points.index(point) + 1}/{len(points)}] {point.name}: '
        f'N={flops.param_count(run.model):,} params, D={point.tokens:,} tokens, '
        f'C={point.flops_per_step * run.steps:.3g} FLOPs, lr={run.optim.lr:.2g}'
        f'{eta}')
    run_dir = os.path.join(workdir, 'runs', point.name)
    run_start = time.perf_counter()
    trainer.train(run, run_dir, log=lambda _: None, prepared=prepared)
    row, curve = _result_rows(point, run_dir, time.perf_counter() - run_start)
    if not math.isfinite(row['loss']):
      raise UserError(f'run {point.name} diverged (validation loss {row["loss"]}); lower '
                      f'sweep.lr, delete {run_dir} and run the sweep again')
    _append_rows(curves_csv, CURVE_COLUMNS, curve)
    _append_rows(runs_csv, RUN_COLUMNS, [row])  # last: its row is what marks the point finished
    log(f'    val loss {row["loss"]:.4f} ({row["val_bpb"]:.3f} bits/byte) in '
        f'{row["wall_seconds"]:.0f}s')
    done_tokens += point.tokens
  report = scaling.write_report(workdir)
  log(f'sweep done in {(time.perf_counter() - start) / 60:.1f} min; report in '
      f'{os.path.join(workdir, "scaling", "report.md")}')
  return report
