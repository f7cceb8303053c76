"""The one training loop, for every objective (gpt_jax.objectives).

The train step and eval step are pure functions of (state, batch), jitted once with the state
donated; everything host-side (data, logging, checkpoints) stays in the loop around them. A run
resumes automatically from the latest checkpoint in its workdir and then reproduces, bit for bit,
the metrics an uninterrupted run would have logged.

train() is cut along its seams: setup (config checks, mesh, the objective with its data) →
initial state (fresh, from config.init_from, or resumed) → loop → finish (plot, the objective's
samples or report).
"""

import math
import os
import signal
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from gpt_jax import checkpoint, cli, files, flops, metrics, model, objectives, optim, quant
from gpt_jax import runs, sharding
from gpt_jax.errors import UserError
from gpt_jax.objectives import Objective
from gpt_jax.state import TrainState, abstract_state, init_state


def make_update(objective: Objective, tx: optax.GradientTransformation, config):
  """(params, opt_state, batch, rng, step, frozen) -> (params, opt_state, metrics): one optimizer
  update on `batch`. With grad_accum = k the batch is split into k microbatches whose gradients
  are summed in a scan, so memory is that of B/k rows; the objective's weights come from the
  whole batch, so the sum is the whole batch's mean."""

  def loss_fn(params, batch, rng, step, weights, frozen):
    return objective.loss(params, batch, rng=rng, step=step, weights=weights, frozen=frozen)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def update(params, opt_state, batch, rng, step, frozen):
    weights = objective.weights(batch)
    if config.grad_accum == 1:
      (loss, terms), grads = grad_fn(params, batch, rng, step, weights, frozen)
    else:
      def microbatch(carry, xs):
        micro, i = xs
        out = grad_fn(params, micro, jax.random.fold_in(rng, i), step, weights, frozen)
        return jax.tree.map(jnp.add, carry, out), None

      # Microbatch i takes rows i, i + k, ...: every device's share of the batch feeds each one.
      split = lambda x: x.reshape(-1, config.grad_accum, *x.shape[1:]).swapaxes(0, 1)
      micro_batches = jax.tree.map(split, batch)
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
          grad_fn, params, jax.tree.map(lambda x: x[0], micro_batches), rng, step, weights,
          frozen))
      ((loss, terms), grads), _ = jax.lax.scan(
          microbatch, zeros, (micro_batches, jnp.arange(config.grad_accum)))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {
        **terms, 'loss': loss, 'grad_norm': optax.tree.norm(grads)}

  return update


def minibatches(experience: dict, rng, epochs: int, count: int) -> dict:
  """The rows of `experience` (arrays of B rows) in `epochs` passes, each a fresh permutation
  (by rng) cut into `count` minibatches: arrays of (epochs·count, B/count, ...)."""
  B = jax.tree.leaves(experience)[0].shape[0]
  order = jnp.concatenate([jax.random.permutation(jax.random.fold_in(rng, e), B)
                           for e in range(epochs)])
  return jax.tree.map(lambda x: x[order].reshape(epochs * count, B // count, *x.shape[1:]),
                      experience)


def make_train_step(objective: Objective, tx: optax.GradientTransformation, config):
  """(state, batch[, frozen]) -> (state, metrics). batch holds the arrays of
  objective.batch_spec(), B rows each: one update (make_update). An on-policy objective (PPO)
  first turns the batch into experience with the current parameters (objective.rollout), then
  makes objective.epochs passes of objective.minibatches updates over it; its metrics are the
  rollout's and the updates' means."""
  update = make_update(objective, tx, config)
  updates_per_step = objective.epochs * objective.minibatches
  lr_schedule = optim.schedule(config.optim, config.steps * updates_per_step)

  def train_step(state: TrainState, batch, frozen=None):
    rng = jax.random.fold_in(state.rng, state.step)
    if not objective.on_policy:
      params, opt_state, terms = update(state.params, state.opt_state, batch, rng, state.step,
                                        frozen)
    else:
      rollout_rng, order_rng, update_rng = jax.random.split(rng, 3)
      experience, rollout_terms = objective.rollout(state.params, batch, rng=rollout_rng,
                                                    frozen=frozen)

      def one_update(carry, xs):
        minibatch, u = xs
        params, opt_state, terms = update(*carry, minibatch, jax.random.fold_in(update_rng, u),
                                          state.step * updates_per_step + u, frozen)
        return (params, opt_state), terms

      (params, opt_state), terms = jax.lax.scan(
          one_update, (state.params, state.opt_state),
          (minibatches(experience, order_rng, objective.epochs, objective.minibatches),
           jnp.arange(updates_per_step)))
      terms = {**jax.tree.map(jnp.mean, terms), **rollout_terms}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {**terms, 'lr': lr_schedule(state.step * updates_per_step)}

  return train_step


def make_train_steps(objective: Objective, tx: optax.GradientTransformation, config, k: int):
  """(state, batches, count[, frozen]) -> (state, metrics): the first `count` (a traced int, at
  most k, config.steps_per_call in training) train steps (make_train_step) in one call, the i-th on
  batches[i] (the arrays of a batch stacked on a leading axis of k; rows from `count` on are
  never read); metrics stacked as (k, ...), rows from `count` on zero. One compiled loop of
  steps, as TPU training loops run them: the host dispatches, places data and reads metrics once
  per call instead of once per step, which is most of a step's time for the small models of a
  CPU sweep. The loop body is the step itself, so the states and metrics are those of k separate
  steps bit for bit (tests/test_train.py)."""
  train_step = make_train_step(objective, tx, config)

  def train_steps(state: TrainState, batches, count, frozen=None):
    one = lambda i: jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False),
                                 batches)
    shapes = jax.eval_shape(train_step, state, one(0), frozen)[1]
    metrics = jax.tree.map(lambda m: jnp.zeros((k, *m.shape), m.dtype), shapes)

    def body(i, carry):
      state, metrics = carry
      state, step_metrics = train_step(state, one(i), frozen)
      return state, jax.tree.map(lambda all_, m: all_.at[i].set(m), metrics, step_metrics)

    return jax.lax.fori_loop(0, count, body, (state, metrics))

  return train_steps


def make_eval_step(objective: Objective):
  """(state, batch[, frozen]) -> the objective's validation sums over the batch."""

  def eval_step(state: TrainState, batch, frozen=None):
    return objective.eval_sums(state.params, batch, frozen)

  return eval_step


def train_compiler_options() -> dict:
  """XLA options for compiling a train step. On XLA:CPU, YNNPACK fusion folds the LayerNorm scale
  and other elementwise work into the train step's matmuls and makes it slower (2-core Zen 3,
  4x256 GPT, 8192 tokens/step: 3.1 s -> 2.7 s per step with it off), while it speeds up decoding
  (~1.4x at batch 8), so it is turned off for train steps only."""
  if jax.default_backend() == 'cpu':
    return {'xla_cpu_experimental_ynn_fusion_type': ''}
  return {}


def batch_shardings(objective: Objective, mesh: jax.sharding.Mesh) -> dict:
  """Where each array of a batch lives: its logical axes (objective.batch_spec) by the rules."""
  return {name: sharding.logical_sharding(PartitionSpec(*axes), mesh)
          for name, (_, _, axes) in objective.batch_spec().items()}


def stacked_batch_shardings(objective: Objective, mesh: jax.sharding.Mesh) -> dict:
  """Where each array of k stacked batches (make_train_steps) lives: a batch's layout under a
  leading axis of steps, which no device splits."""
  return {name: sharding.logical_sharding(PartitionSpec(None, *axes), mesh)
          for name, (_, _, axes) in objective.batch_spec().items()}


def batch_shapes(objective: Objective, rows: int, mesh: jax.sharding.Mesh, steps: int = 0
                 ) -> dict:
  """The abstract batch of `rows` rows, laid out over the mesh; with steps > 0, that many batches
  stacked (make_train_steps)."""
  shardings = (stacked_batch_shardings if steps else batch_shardings)(objective, mesh)
  lead = (steps,) if steps else ()
  return {name: jax.ShapeDtypeStruct((*lead, rows, *shape), dtype, sharding=shardings[name])
          for name, (shape, dtype, _) in objective.batch_spec().items()}


def new_state(objective: Objective, tx, config) -> TrainState:
  return init_state(objective.init_params, tx, config.seed)


def training_optimizer(objective: Objective, config) -> optax.GradientTransformation:
  """The run's optimizer, its schedule over all the updates of config.steps steps (an on-policy
  objective makes epochs × minibatches updates a step)."""
  return optim.optimizer(config.optim, config.steps * objective.epochs * objective.minibatches,
                         objective.param_axes())


def fresh_state(objective: Objective, tx, config, abstract_train_state: TrainState) -> TrainState:
  """A new train state, created sharded where abstract_train_state lays it out."""
  return jax.jit(lambda: new_state(objective, tx, config),
                 out_shardings=jax.tree.map(lambda a: a.sharding, abstract_train_state))()


def abstract(objective: Objective, tx, config, mesh) -> TrainState:
  return abstract_state(objective.init_params, objective.param_axes(), tx, config.seed, mesh)


def compile_train_step(objective: Objective, tx, config, mesh: jax.sharding.Mesh,
                       abstract_train_state: TrainState, steps: int = 0):
  """The train step compiled for the mesh: state and batch laid out by the rules, metrics
  replicated, the state donated; with steps > 0, the train steps of make_train_steps for that
  many batches per call, what training runs (gpt_jax.bench times the single step)."""
  shardings = jax.tree.map(lambda a: a.sharding, abstract_train_state)
  frozen = () if objective.frozen is None else (objective.frozen,)
  step = make_train_steps(objective, tx, config, steps) if steps else make_train_step(
      objective, tx, config)
  count = (jax.ShapeDtypeStruct((), jnp.int32),) if steps else ()
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    return jax.jit(step, out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0
                   ).lower(abstract_train_state,
                           batch_shapes(objective, config.batch_size, mesh, steps), *count,
                           *frozen).compile(train_compiler_options())


def compile_steps(objective: Objective, tx, config, mesh: jax.sharding.Mesh,
                  abstract_train_state: TrainState, log):
  """The train steps (make_train_steps, config.steps_per_call of them per call) and the eval
  step, compiled for the mesh, after a check and a report of the memory each device needs: the
  trained parameters (their count too) and their optimizer state apart from the frozen ones
  (objective.frozen). The eval step takes batch_size // grad_accum rows."""
  shardings = jax.tree.map(lambda a: a.sharding, abstract_train_state)
  trained = sum(math.prod(p.shape) for p in jax.tree.leaves(abstract_train_state.params))
  trained_bytes = sharding.bytes_per_device(abstract_train_state.params, shardings.params)
  opt_bytes = sharding.bytes_per_device(abstract_train_state.opt_state, shardings.opt_state)
  frozen = () if objective.frozen is None else (objective.frozen,)
  frozen_bytes = sharding.bytes_per_device(
      objective.frozen, jax.tree.map(lambda p: p.sharding, objective.frozen)) if frozen else 0
  param_bytes = trained_bytes + frozen_bytes
  available = sharding.device_memory()
  mesh_text = ' × '.join(f'{axis} {size}' for axis, size in mesh.shape.items())
  if param_bytes + opt_bytes > available:
    raise UserError(f'parameters ({param_bytes / 2**30:.2f} GiB) and optimizer state '
                    f'({opt_bytes / 2**30:.2f} GiB) per device exceed its {available / 2**30:.1f} '
                    f'GiB on mesh {mesh_text}; shard more (--config.mesh.fsdp) or shrink the model')
  train_steps = compile_train_step(objective, tx, config, mesh, abstract_train_state,
                                   config.steps_per_call)
  eval_rows = config.batch_size // config.grad_accum
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    eval_step = jax.jit(make_eval_step(objective), out_shardings=sharding.replicated(mesh)
                        ).lower(abstract_train_state, batch_shapes(objective, eval_rows, mesh),
                                *frozen).compile()
  activations = train_steps.memory_analysis().temp_size_in_bytes
  frozen_text = f', frozen parameters {_size(frozen_bytes)}' if frozen else ''
  log(f'memory per device on mesh {mesh_text}: {trained:,} trained parameters '
      f'{_size(trained_bytes)} and their optimizer state {_size(opt_bytes)}{frozen_text}, '
      f'activations and temporaries {_size(activations)} (compiled), of '
      f'{available / 2**30:.1f} GiB')
  return train_steps, eval_step


def _size(n_bytes: int) -> str:
  """Bytes in KiB, MiB or GiB, whichever reads best (LoRA adapters are KiB, a base GiB)."""
  unit = next((u for u in (3, 2) if n_bytes >= 2**(10 * u)), 1)
  return f'{n_bytes / 2**(10 * unit):.1f} {("KiB", "MiB", "GiB")[unit - 1]}'


def evaluate(eval_step, state: TrainState, batches, objective: Objective) -> dict:
  """The objective's validation metrics over `batches` (on the devices)."""
  frozen = () if objective.frozen is None else (objective.frozen,)
  sums = [eval_step(state, batch, *frozen) for batch in batches]
  return objective.eval_metrics(jax.tree.map(lambda *s: sum(s), *sums))


def validate_config(config: ml_collections.ConfigDict) -> None:
  # fine-tuning takes its model from init_from (objectives.base.load_base)
  if config.objective == 'lm':
    model.validate(config.model, config.seq_len)
  optim.validate(config.optim)
  if quant.spec(config.model):  # only objectives.base.load_base copies a quantized base's setting
    raise UserError(f'model.quant.format={config.model.quant.format!r}: a quantized model is not '
                    'trained; it is made from a trained run by `python -m gpt_jax.quantize` and '
                    'fine-tuned only through LoRA adapters (--config.init_from=DIR '
                    '--config.lora.rank=r)')
  if config.init_from and os.path.exists(os.path.join(config.init_from, runs.CONFIG)):  # early
    objectives.check_trainable_base(config, runs.read_config(config.init_from, 'init_from').model)
  if not config.time_budget_s >= 0:
    raise UserError(f'time_budget_s={config.time_budget_s} must be >= 0 (0 = train `steps` '
                    'steps)')
  for key in ('steps', 'batch_size', 'grad_accum', 'steps_per_call', 'seq_len', 'log_every',
              'eval_every', 'checkpoint_every', 'keep_checkpoints'):
    if config[key] <= 0:
      raise UserError(f'{key}={config[key]} must be positive')
  if not config.sample.temperature >= 0 or config.sample.max_tokens <= 0:  # NaN fails too
    raise UserError(f'sample.temperature={config.sample.temperature} must be >= 0 (0 is greedy) '
                    f'and sample.max_tokens={config.sample.max_tokens} positive')
  if config.batch_size % (config.grad_accum * jax.process_count()):
    raise UserError(f'batch_size={config.batch_size} is not divisible by grad_accum='
                    f'{config.grad_accum} × {jax.process_count()} processes; change one of them')


class _Preemption:
  """Turns SIGTERM (a TPU preemption notice) into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


class Throughput:
  """Tokens per second over the steps since the last `rate()`, leaving out time spent outside
  them (compiling, evaluating, checkpointing): `resume()` restarts the clock after such work."""

  def __init__(self, tokens_per_step: int):
    self.tokens_per_step = tokens_per_step
    self.steps, self.seconds, self._start = 0, 0.0, None

  def resume(self) -> None:
    self._start = time.perf_counter()

  def step(self, count: int = 1) -> None:
    self.steps += count

  def pause(self) -> None:
    self.seconds += time.perf_counter() - self._start

  def rate(self) -> float:
    """Tokens/s since the last call; then starts a new interval."""
    rate = self.steps * self.tokens_per_step / max(self.seconds, 1e-9)
    self.steps, self.seconds = 0, 0.0
    return rate


def train(config: ml_collections.ConfigDict, workdir: str, log=print, prepared=None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the last logged metrics.

  `prepared` is config.data already prepared (data.Prepared), for callers that train many
  language models on one corpus. The run holds the workdir's lock (runs.WorkdirLock) from before
  it reads a checkpoint to the end.
  """
  validate_config(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_divisible(config, mesh)
  cli.use_compilation_cache()
  objective = objectives.build(config, mesh, log, prepared)
  train_ds = objective.train_dataset(config.batch_size // jax.process_count())
  if config.time_budget_s:
    config.steps = budget_steps(objective, config, mesh, train_ds, workdir, log)
  if config.steps > len(train_ds):
    raise UserError(
        f'steps={config.steps} needs {config.steps} batches but {config.data.num_epochs} epoch(s) '
        f'of the training split give {len(train_ds)} at batch_size={config.batch_size}, '
        f'seq_len={config.seq_len}; lower steps or raise data.num_epochs')
  flops_per_token = flops.flops_per_token(config.model, config.seq_len)
  step_flops = flops_per_token * config.batch_size * objective.row_tokens()
  log(f'model: {flops.param_count(config.model) / 1e6:.2f}M parameters '
      f'({flops.param_count(config.model, embeddings=False) / 1e6:.2f}M without embeddings), '
      f'{step_flops / 1e9:.1f} GFLOP per step; {len(train_ds)} batches available, training '
      f'{config.steps}')
  val_batches = objective.validation_batches()
  tx = training_optimizer(objective, config)
  abstract_train_state = abstract(objective, tx, config, mesh)

  with runs.hold_workdir(workdir, log):
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), config.keep_checkpoints,
                                   config.checkpoint_steps)
    try:
      state, data_iterator = initial_state(objective, tx, config, workdir, ckpts,
                                           abstract_train_state, mesh, train_ds, log)
      # Everything above only reads DIR (or moves an unreadable checkpoint aside); from here on
      # the run writes into it.
      objective.check_workdir(workdir)
      if jax.process_index() == 0:
        files.write_json(os.path.join(workdir, runs.CONFIG), config.to_dict())
        objective.tokenizer.save(os.path.join(workdir, objective.tokenizer.filename))
      state = train_loop(objective, tx, config, workdir, state, data_iterator, ckpts,
                         abstract_train_state, mesh, val_batches, flops_per_token, log)
    finally:
      ckpts.close()
  return finish(objective, config, workdir, state, log)


def budget_steps(objective: Objective, config, mesh, train_ds, workdir: str, log) -> int:
  """The number of steps that fill config.time_budget_s seconds of training on this machine, at
  the rate measure_step_seconds measures (compilation, evaluation and checkpoints are not
  counted), at most what the training split holds. A run resumed in `workdir` with the same
  budget keeps the steps it chose, so its schedule does not move."""
  if os.path.exists(os.path.join(workdir, runs.CONFIG)):
    saved = runs.read_config(workdir)
    if saved.time_budget_s == config.time_budget_s:
      log(f'time budget {config.time_budget_s:g} s: resuming with the {saved.steps} steps this '
          'run chose')
      return saved.steps
  seconds = measure_step_seconds(objective, config, mesh, train_ds)
  if jax.process_count() > 1:  # every process must train the same steps: process 0's rate
    seconds = float(multihost_utils.broadcast_one_to_all(np.float64(seconds)))
  steps = max(1, int(config.time_budget_s / seconds))
  log(f'time budget {config.time_budget_s:g} s: {1 / seconds:.2f} steps/s measured, so '
      f'{min(steps, len(train_ds))} steps' + (
          f' (the {len(train_ds)} batches of the training split; raise data.num_epochs for more)'
          if steps > len(train_ds) else ''))
  return min(steps, len(train_ds))


def measure_step_seconds(objective: Objective, config, mesh, train_ds, seconds: float = 3.0
                         ) -> float:
  """Wall seconds per train step of `config` here, data loading included: after a first call
  that compiles and warms up, calls of as many steps as training's first call runs
  (next_event) are timed until `seconds` have passed (at least three), and the median call
  counts, so that a moment when the machine was busy elsewhere does not. The steps train a fresh
  state that is then dropped, on batches from fresh passes over train_ds; the schedule is the
  one of config.steps, which changes no step's cost."""
  tx = training_optimizer(objective, config)
  abstract_train_state = abstract(objective, tx, config, mesh)
  train_steps = compile_train_step(objective, tx, config, mesh, abstract_train_state,
                                   config.steps_per_call)
  state = fresh_state(objective, tx, config, abstract_train_state)
  frozen = () if objective.frozen is None else (objective.frozen,)
  data_iterator = _passes(train_ds)  # a small split may end before the time does: start again
  stacked = stacked_batch_shardings(objective, mesh)
  count = min(config.steps_per_call, next_event(0, config))
  state, _ = train_steps(state, next_batches(data_iterator, 1, config.steps_per_call, stacked),
                         np.int32(1), *frozen)
  jax.block_until_ready(state)
  times, start = [], time.perf_counter()
  while len(times) < 3 or time.perf_counter() - start < seconds:
    call_start = time.perf_counter()
    state, _ = train_steps(state, next_batches(data_iterator, count, config.steps_per_call,
                                               stacked), np.int32(count), *frozen)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - call_start)
  return statistics.median(times) / count


def _passes(train_ds):
  """The batches of train_ds, pass after pass."""
  while True:
    yield from train_ds.to_iter_dataset()


def next_batches(data_iterator, count: int, per_call: int, stacked: dict) -> dict:
  """The next `count` batches of this process's data_iterator, stacked and padded with zeros to
  per_call rows (make_train_steps), laid out by `stacked` (stacked_batch_shardings)."""
  rows = [next(data_iterator) for _ in range(count)]
  return {name: jax.make_array_from_process_local_data(stacked[name], np.stack(
      [row[name] for row in rows] + [np.zeros_like(rows[0][name])] * (per_call - count)))
          for name in rows[0]}


def initial_state(objective: Objective, tx, config, workdir: str, ckpts: checkpoint.Checkpoints,
                  abstract_train_state: TrainState, mesh, train_ds, log
                  ) -> tuple[TrainState, object]:
  """(state, data iterator) to start from: the newest readable checkpoint in `workdir` with the
  data position it was saved at, else a fresh state (from config.init_from's parameters if set).
  UserError if the workdir holds another run: imported weights, a model of another shape, or a
  config whose trajectory settings changed (unless config.allow_config_changes)."""
  data_iterator = iter(train_ds.to_iter_dataset())
  newest = ckpts.latest_step()
  if newest is None:
    state = fresh_state(objective, tx, config, abstract_train_state)
    params = objective.start_from(state.params, mesh, log)
    if params is not state.params:
      state = state.replace(params=params)
      log(f'starting from the parameters of {config.init_from}')
    return state, data_iterator
  if ckpts.holds_params_only(newest):
    raise UserError(f'{workdir} holds imported weights, not a training run to resume; fine-tune '
                    f'them with --config.init_from={workdir} and a new --workdir')
  if os.path.exists(os.path.join(workdir, runs.CONFIG)):
    changes = runs.config_changes(runs.read_config(workdir).to_dict(), config)
    if changes and not config.allow_config_changes:
      raise UserError(f'{workdir} holds a run trained with other settings ({"; ".join(changes)}); '
                      'resuming would silently change its course: run it with its own settings, '
                      'pass --config.allow_config_changes=True to resume with these, or use a new '
                      '--workdir')
    if changes:
      log(f'resuming with changed settings (config.allow_config_changes): {"; ".join(changes)}')
  step, state = ckpts.restore_newest(abstract_train_state, data_iterator, log)
  log(f'resuming from step {step} in {workdir}')
  return state, data_iterator


def stop_if_diverged(unchecked: list, config, saved_step: int | None) -> None:
  """UserError at the first step of the (first step, count, stacked metrics) calls whose loss or
  gradient norm is not finite: the run stops before such a state can be saved, so the last
  checkpoint stays good."""
  values = jax.device_get([(m['loss'], m['grad_norm']) for _, _, m in unchecked])
  for (first, count, _), (losses, grad_norms) in zip(unchecked, values):
    for i in range(count):
      for name, value in (('loss', losses[i]), ('gradient norm', grad_norms[i])):
        if not math.isfinite(value):
          o = config.optim
          kept = (f'the last checkpoint, step {saved_step}, is the last good state'
                  if saved_step is not None else 'nothing was saved')
          raise UserError(
              f'training diverged: the {name} is {float(value)} at step {first + i}; stopped '
              f'without saving it ({kept}). Lower --config.optim.lr (now {o.lr}), keep gradient '
              f'clipping on (--config.optim.grad_clip, now {o.grad_clip}) or warm up longer '
              f'(--config.optim.warmup_steps, now {o.warmup_steps}), then rerun with '
              '--config.allow_config_changes=True to resume, or use a new --workdir')


def next_event(step: int, config) -> int:
  """The first step after `step` at which the loop must stop to log, evaluate, checkpoint or end:
  where a call of train steps (make_train_steps) ends at the latest."""
  events = [config.steps] + [step - step % every + every for every in
                             (config.log_every, config.eval_every, config.checkpoint_every)]
  return min(events + [s for s in config.checkpoint_steps if s > step])


def train_loop(objective: Objective, tx, config, workdir: str, state: TrainState, data_iterator,
               ckpts: checkpoint.Checkpoints, abstract_train_state: TrainState, mesh, val_batches,
               flops_per_token: float, log) -> TrainState:
  """Trains from state.step to config.steps, logging, evaluating and checkpointing as configured;
  returns the final state. The steps run config.steps_per_call at a time (make_train_steps),
  each call ending where the next step to log, evaluate or save is."""
  is_main = jax.process_index() == 0
  start = int(state.step)
  saved_step = start if start else None
  metrics_log = metrics.MetricsLog(workdir, resume_step=start) if is_main else None
  peak = flops.device_peak_flops() * jax.device_count()
  throughput = Throughput(config.batch_size * objective.row_tokens())

  per_call = config.steps_per_call
  shardings, stacked = batch_shardings(objective, mesh), stacked_batch_shardings(objective, mesh)
  to_global = lambda rows: {name: jax.make_array_from_process_local_data(shardings[name], x)
                            for name, x in rows.items()}

  train_steps, eval_step = compile_steps(objective, tx, config, mesh, abstract_train_state, log)
  val_batches = [to_global(batch) for batch in val_batches]  # on the devices once, for every eval
  frozen = () if objective.frozen is None else (objective.frozen,)
  preemption = _Preemption()
  unchecked = []  # (first step, count, metrics) not yet checked for divergence, on the device
  bar = tqdm.tqdm(total=config.steps, initial=start, disable=not is_main, dynamic_ncols=True)
  try:
    step = start
    while step < config.steps:
      count = min(per_call, next_event(step, config) - step)
      state, steps_metrics = train_steps(state, next_batches(data_iterator, count, per_call,
                                                             stacked), np.int32(count), *frozen)
      unchecked.append((step + 1, count, steps_metrics))
      first_call = step == start
      step += count
      bar.update(count)
      if first_call:  # the first call's time is mostly compiling: not counted
        jax.block_until_ready(state)
        throughput.resume()
      else:
        throughput.step(count)
      last = step == config.steps
      stop = preemption.requested  # read once: SIGTERM may arrive at any moment
      logs = step % config.log_every == 0 or step % config.eval_every == 0 or last
      saves = (step % config.checkpoint_every == 0 or step in config.checkpoint_steps or last
               or stop)
      if logs or saves:
        stop_if_diverged(unchecked, config, saved_step)
        unchecked = []
      if logs:
        step_metrics = jax.device_get(jax.tree.map(lambda m: m[count - 1], steps_metrics))
        throughput.pause()
        record = {'step': step, **{k: float(v) for k, v in step_metrics.items()}}
        if throughput.steps:  # none yet while the first call (mostly compiling) is all there was
          tokens_per_sec = throughput.rate()
          record.update(tokens_per_sec=tokens_per_sec, mfu=tokens_per_sec * flops_per_token / peak)
        if step % config.eval_every == 0 or last:
          record.update(evaluate(eval_step, state, val_batches, objective))
        if metrics_log:
          metrics_log.write(record)
        bar.set_postfix({k: f'{record[k]:.4g}' for k in ('train_loss', 'val_loss') if k in record})
      if saves:
        if not logs:
          throughput.pause()
        ckpts.save(step, state, data_iterator, force=True)
        saved_step = step
      if logs or saves:
        throughput.resume()
      if stop:
        ckpts.wait()
        raise SystemExit(f'stopped by SIGTERM: saved a checkpoint at step {step} in {workdir}; '
                         'run the same command again to resume')
    ckpts.wait()
  finally:
    bar.close()
    preemption.restore()
    if metrics_log:
      metrics_log.close()
  return state


def finish(objective: Objective, config, workdir: str, state: TrainState, log) -> dict:
  """On process 0: the loss plot and the objective's own finish (samples, a report). Returns the
  last logged metrics (also for a run that had already finished)."""
  if jax.process_index() != 0:
    return {}
  records = metrics.read_jsonl(os.path.join(workdir, metrics.METRICS))
  metrics.plot_losses(records, os.path.join(workdir, 'loss.png'),
                      title=os.path.basename(os.path.abspath(workdir)))
  objective.finish(state.params, workdir, log)
  return records[-1] if records else {}
