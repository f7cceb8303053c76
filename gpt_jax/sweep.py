"""A Chinchilla-style isoFLOP sweep that predicts a larger run before training it.

For each compute budget C the sweep trains a family of model sizes N, each on the
D = C / (FLOPs per token) tokens the budget buys, and fits scaling laws to the final losses
(gpt_jax.scaling). The sweep is data (`config.sweep`, see experiments/chinchilla.py).

With `sweep.schedule='wsd'` (warmup-stable-decay; Hägele et al. 2024, "Scaling Laws and
Compute-Optimal Training Beyond Fixed Training Durations"; Hu et al. 2024, MiniCPM) each model
size is trained once, at constant learning rate, to the longest D any budget gives it: its
*trunk*. Every shorter point of that size is a *branch*: a cooldown of the last
`decay_fraction` of its steps started from the trunk's checkpoint where its own decay begins. A
branch is bit for bit the run trained straight to its length (tests/test_optim.py), so one trunk
yields the fully decayed loss at many D. `sweep.schedule='cosine'` trains every point straight.

Beside the isoFLOP points the sweep trains, as rows of DIR/runs.csv with their `role`:
  'lr_probe'      the narrowest width and the widest trained at two budgets or more, each at its
                  smallest budget, at lr × each of sweep.lr_probe: does the learning-rate rule
                  lr ∝ width^-lr_width_exponent hold at both ends?
  'seed'          one point again with seeds 1 … sweep.seeds − 1: the noise of a single loss;
  'cosine'        that point with a cosine schedule instead (sweep.compare_cosine): does a WSD
                  cooldown reach the loss of a cosine run of its length?
  'verification'  one run at sweep.verify_factor × the top budget, at the N_opt predicted by the
                  fits of the sweep; the prediction is written to DIR/prediction.json before the
                  run starts, and the report puts predicted and measured loss side by side.

Each run is a normal training run in DIR/runs/<name>; a finished one appends its row to
DIR/runs.csv, so an interrupted sweep re-run skips finished runs and resumes an unfinished one
(trunk or branch) from its own checkpoints. On a CPU the runs train sweep.workers at a time, each
in its own process on one core (the models are too small to keep two busy): first the isoFLOP
points (a branch once its trunk has finished), then the verification run, predicted from them,
beside the controls. At the end `scaling.write_report` writes DIR/scaling/.
"""

import concurrent.futures
import contextlib
import copy
import csv
import dataclasses
import io
import math
import multiprocessing
import os
import time

import jax
import ml_collections

from gpt_jax import checkpoint, data, files, flops, metrics, optim, scaling, trainer
from gpt_jax import workers as workers_lib
from gpt_jax.errors import UserError

RUN_COLUMNS = ('name', 'role', 'budget', 'seed', 'lr_multiplier', 'n_layer', 'n_embd', 'n_head',
               'seq_len', 'batch_size', 'steps', 'lr', 'params', 'params_nonembed', 'tokens',
               'unique_tokens', 'flops', 'flops_6nd', 'model_flops', 'loss', 'train_loss',
               'val_bpb', 'trunk', 'branch_step', 'wall_seconds', 'step_seconds')
MIN_FITTED_BUDGETS = 3  # below the held-out top budget: a law through fewer says nothing


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of the sweep: a model size trained to one length."""
  name: str
  budget: float
  config: ml_collections.ConfigDict  # the complete training config, as if trained straight
  flops_per_step: float  # by the sweep's accounting (sweep.flops)
  role: str = 'sweep'  # 'sweep', 'lr_probe', 'seed' or 'verification'
  lr_multiplier: float = 1.0
  trunk: str = ''  # the run it branches from ('' = trained from step 0)
  branch_step: int = 0  # the trunk's step it starts from

  @property
  def tokens(self) -> int:
    return self.config.steps * self.config.batch_size * self.config.seq_len

  @property
  def width(self) -> int:
    return self.config.model.n_embd


def shape(sweep: ml_collections.ConfigDict, width: int) -> dict:
  """The model shape of a width: depth from the aspect-ratio rule, heads of sweep.head_dim."""
  return dict(n_embd=width, n_layer=max(sweep.min_layers, round(width / sweep.width_per_layer)),
              n_head=max(1, width // sweep.head_dim), n_kv_head=max(1, width // sweep.head_dim))


def learning_rate(sweep: ml_collections.ConfigDict, width: int) -> float:
  """The peak learning rate of a width: sweep.lr at sweep.lr_width, ∝ width^-lr_width_exponent
  (exponent 1 is μP's Adam rule for hidden matrices, Yang et al. 2022, Table 3)."""
  return sweep.lr * (sweep.lr_width / width) ** sweep.lr_width_exponent


def flops_per_sequence(model: ml_collections.ConfigDict, seq_len: int, method: str) -> float:
  """Training FLOPs of one sequence: 6ND ('6nd') or Chinchilla's Appendix F ('chinchilla')."""
  if method == 'chinchilla':
    return flops.chinchilla_flops_per_sequence(model, seq_len)
  return 6 * flops.param_count(model) * seq_len


def decay_start(optim: ml_collections.ConfigDict, steps: int) -> int:
  """The step a WSD run of `steps` steps starts its cooldown from (see optim.schedule)."""
  return steps - max(1, round(optim.decay_fraction * steps))


def check(config: ml_collections.ConfigDict) -> None:
  """UserError for a sweep config that cannot run, before any corpus is read."""
  sweep = config.sweep
  optim.validate(config.optim)  # the sweep sets optim.schedule from sweep.schedule, not the rest
  if sweep.flops not in ('6nd', 'chinchilla'):
    raise UserError(f"sweep.flops={sweep.flops!r} is not '6nd' or 'chinchilla'; pick one")
  if sweep.schedule not in ('wsd', 'cosine'):
    raise UserError(f"sweep.schedule={sweep.schedule!r} is not 'wsd' or 'cosine'; pick one")
  if sweep.workers < 0:
    raise UserError(f'sweep.workers={sweep.workers} must be >= 0 (runs trained at once; 0 = one '
                    'per core on a CPU)')
  if sweep.schedule == 'wsd' and config.optim.decay_fraction == 1:
    raise UserError('optim.decay_fraction=1 leaves a WSD run no constant phase to branch '
                    "cooldowns from; pick a fraction below 1 (0.2 is usual) or "
                    "sweep.schedule='cosine'")
  if sweep.sizes_per_budget > len(sweep.widths):
    raise UserError(f'sweep.sizes_per_budget={sweep.sizes_per_budget} exceeds the '
                    f'{len(sweep.widths)} sweep.widths; add widths or train fewer sizes')
  if sweep.seeds < 1:
    raise UserError(f'sweep.seeds={sweep.seeds} must be at least 1 (1 = no repeats; 3 measures '
                    'the noise of one point)')
  if len(set(sweep.budgets)) < MIN_FITTED_BUDGETS + 1:
    raise UserError(
        f'sweep.budgets has {len(set(sweep.budgets))} distinct budgets: too few to fit a '
        f'prediction (at least {MIN_FITTED_BUDGETS} below the held-out top one); add budgets')
  if not sweep.verify_factor >= 1:
    raise UserError(f'sweep.verify_factor={sweep.verify_factor} must be >= 1 (the verification '
                    'run trains at this multiple of the top budget; 3 or more tests a prediction)')
  if any(not isinstance(m, (int, float)) or not m > 0 for m in sweep.lr_probe):
    raise UserError(f'sweep.lr_probe={tuple(sweep.lr_probe)} holds a multiplier <= 0; pass '
                    'positive multiples of the rule\'s learning rate, e.g. 0.5,2')


def _run(config: ml_collections.ConfigDict, width: int, steps: int, lr_multiplier: float = 1.0,
         seed: int | None = None) -> ml_collections.ConfigDict:
  """The training config of one run: the sweep's config without its `sweep` section, at `width`,
  for `steps` steps, with the sweep's schedule and learning-rate rule; evaluated at its end."""
  sweep = config.sweep
  run = copy.deepcopy(config)
  with run.unlocked():  # the command line locks configs against new keys
    del run.sweep
  run.model.update(shape(sweep, width))
  run.optim.update(lr=learning_rate(sweep, width) * lr_multiplier, schedule=sweep.schedule,
                   warmup_steps=sweep.warmup_steps)
  run.steps = steps
  if seed is not None:
    run.seed = seed
  run.eval_every = steps  # the fits read final losses only
  run.log_every = max(1, steps // 8)
  run.checkpoint_every = max(1, steps // 10)  # a WSD cooldown (last 20%) holds one or two
  run.sample.num = 0
  return run


def _name(budget: float, run: ml_collections.ConfigDict, suffix: str = '') -> str:
  return f'C{budget:.3g}_d{run.model.n_embd}_L{run.model.n_layer}{suffix}'.replace('+', '')


def _steps(config: ml_collections.ConfigDict, width: int, budget: float) -> tuple[int, float]:
  """(steps, FLOPs per step) of `width` at `budget`."""
  model = run_model(config, width)
  per_step = flops_per_sequence(model, config.seq_len, config.sweep.flops) * config.batch_size
  return round(budget / per_step), per_step


def isoflop_points(config: ml_collections.ConfigDict, max_tokens: float = math.inf
                   ) -> list[Point]:
  """The isoFLOP grid, budget by budget, smallest model first: `sizes_per_budget` consecutive
  widths centred on the guess N = sqrt(C / (6 · tokens_per_param_guess)), slid towards larger
  models while the smallest would need more than `max_tokens` (data.num_epochs passes over the
  corpus)."""
  sweep = config.sweep
  widths = sorted(sweep.widths)
  params = [flops.param_count(run_model(config, w)) for w in widths]
  tokens_per_step = config.batch_size * config.seq_len
  points = []
  for budget in sorted(set(sweep.budgets)):
    guess = math.sqrt(budget / (6 * sweep.tokens_per_param_guess))
    centre = min(range(len(params)), key=lambda i: abs(math.log(params[i] / guess)))
    last_start = len(widths) - sweep.sizes_per_budget
    first = min(max(0, centre - sweep.sizes_per_budget // 2), last_start)
    while _steps(config, widths[first], budget)[0] * tokens_per_step > max_tokens:
      if first == last_start:
        raise UserError(
            f'budget {budget:.3g} needs '
            f'{_steps(config, widths[first], budget)[0] * tokens_per_step:,.0f} tokens even for '
            f'width {widths[first]}, more than the {max_tokens:,.0f} the corpus gives in '
            f'data.num_epochs={config.data.num_epochs} pass(es); lower sweep.budgets, add wider '
            'sweep.widths, or pass a larger corpus with --config.data.corpus')
      first += 1
    for width in widths[first:first + sweep.sizes_per_budget]:
      steps, per_step = _steps(config, width, budget)
      run = _run(config, width, steps)
      minimum = max(sweep.min_steps, math.ceil((sweep.warmup_steps + 1) / (1 - _decay(config))))
      if steps < minimum:
        raise UserError(
            f'budget {budget:.3g} buys only {steps} steps of model width {width} (at least '
            f'{minimum}: sweep.min_steps, and warmup before the decay); raise the budget or remove '
            'wide sweep.widths')
      points.append(Point(_name(budget, run), budget, run, per_step))
  return points


def _decay(config: ml_collections.ConfigDict) -> float:
  return config.optim.decay_fraction if config.sweep.schedule == 'wsd' else 0.0


def with_branches(points: list[Point]) -> list[Point]:
  """WSD: per width, the longest point is the trunk, trained straight and saving a checkpoint
  where each shorter point's cooldown starts; the shorter points branch from it. Ordered width by
  width, trunk first. Cosine (or a width with one point): every point trained straight."""
  ordered = []
  for width in sorted({p.width for p in points}):
    same = sorted((p for p in points if p.width == width), key=lambda p: p.config.steps)
    trunk = same[-1]
    if trunk.config.optim.schedule != 'wsd':
      ordered += same
      continue
    starts = {p.name: decay_start(p.config.optim, p.config.steps) for p in same[:-1]}
    trunk_config = copy.deepcopy(trunk.config)
    trunk_config.checkpoint_steps = tuple(sorted(set(starts.values())))
    ordered.append(dataclasses.replace(trunk, config=trunk_config))
    ordered += [dataclasses.replace(p, trunk=trunk.name, branch_step=starts[p.name])
                for p in same[:-1]]
  return ordered


def extra_points(config: ml_collections.ConfigDict, grid: list[Point]) -> list[Point]:
  """The learning-rate probe (the narrowest and the widest width, each at its smallest budget), the
  seed repeats and, for WSD, a cosine run of the same length (both at the middle budget's middle
  size), all trained straight."""
  sweep = config.sweep
  extra = []
  widths = [p.width for p in grid]
  # The widest width trained at two budgets or more: its cheapest point is far cheaper than the
  # one point of a width only the top budget reaches.
  widest = max((w for w in widths if widths.count(w) > 1), default=max(widths))
  for width in sorted({min(widths), widest}):
    point = min((p for p in grid if p.width == width), key=lambda p: p.budget)
    for m in (m for m in sweep.lr_probe if m != 1):  # 1 is the sweep's own run
      run = _run(config, width, point.config.steps, lr_multiplier=m)
      extra.append(dataclasses.replace(point, name=point.name + f'_lr{m:g}x', config=run,
                                       role='lr_probe', lr_multiplier=m))
  budgets = sorted({p.budget for p in grid})
  middle = [p for p in grid if p.budget == budgets[len(budgets) // 2]]
  point = middle[len(middle) // 2]
  for seed in range(config.seed + 1, config.seed + sweep.seeds):
    run = _run(config, point.width, point.config.steps, seed=seed)
    extra.append(dataclasses.replace(point, name=point.name + f'_seed{seed}', config=run,
                                     role='seed'))
  if sweep.compare_cosine and sweep.schedule == 'wsd':
    run = _run(config, point.width, point.config.steps)
    run.optim.schedule = 'cosine'
    extra.append(dataclasses.replace(point, name=point.name + '_cosine', config=run,
                                     role='cosine'))
  return extra


def plan(config: ml_collections.ConfigDict, max_tokens: float = math.inf) -> list[Point]:
  """Every run of the sweep but the verification run, in training order: the isoFLOP grid with
  its WSD branches, then the learning-rate probe, the seed repeats and the cosine control."""
  check(config)
  grid = isoflop_points(config, max_tokens)
  points = with_branches(grid) + extra_points(config, grid)
  names = [p.name for p in points]
  if len(set(names)) < len(names):
    twice = sorted({name for name in names if names.count(name) > 1})
    raise UserError(f'two runs of the sweep would be named {twice[0]}: sweep.budgets '
                    f'{sorted(config.sweep.budgets)} hold budgets that agree to 3 significant '
                    'digits; space them further apart')
  return points


def verification_budget(config: ml_collections.ConfigDict) -> float:
  return config.sweep.verify_factor * max(config.sweep.budgets)


def verification_widths(config: ml_collections.ConfigDict) -> range:
  """The widths a verification run may take: steps of sweep.head_dim up to 8× sweep.widths'."""
  return range(config.sweep.head_dim, 8 * max(config.sweep.widths) + 1, config.sweep.head_dim)


def run_model(config: ml_collections.ConfigDict, width: int) -> ml_collections.ConfigDict:
  """The model config of a width (without copying the rest of the config)."""
  model = copy.deepcopy(config.model)
  model.update(shape(config.sweep, width))
  return model


def verification_point(config: ml_collections.ConfigDict, params: float,
                       max_tokens: float = math.inf) -> Point:
  """The run at verification_budget whose size is nearest `params` (in log), among widths in
  steps of sweep.head_dim up to 8× the widest of sweep.widths; UserError if the corpus cannot feed
  it, naming the largest budget it can feed at that size."""
  budget = verification_budget(config)
  width = min(verification_widths(config),
              key=lambda w: abs(math.log(flops.param_count(run_model(config, w)) / params)))
  steps, per_step = _steps(config, width, budget)
  tokens = steps * config.batch_size * config.seq_len
  if tokens > max_tokens:
    largest = max_tokens / (config.batch_size * config.seq_len) * per_step
    raise UserError(
        f'the verification budget {budget:.3g} needs {tokens:,.0f} tokens at width {width} '
        f'({flops.param_count(run_model(config, width)):,} parameters, the nearest to '
        f'{params:,.0f}) but the corpus gives {max_tokens:,.0f} in data.num_epochs='
        f'{config.data.num_epochs} pass(es); at that size it feeds at most {largest:.3g} FLOPs: '
        'lower sweep.verify_factor or sweep.budgets, raise data.num_epochs, or pass a larger '
        'corpus')
  run = _run(config, width, steps)
  return Point(_name(budget, run, '_verify'), budget, run, per_step, role='verification')


# --- results ----------------------------------------------------------------------------------


def _read_csv(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _write_rows(path: str, columns: tuple, rows: list[dict]) -> None:
  with files.atomic_path(path) as tmp, open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows({k: row[k] for k in columns} for row in rows)


def _add_row(workdir: str, row: dict) -> None:
  """Puts `row` in DIR/runs.csv in place of an earlier row of the same run, and rewrites
  DIR/curves.csv from the isoFLOP rows: one curve per model size through the final losses of its
  points, the loss-against-compute curve approach 1 takes the envelope of. Both atomically: a
  killed sweep never leaves half a row, and a point finished twice is listed once."""
  runs_csv = os.path.join(workdir, 'runs.csv')
  rows = [r for r in _read_csv(runs_csv) if r['name'] != row['name']] + [row]
  curves = sorted(({**r, 'name': f'd{r["n_embd"]}_L{r["n_layer"]}'} for r in rows
                   if r['role'] == 'sweep'), key=lambda r: (int(r['n_embd']), float(r['tokens'])))
  _write_rows(os.path.join(workdir, 'curves.csv'), scaling.CURVE_COLUMNS, curves)
  _write_rows(runs_csv, RUN_COLUMNS, rows)  # last: its row is what marks the run finished


def _result_row(point: Point, run_dir: str, unique_tokens: int, wall_seconds: float) -> dict:
  run = point.config
  records = metrics.read_jsonl(os.path.join(run_dir, metrics.METRICS))
  final = records[-1]
  params = flops.param_count(run.model)
  tokens_per_step = run.batch_size * run.seq_len
  # Seconds inside train steps: each log interval's steps at the rate measured over them (the
  # trainer's rate leaves out compiling, evaluation and checkpoints).
  step_seconds, previous = 0.0, point.branch_step
  for r in records:
    if r['step'] > previous and r.get('tokens_per_sec'):
      step_seconds += (r['step'] - previous) * tokens_per_step / r['tokens_per_sec']
      previous = r['step']
  return dict(
      name=point.name, role=point.role, budget=point.budget, seed=run.seed,
      lr_multiplier=point.lr_multiplier, n_layer=run.model.n_layer, n_embd=run.model.n_embd,
      n_head=run.model.n_head, seq_len=run.seq_len, batch_size=run.batch_size, steps=run.steps,
      lr=run.optim.lr, params=params,
      params_nonembed=flops.param_count(run.model, embeddings=False),
      tokens=point.tokens, unique_tokens=unique_tokens,
      flops=point.flops_per_step * run.steps, flops_6nd=6 * params * point.tokens,
      model_flops=flops.flops_per_token(run.model, run.seq_len) * point.tokens,
      loss=final['val_loss'], train_loss=final['train_loss'], val_bpb=final['val_bpb'],
      trunk=point.trunk, branch_step=point.branch_step, wall_seconds=round(wall_seconds, 2),
      step_seconds=round(step_seconds, 2))


# XLA settings of a worker process: one thread for its ops, so that the sweep's workers share the
# cores between runs instead of each splitting the tiny matmuls of its own (the same values bit
# for bit: tests/test_sweep.py).
WORKER_XLA_FLAGS = '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'


def workers(setting: int) -> int:
  """How many runs train at once: `setting` (sweep.workers), or for 0 one per core on a CPU, where
  the sweep's models are too small to keep two cores busy, and 1 on an accelerator."""
  if setting:
    return setting
  return workers_lib.cores() if jax.default_backend() == 'cpu' else 1


def _train(config: ml_collections.ConfigDict, run_dir: str, prepared_dir: str,
           progress: bool = True) -> float:
  """Trains one run of the sweep, silently, on the prepared data in `prepared_dir`; returns its
  wall seconds. What each worker process runs, without its progress bar (progress=False): two
  runs' bars would write over each other on one terminal line."""
  began = time.perf_counter()
  with contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO()):
    trainer.train(config, run_dir, log=lambda _: None, prepared=data.Prepared.open(prepared_dir))
  return time.perf_counter() - began


@contextlib.contextmanager
def _pool(count: int):
  """`count` spawned worker processes (WORKER_XLA_FLAGS added to their XLA_FLAGS), or None for
  count 1: the runs train in this process."""
  if count <= 1:
    yield None
    return
  saved = os.environ.get('XLA_FLAGS')
  os.environ['XLA_FLAGS'] = f'{saved or ""} {WORKER_XLA_FLAGS}'.strip()  # inherited at spawn
  try:
    with concurrent.futures.ProcessPoolExecutor(
        count, mp_context=multiprocessing.get_context('spawn')) as pool:
      yield pool
  finally:
    if saved is None:
      del os.environ['XLA_FLAGS']
    else:
      os.environ['XLA_FLAGS'] = saved


class Runner:
  """Trains points into DIR/runs/<name>, `workers` at a time, and records them, skipping finished
  ones. A branch starts once its trunk has finished; the rows of DIR/runs.csv come in the order
  the runs finish."""

  def __init__(self, workdir: str, prepared, unique_tokens: int, log, workers: int = 1):
    self.workdir, self.prepared, self.unique_tokens, self.log = (workdir, prepared, unique_tokens,
                                                                 log)
    self.workers = workers
    self.finished = {row['name'] for row in _read_csv(os.path.join(workdir, 'runs.csv'))}

  def train(self, labelled: list[tuple[str, Point]]) -> None:
    """Trains the points (each with the label that names it in the log) not yet finished, each
    once its trunk is; a lone point in this process, on all its cores."""
    todo = [(label, point) for label, point in labelled if point.name not in self.finished]
    with _pool(min(self.workers, len(todo))) as pool:
      running = {}
      while todo or running:
        for index, point in list(todo):
          if pool is not None and len(running) >= self.workers:
            break
          if point.trunk and point.trunk not in self.finished:
            continue
          todo.remove((index, point))
          run_dir = self._start(point, index)
          if pool is None:
            self._record(point, run_dir, _train(point.config, run_dir, self.prepared.directory))
          else:
            running[pool.submit(_train, point.config, run_dir, self.prepared.directory,
                                progress=False)] = (point, run_dir)
        if running:
          done, _ = concurrent.futures.wait(running,
                                            return_when=concurrent.futures.FIRST_COMPLETED)
          for future in done:
            self._record(*running.pop(future), future.result())

  def _start(self, point: Point, index: str) -> str:
    run = point.config
    start = f', from {point.trunk} at step {point.branch_step}' if point.trunk else ''
    self.log(f'[{index}] {point.name} ({point.role}): N={flops.param_count(run.model):,} params, '
             f'D={point.tokens:,} tokens, C={point.flops_per_step * run.steps:.3g} FLOPs, '
             f'lr={run.optim.lr:.3g}{start}')
    run_dir = os.path.join(self.workdir, 'runs', point.name)
    if point.trunk:
      checkpoint.branch(os.path.join(self.workdir, 'runs', point.trunk), point.branch_step,
                        run_dir)
    return run_dir

  def _record(self, point: Point, run_dir: str, wall_seconds: float) -> None:
    row = _result_row(point, run_dir, self.unique_tokens, wall_seconds)
    if not math.isfinite(row['loss']):
      raise UserError(f'run {point.name} diverged (validation loss {row["loss"]}); lower '
                      f'sweep.lr, delete {run_dir} and run the sweep again')
    _add_row(self.workdir, row)
    self.finished.add(point.name)
    self.log(f'    {point.name}: val loss {row["loss"]:.4f} ({row["val_bpb"]:.3f} bits/byte) in '
             f'{row["wall_seconds"]:.0f}s')


def predict_verification(config: ml_collections.ConfigDict, workdir: str, unique_tokens: int,
                         log) -> Point:
  """The verification run, from DIR/prediction.json if an earlier pass wrote it; else fits the
  isoFLOP rows, picks the size nearest approach 3's N_opt and writes the prediction for exactly
  that run (its N and D, repeated data counted as Muennighoff's D'), before it is trained."""
  max_tokens = unique_tokens * config.data.num_epochs
  made = scaling.read_prediction(workdir)
  if made:
    if not math.isclose(made['budget'], verification_budget(config)):
      raise UserError(
          f'{workdir}/prediction.json predicts a run of {made["budget"]:.3g} FLOPs but this config '
          f'verifies at {verification_budget(config):.3g} (sweep.verify_factor × the top budget); '
          'restore the settings, or delete prediction.json to predict again')
    return verification_point(config, made['params'], max_tokens)
  fit = scaling.fit_sweep(scaling.read_csv(os.path.join(workdir, 'runs.csv')), samples=0)
  budget = verification_budget(config)
  point = verification_point(config, scaling.predict(fit, budget, samples=0)['params'],
                             max_tokens)
  prediction = scaling.predict(fit, budget, params=flops.param_count(point.config.model),
                               tokens=point.tokens, unique_tokens=unique_tokens)
  scaling.write_prediction(workdir, prediction)
  log(f'predicted before training it: {point.name} (N={prediction["params"]:,.0f}, '
      f'D={point.tokens:,}) will reach a validation loss of {prediction["loss"]:.4f} '
      f'({prediction["loss_interval"][0]:.4f} .. {prediction["loss_interval"][1]:.4f})')
  return point


def run_sweep(config: ml_collections.ConfigDict, workdir: str, log=print) -> dict:
  """Trains every run not yet in DIR/runs.csv, predicts and trains the verification run, then
  writes the scaling-law report."""
  plan(config)  # a bad sweep config fails before the corpus is read
  prepared = data.prepare(config.data, config.model.vocab_size, log=log)
  unique_tokens = prepared.manifest['splits']['train']['tokens']
  max_tokens = unique_tokens * config.data.num_epochs
  points = plan(config, max_tokens)
  widest = flops.param_count(run_model(config, max(verification_widths(config))))
  verification_point(config, widest, max_tokens)  # fails now where no size could be fed
  for point in points:
    trainer.validate_config(point.config)

  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, 'sweep_config.json'), config.to_dict())
  runner = Runner(workdir, prepared, unique_tokens, log, workers(config.sweep.workers))
  todo = sum(p.name not in runner.finished for p in points)
  log(f'sweep: {len(points)} runs over {len(set(config.sweep.budgets))} budgets '
      f'({len(points) - todo} already finished), then one verification run at '
      f'{verification_budget(config):.3g} FLOPs, in {workdir}; {runner.workers} at a time')
  start = time.perf_counter()
  labelled = [(f'{i + 1}/{len(points)}', point) for i, point in enumerate(points)]
  runner.train([(label, point) for label, point in labelled if point.role == 'sweep'])
  # The fits read the isoFLOP points alone, so the prediction is made now and the verification
  # run trains beside the controls (probe, seeds, cosine).
  verification = predict_verification(config, workdir, unique_tokens, log)
  runner.train([('verification', verification)] +
               [(label, point) for label, point in labelled if point.role != 'sweep'])
  report = scaling.write_report(workdir)
  log(summary_line(workdir, time.perf_counter() - start))
  log(f'report in {os.path.join(workdir, "scaling", "report.md")}')
  return report


def summary_line(workdir: str, seconds: float) -> str:
  """Wall time, compute, the share of time inside train steps and the MFU over all runs."""
  rows = _read_csv(os.path.join(workdir, 'runs.csv'))
  wall = sum(float(r['wall_seconds']) for r in rows)
  in_steps = sum(float(r['step_seconds']) for r in rows)
  # A branch's row counts the whole run's FLOPs; it trained only the steps after branch_step.
  trained = sum(float(r['model_flops']) * (1 - int(r['branch_step'] or 0) / int(r['steps']))
                for r in rows)
  peak = flops.device_peak_flops()
  return (f'sweep: {seconds / 60:.1f} min this pass; all runs: {wall / 60:.1f} min training, '
          f'{trained:.3g} FLOPs, {in_steps / max(wall, 1e-9):.0%} of the time inside train steps, '
          f'MFU {trained / max(wall, 1e-9) / peak:.1%} (over the runs\' wall time)')
