"""Pretraining on next-token loss: `python -m gpt_jax.train --config=FILE [--config.x.y=v] --workdir=DIR`.

The train step and eval step are pure functions of (state, batch), jitted once with the state
donated; everything host-side (data, logging, checkpoints) stays in the loop around them. A run
resumes automatically from the latest checkpoint in DIR and then reproduces, bit for bit, the
metrics an uninterrupted run would have logged.
"""

import functools
import math
import os
import signal
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from gpt_jax import (checkpoint, cli, data, distill, files, flops, losses, metrics, model, optim,
                     runs, sample, sharding)
from gpt_jax.state import TrainState, abstract_state, init_state
from gpt_jax.errors import UserError


def distill_alpha(distill: ml_collections.ConfigDict, steps: int):
  """step -> α: constant, or linear from distill.alpha to distill.alpha_final at the last step."""
  if distill.alpha_final < 0:
    return lambda step: distill.alpha
  return optax.linear_schedule(distill.alpha, distill.alpha_final, max(steps - 1, 1))


def make_train_step(gpt: model.GPT, tx: optax.GradientTransformation, config,
                    teacher: model.GPT | None = None, num_tokens: int | None = None):
  """(state, batch[, teacher_params]) -> (state, metrics). batch['tokens'] is (B, L+1);
  batch['mask'] (B, L) is optional and zeroes targets that must not count. With grad_accum = k
  the batch is split into k microbatches whose gradients are summed in a scan, so memory is that
  of B/k rows. With a teacher, the loss is the distillation loss against its logits. The softmax
  is over the tokenizer's `num_tokens` ids (None: the whole model vocabulary)."""
  lr_schedule = optim.schedule(config.optim, config.steps)
  alpha_schedule = distill_alpha(config.distill, config.steps)

  def loss_fn(params, tokens_BL1, mask_BL, rng, normalizer, step, teacher_params):
    if teacher is None:
      # The head and the loss fused: the (B, L, V) logits are never materialised.
      x_ND = gpt.apply({'params': params}, tokens_BL1[:, :-1], deterministic=False, hidden=True,
                       rngs={'dropout': rng})
      return losses.head_next_token_loss(x_ND, model.head_weight(params, config.model),
                                         tokens_BL1[:, 1:], mask_BL, z_loss=config.loss.z_loss,
                                         normalizer=normalizer, num_tokens=num_tokens)
    logits_BLV = gpt.apply({'params': params}, tokens_BL1[:, :-1], deterministic=False,
                           rngs={'dropout': rng})
    teacher_BLV = teacher.apply({'params': teacher_params}, tokens_BL1[:, :-1])
    d = config.distill
    return losses.distillation_loss(logits_BLV, teacher_BLV, tokens_BL1[:, 1:], mask_BL,
                                    alpha=alpha_schedule(step), temperature=d.temperature,
                                    reverse=d.reverse, top_k=d.top_k, normalizer=normalizer,
                                    num_tokens=num_tokens)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch, teacher_params=None):
    tokens_BL1 = batch['tokens']
    mask_BL = batch.get('mask', jnp.ones(tokens_BL1[:, 1:].shape, jnp.float32))
    normalizer = jnp.maximum(mask_BL.sum(), 1.0)
    rng = jax.random.fold_in(state.rng, state.step)
    args = (normalizer, state.step, teacher_params)
    if config.grad_accum == 1:
      (loss, terms), grads = grad_fn(state.params, tokens_BL1, mask_BL, rng, *args)
    else:
      def microbatch(carry, xs):
        tokens, mask, i = xs
        out, grads = grad_fn(state.params, tokens, mask, jax.random.fold_in(rng, i), *args)
        return jax.tree.map(jnp.add, carry, (out, grads)), None

      # Microbatch i takes rows i, i + k, ...: every device's share of the batch feeds each one.
      split = lambda x: x.reshape(-1, config.grad_accum, *x.shape[1:]).swapaxes(0, 1)
      zeros = jax.tree.map(jnp.zeros_like,
                           jax.eval_shape(grad_fn, state.params, split(tokens_BL1)[0],
                                          split(mask_BL)[0], rng, *args))
      ((loss, terms), grads), _ = jax.lax.scan(
          microbatch, zeros, (split(tokens_BL1), split(mask_BL), jnp.arange(config.grad_accum)))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
    # train_loss is always the next-token cross-entropy; a distilled run also logs kl.
    return new_state, {'train_loss': terms['ce'], **{k: v for k, v in terms.items() if k != 'ce'},
                       'loss': loss, 'grad_norm': optax.tree.norm(grads),
                       'lr': lr_schedule(state.step)}

  return train_step


def make_eval_step(gpt: model.GPT, num_tokens: int | None = None):
  """(state, tokens_BL1) -> summed next-token loss (over the first num_tokens ids) and the number
  of targets."""

  def eval_step(state: TrainState, tokens_BL1):
    logits_BLV = gpt.apply({'params': state.params}, tokens_BL1[:, :-1])
    mask_BL = jnp.ones(tokens_BL1[:, 1:].shape, jnp.float32)
    loss_sum, _ = losses.next_token_loss(logits_BLV, tokens_BL1[:, 1:], mask_BL, normalizer=1.0,
                                         num_tokens=num_tokens)
    return {'loss_sum': loss_sum, 'targets': mask_BL.sum()}

  return eval_step


def train_compiler_options() -> dict:
  """XLA options for compiling a train step. On XLA:CPU, YNNPACK fusion folds the LayerNorm scale
  and other elementwise work into the train step's matmuls and makes it slower (2-core Zen 3,
  4x256 GPT, 8192 tokens/step: 3.1 s -> 2.7 s per step with it off), while it speeds up decoding
  (~1.4x at batch 8), so it is turned off for train steps only."""
  if jax.default_backend() == 'cpu':
    return {'xla_cpu_experimental_ynn_fusion_type': ''}
  return {}


def compile_steps(gpt, tx, config, mesh: jax.sharding.Mesh, abstract: TrainState, log,
                  teacher: distill.Teacher | None = None, num_tokens: int | None = None):
  """The train and eval steps, compiled for the mesh (state and batch laid out by the rules,
  metrics replicated, the state donated), after a report of the memory each device needs. With a
  teacher, the train step takes its parameters as a third argument. Both score the first
  num_tokens ids of the vocabulary (the tokenizer's)."""
  replicated = sharding.replicated(mesh)
  shardings = jax.tree.map(lambda a: a.sharding, abstract)
  batch = {'tokens': jax.ShapeDtypeStruct((config.batch_size, config.seq_len + 1), jnp.int32,
                                          sharding=sharding.batch_sharding(mesh))}
  eval_tokens = jax.ShapeDtypeStruct((config.batch_size // config.grad_accum, config.seq_len + 1),
                                     jnp.int32, sharding=sharding.batch_sharding(mesh))
  param_bytes = sharding.bytes_per_device(abstract.params, shardings.params)
  opt_bytes = sharding.bytes_per_device(abstract.opt_state, shardings.opt_state)
  teacher_args = (teacher.params,) if teacher else ()
  if teacher:
    param_bytes += sharding.bytes_per_device(teacher.params,
                                             jax.tree.map(lambda p: p.sharding, teacher.params))
  available = sharding.device_memory()
  mesh_text = ' × '.join(f'{axis} {size}' for axis, size in mesh.shape.items())
  if param_bytes + opt_bytes > available:
    raise UserError(f'parameters ({param_bytes / 2**30:.2f} GiB) and optimizer state '
                    f'({opt_bytes / 2**30:.2f} GiB) per device exceed its {available / 2**30:.1f} '
                    f'GiB on mesh {mesh_text}; shard more (--config.mesh.fsdp) or shrink the model')
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    train_step = jax.jit(make_train_step(gpt, tx, config, teacher and teacher.gpt, num_tokens),
                         out_shardings=(shardings, replicated), donate_argnums=0
                         ).lower(abstract, batch, *teacher_args).compile(train_compiler_options())
    eval_step = jax.jit(make_eval_step(gpt, num_tokens), out_shardings=replicated
                        ).lower(abstract, eval_tokens).compile()
  activations = train_step.memory_analysis().temp_size_in_bytes
  log(f'memory per device on mesh {mesh_text}: parameters {param_bytes / 2**20:.1f} MiB'
      f'{" (with the teacher)" if teacher else ""}, '
      f'optimizer state {opt_bytes / 2**20:.1f} MiB, activations and temporaries '
      f'{activations / 2**20:.1f} MiB (compiled), of {available / 2**30:.1f} GiB')
  return train_step, eval_step


def evaluate(eval_step, state: TrainState, batches, bytes_per_token: float) -> dict:
  """Validation loss (nats/token), perplexity and bits per byte over `batches`."""
  totals = [eval_step(state, batch) for batch in batches]
  loss = float(sum(t['loss_sum'] for t in totals) / sum(t['targets'] for t in totals))
  return {'val_loss': loss, 'val_ppl': math.exp(min(loss, 700.0)),
          'val_bpb': loss / (math.log(2) * bytes_per_token)}


def validate_config(config: ml_collections.ConfigDict) -> None:
  model.validate(config.model, config.seq_len)
  for key in ('steps', 'batch_size', 'grad_accum', 'seq_len', 'log_every', 'eval_every',
              'checkpoint_every', 'keep_checkpoints'):
    if config[key] <= 0:
      raise UserError(f'{key}={config[key]} must be positive')
  if not config.sample.temperature >= 0 or config.sample.max_tokens <= 0:  # NaN fails too
    raise UserError(f'sample.temperature={config.sample.temperature} must be >= 0 (0 is greedy) '
                    f'and sample.max_tokens={config.sample.max_tokens} positive')
  d = config.distill
  # At T = 0.01 the softened distributions are all but one-hot already; towards 0, logits / T
  # overflows float32 and the loss is NaN.
  if not (0 <= d.alpha <= 1 and d.alpha_final <= 1 and d.temperature >= 0.01 and
          0 <= d.top_k <= config.model.vocab_size):
    raise UserError(f'distill.alpha={d.alpha} (and alpha_final={d.alpha_final}, if >= 0) must be '
                    f'in [0, 1], temperature={d.temperature} at least 0.01 and top_k={d.top_k} in '
                    f'[0, vocab_size]; fix --config.distill')
  if d.reverse and d.top_k:
    raise UserError('reverse KL needs the whole teacher distribution; set distill.top_k=0 or '
                    'distill.reverse=False')
  if config.batch_size % (config.grad_accum * jax.process_count()):
    raise UserError(f'batch_size={config.batch_size} is not divisible by grad_accum='
                    f'{config.grad_accum} × {jax.process_count()} processes; change one of them')


def use_compilation_cache() -> None:
  """Keeps compiled XLA programs on disk (unless the user chose a place already), so a rerun, a
  resumed run or a sweep's repeated shapes skip most of the compile time."""
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.join(files.cache_root(), 'jax'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


class _Preemption:
  """Turns SIGTERM (a TPU preemption notice) into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def train(config: ml_collections.ConfigDict, workdir: str, log=print,
          prepared: data.Prepared | None = None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the last logged metrics.

  `prepared` is config.data already prepared, for callers that train many models on one corpus.
  The run holds the workdir's lock (runs.WorkdirLock) from before it reads a checkpoint to the end.
  """
  validate_config(config)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_divisible(config, mesh)
  use_compilation_cache()
  prepared = prepared or data.prepare(config.data, config.model.vocab_size, log=log)
  process_batch = config.batch_size // jax.process_count()
  train_ds = data.train_dataset(prepared, seq_len=config.seq_len, batch_size=process_batch,
                                seed=config.seed, num_epochs=config.data.num_epochs,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
  if config.steps > len(train_ds):
    raise UserError(
        f'steps={config.steps} needs {config.steps} batches but {config.data.num_epochs} epoch(s) '
        f'of the training split give {len(train_ds)} at batch_size={config.batch_size}, '
        f'seq_len={config.seq_len}; lower steps or raise data.num_epochs')
  step_tokens = config.batch_size * config.seq_len
  step_flops = flops.flops_per_token(config.model, config.seq_len) * step_tokens
  log(f'model: {flops.param_count(config.model) / 1e6:.2f}M parameters '
      f'({flops.param_count(config.model, embeddings=False) / 1e6:.2f}M without embeddings), '
      f'{step_flops / 1e9:.1f} GFLOP per step; {len(train_ds)} batches available, training '
      f'{config.steps}')
  val_batches = validation_batches(prepared, config)
  check_sample_room(prepared.tokenizer, config)
  teacher = distill.load_teacher(config, prepared.tokenizer, mesh) if config.distill.teacher else None
  gpt = model.build(config.model)
  tx = optim.optimizer(config.optim, config.steps)
  abstract = abstract_state(gpt, tx, config, mesh)

  with runs.hold_workdir(workdir, log):
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), config.keep_checkpoints)
    try:
      state, data_iterator = initial_state(config, workdir, ckpts, gpt, tx, abstract, mesh,
                                           prepared.tokenizer, train_ds, log)
      # Everything above only reads DIR (or moves an unreadable checkpoint aside); from here on
      # the run writes into it.
      if jax.process_index() == 0:
        files.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
        prepared.tokenizer.save(os.path.join(workdir, prepared.tokenizer.filename))
      record = train_loop(config, workdir, state, data_iterator, ckpts, gpt, tx, abstract, mesh,
                          val_batches, prepared, teacher, log)
    finally:
      ckpts.close()
  return record


def validation_batches(prepared: data.Prepared, config) -> list:
  """This process's rows of the validation microbatches: the first config.eval_batches batches of
  batch_size rows of the val split, each cut into grad_accum microbatches (the shape the eval
  step is compiled for), so the same tokens are scored whatever the microbatching. Every process
  reads the same batches and takes its own rows of each."""
  rows = config.batch_size // config.grad_accum // jax.process_count()
  first = jax.process_index() * rows
  return [microbatch[first:first + rows]
          for batch in data.eval_batches(prepared, 'val', seq_len=config.seq_len,
                                         batch_size=config.batch_size,
                                         max_batches=config.eval_batches)
          for microbatch in np.split(batch, config.grad_accum)]


def initial_state(config, workdir: str, ckpts: checkpoint.Checkpoints, gpt, tx, abstract, mesh,
                  tokenizer, train_ds, log) -> tuple[TrainState, object]:
  """(state, data iterator) to start from: the newest readable checkpoint in `workdir` with the
  data position it was saved at, else a fresh state (from config.init_from's parameters if set).
  UserError if the workdir holds another run: imported weights, a model of another shape, or a
  config whose trajectory settings changed (unless config.allow_config_changes)."""
  data_iterator = iter(train_ds.to_iter_dataset())
  newest = ckpts.latest_step()
  if newest is None:
    state = jax.jit(functools.partial(init_state, gpt, tx, config),  # created sharded
                    out_shardings=jax.tree.map(lambda a: a.sharding, abstract))()
    if config.init_from:
      init_from = runs.load(config.init_from, mesh=mesh, dtype=config.model.dtype,
                            what='init_from', log=log)
      runs.check_compatible(init_from, config.init_from, 'init_from', config, tokenizer)
      checkpoint.check_same_shapes(init_from.params, abstract.params,
                                   f'init_from={config.init_from!r}')
      state = state.replace(params=init_from.params)
      log(f'starting from the parameters of {config.init_from} (step {init_from.step})')
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
  step, state = ckpts.restore_newest(abstract, data_iterator, log)
  log(f'resuming from step {step} in {workdir}')
  return state, data_iterator


def stop_if_diverged(unchecked: list, config, saved_step: int | None) -> None:
  """UserError at the first of the (step, metrics) pairs whose loss or gradient norm is not
  finite: the run stops before such a state can be saved, so the last checkpoint stays good."""
  values = jax.device_get([(m['loss'], m['grad_norm']) for _, m in unchecked])
  for (step, _), (loss, grad_norm) in zip(unchecked, values):
    for name, value in (('loss', loss), ('gradient norm', grad_norm)):
      if not math.isfinite(value):
        o = config.optim
        kept = (f'the last checkpoint, step {saved_step}, is the last good state'
                if saved_step is not None else 'nothing was saved')
        raise UserError(
            f'training diverged: the {name} is {float(value)} at step {step}; stopped without '
            f'saving it ({kept}). Lower --config.optim.lr (now {o.lr}), keep gradient clipping on '
            f'(--config.optim.grad_clip, now {o.grad_clip}) or warm up longer '
            f'(--config.optim.warmup_steps, now {o.warmup_steps}), then rerun with '
            '--config.allow_config_changes=True to resume, or use a new --workdir')


def train_loop(config, workdir: str, state: TrainState, data_iterator,
               ckpts: checkpoint.Checkpoints, gpt, tx, abstract, mesh, val_batches, prepared,
               teacher, log) -> dict:
  """Trains from state.step to config.steps, logging, evaluating and checkpointing as configured,
  then plots the losses and prints samples; returns the last logged metrics."""
  is_main = jax.process_index() == 0
  start = int(state.step)
  saved_step = start if start else None
  metrics_log = metrics.MetricsLog(workdir, resume_step=start) if is_main else None
  tokens_per_step = config.batch_size * config.seq_len
  flops_per_token = flops.flops_per_token(config.model, config.seq_len)
  peak = flops.device_peak_flops() * jax.device_count()

  batch_sharding = sharding.batch_sharding(mesh)
  to_global = lambda rows: jax.make_array_from_process_local_data(batch_sharding, rows)
  num_tokens = prepared.tokenizer.vocab_size
  train_step, eval_step = compile_steps(gpt, tx, config, mesh, abstract, log, teacher, num_tokens)
  val_batches = [to_global(batch) for batch in val_batches]  # on the devices once, for every eval
  teacher_args = (teacher.params,) if teacher else ()
  bytes_per_token = prepared.bytes_per_token('val')
  preemption = _Preemption()
  record = {}
  unchecked = []  # (step, metrics) not yet checked for divergence, left on the device till then
  bar = tqdm.tqdm(total=config.steps, initial=start, disable=not is_main, dynamic_ncols=True)
  try:
    # Throughput is measured over the steps of each log interval, leaving out the time spent
    # compiling, evaluating and checkpointing between intervals.
    interval_start, interval_steps = time.perf_counter(), 0
    for step in range(start + 1, config.steps + 1):
      state, step_metrics = train_step(state, {'tokens': to_global(next(data_iterator))},
                                       *teacher_args)
      unchecked.append((step, step_metrics))
      bar.update()
      if step == start + 1:
        jax.block_until_ready(state)
        interval_start = time.perf_counter()
      else:
        interval_steps += 1
      last = step == config.steps
      stop = preemption.requested  # read once: SIGTERM may arrive at any moment
      logs = step % config.log_every == 0 or step % config.eval_every == 0 or last
      saves = step % config.checkpoint_every == 0 or last or stop
      if logs or saves:
        stop_if_diverged(unchecked, config, saved_step)
        unchecked = []
      if logs:
        step_metrics = jax.device_get(step_metrics)
        seconds = time.perf_counter() - interval_start
        tokens_per_sec = interval_steps * tokens_per_step / max(seconds, 1e-9)
        record = {'step': step, **{k: float(v) for k, v in step_metrics.items()},
                  'tokens_per_sec': tokens_per_sec, 'mfu': tokens_per_sec * flops_per_token / peak}
        if step % config.eval_every == 0 or last:
          record.update(evaluate(eval_step, state, val_batches, bytes_per_token))
        if metrics_log:
          metrics_log.write(record)
        bar.set_postfix({k: f'{record[k]:.4g}' for k in ('train_loss', 'val_loss') if k in record})
        interval_steps = 0
      if saves:
        ckpts.save(step, state, data_iterator, force=True)
        saved_step = step
      if interval_steps == 0:
        interval_start = time.perf_counter()
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

  if is_main:
    records = metrics.read_jsonl(metrics_log.path)
    record = records[-1] if records else record  # also for a run that had already finished
    metrics.plot_losses(records, os.path.join(workdir, 'loss.png'),
                        title=os.path.basename(os.path.abspath(workdir)))
    if config.sample.num > 0:
      texts = sample_texts(gpt, state.params, prepared.tokenizer, config)
      for i, text in enumerate(texts):
        log(f'--- sample {i + 1} ---\n{text}')
  return record


def check_sample_room(tokenizer, config) -> None:
  """UserError, before training, if config.sample.prompt leaves no room in the model's context."""
  prompt_tokens = 1 + len(tokenizer.encode(config.sample.prompt))  # after EOS, as a document
  context = sample.context_length(config.model)
  if config.sample.num > 0 and prompt_tokens >= context:
    raise UserError(f'sample.prompt is {prompt_tokens} tokens, no room left in the {context}-token '
                    'context; shorten the prompt')


def sample_texts(gpt, params, tokenizer, config) -> list[str]:
  """config.sample.num continuations of config.sample.prompt, with the KV-cache sampler."""
  prompt_tokens = 1 + len(tokenizer.encode(config.sample.prompt))
  max_new_tokens = min(config.sample.max_tokens, sample.context_length(config.model) - prompt_tokens)
  return sample.complete(gpt, params, tokenizer, [config.sample.prompt],
                         max_new_tokens=max_new_tokens, num_samples=config.sample.num,
                         temperature=config.sample.temperature, seed=config.seed)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """A config with a `sweep` section runs the whole sweep, one with a `study` section the
  distillation study; any other trains one model."""
  if 'sweep' in config:
    from gpt_jax import sweep  # imported here: the sweep module itself builds on this one
    return sweep.run_sweep(config, workdir)
  if 'study' in config:
    from gpt_jax import distill_study  # likewise
    return distill_study.run_study(config, workdir)
  return train(config, workdir)


def main(argv=None) -> None:
  cli.run(lambda: run(*cli.parse_train_args(sys.argv if argv is None else argv)))


if __name__ == '__main__':
  main()
