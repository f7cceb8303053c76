"""Checkpoints of a run: the train state and the data iterator, saved together by orbax.

Saves are asynchronous (training continues while arrays are written) and atomic (orbax writes a
temporary directory, puts its commit marker in it last and renames it), so a run killed at any
moment resumes from the last complete step. A step directory counts only with its commit marker,
and one that cannot be read back (a damaged file) is skipped, with one line, for the step before
it. The grain iterator state is captured at the moment of the save call. `branch` starts a run
from another run's checkpoint (a cooldown off a constant-learning-rate run).
"""

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Callable

import grain
import jax
import orbax.checkpoint as ocp

from gpt_jax import files
from gpt_jax.errors import UserError

# What orbax writes into a step directory last, before renaming it into place: the commit time in
# the step's metadata (every version), and from orbax 0.12 also a marker file (on object stores,
# where nothing is renamed, the marker file is the commit itself).
COMMIT_MARKER, STEP_METADATA = 'commit_success.txt', '_CHECKPOINT_METADATA'
UNREADABLE_SUFFIX = '.unreadable'  # a damaged step directory is renamed so, never deleted


def _shapes(tree) -> dict:
  return {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_same_shapes(source, wanted, what: str,
                      fix: str = 'set the same model settings as that run') -> None:
  """Raises UserError if the parameter trees `source` (of `what`) and `wanted` differ in shape."""
  have, want = _shapes(source), _shapes(wanted)
  if have == want:
    return
  differ = sorted(set(have) ^ set(want)) or sorted(k for k in have if have[k] != want[k])
  key = differ[0]
  raise UserError(f'{what} holds a model of another shape (params{key}: {have.get(key, "absent")} '
                  f'there, {want.get(key, "absent")} in this config); {fix}')


class Checkpoints:
  """The checkpoints in `directory`: the newest `keep` are kept, and those at `preserve` steps
  too (config.checkpoint_steps, where cooldowns branch off); orbax deletes the others."""

  def __init__(self, directory: str, keep: int, preserve: tuple[int, ...] = ()):
    self.directory = os.path.abspath(directory)
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(keep), ocp.checkpoint_managers.CustomSteps(preserve)])
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(preservation_policy=policy,
                                             enable_async_checkpointing=True),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()})

  def committed_steps(self) -> list[int]:
    """The steps whose directory holds its commit marker, newest first."""
    return committed_steps(self.directory)

  def latest_step(self) -> int | None:
    return next(iter(self.committed_steps()), None)

  def check_params_match(self, step: int, abstract_params) -> None:
    """Raises UserError if the checkpoint at `step` holds parameters of other shapes."""
    check_same_shapes(self._metadata(step)['params'], abstract_params, self.directory,
                      'use a new --workdir or the model settings of that run')

  def holds_params_only(self, step: int) -> bool:
    """True for a checkpoint of parameters without optimizer state (an imported model); False
    also when its metadata cannot be read (restore_newest then skips the damaged step)."""
    try:
      return 'opt_state' not in self._metadata(step)
    except Exception:  # orbax raises many types for a damaged file
      return False

  def _metadata(self, step: int) -> dict:
    return self._manager.item_metadata(step)['state'].tree

  def save(self, step: int, state, data_iterator, *, force: bool = False) -> None:
    """Starts writing `state` and the iterator position as `step`; UserError if the disk has too
    little space for it (checked first, and on the write's own error)."""
    needed = sum(x.nbytes for x in jax.tree.leaves(state)) // jax.process_count()
    free = shutil.disk_usage(_existing_parent(self.directory)).free
    if free < needed:
      raise UserError(self._no_space(f'{free / 2**20:,.0f} MiB are free but a checkpoint needs '
                                      f'about {needed / 2**20:,.0f} MiB'))
    with self._out_of_space_as_user_error():
      self._manager.save(step, force=force, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)))

  def restore(self, step: int, abstract_state, data_iterator):
    """The state at `step`; also moves `data_iterator` to where it was at that step."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored['state']

  def restore_newest(self, abstract_state, data_iterator, log: Callable[[str], None]):
    """(step, state) of the newest committed checkpoint that reads back whole, parameters of the
    shapes of `abstract_state` (UserError if not); `data_iterator` moves to its position. Newer
    unreadable steps are logged and renamed to STEP.unreadable, so this run can save those step
    numbers again while nothing is deleted."""

    def read(step):
      self.check_params_match(step, abstract_state.params)
      try:
        return self.restore(step, abstract_state, data_iterator)
      except ValueError as e:  # a state of another layout is not a damaged file
        if 'tree structures do not match' not in str(e):
          raise
        raise UserError(f'checkpoint step {step} in {self.directory} holds a train state of '
                        'another structure than this config builds (its optimizer state '
                        'differs); resume with the settings the run was trained with, or use a '
                        'new --workdir') from None

    step, state = newest_readable(self.committed_steps(), read, self.directory, log)
    for newer in (s for s in self._manager.all_steps() if s > step):
      aside = os.path.join(self.directory, f'{newer}{UNREADABLE_SUFFIX}')
      while os.path.exists(aside):
        aside += UNREADABLE_SUFFIX
      os.rename(os.path.join(self.directory, str(newer)), aside)
      log(f'moved the unreadable checkpoint step {newer} aside to {aside}')
    self._manager.reload()
    return step, state

  def wait(self) -> None:
    with self._out_of_space_as_user_error():
      self._manager.wait_until_finished()

  def _no_space(self, detail: str) -> str:
    last = self.latest_step()
    kept = f'the last checkpoint (step {last}) is intact' if last is not None else 'nothing saved'
    return (f'no space for a checkpoint in {self.directory}: {detail}; {kept}. Free some space or '
            'move the workdir to a larger disk, then run the same command again to resume')

  @contextlib.contextmanager
  def _out_of_space_as_user_error(self):
    try:
      yield
    except Exception as e:  # orbax and TensorStore report a full disk in their own types
      if not _is_out_of_space(e):
        raise
      raise UserError(self._no_space('the disk is full')) from None

  def close(self) -> None:
    self._manager.close()


def committed_steps(directory: str) -> list[int]:
  """The steps in a checkpoint directory whose step directory holds its commit marker, newest
  first (none if `directory` does not exist)."""
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted((int(name) for name in names
                 if name.isdigit() and is_committed(os.path.join(directory, name))), reverse=True)


def branch(source_workdir: str, step: int, workdir: str) -> None:
  """Starts the run in `workdir` from the checkpoint `step` of the run in `source_workdir`
  (parameters, optimizer state with its step count, data position): a copy of that step
  directory, made whole or not at all, which `trainer.train(config, workdir)` resumes from.
  How a cooldown branches off a constant-learning-rate run (optim.schedule 'wsd' trained with
  config.checkpoint_steps; Hägele et al. 2024). Nothing happens if `workdir` holds a checkpoint
  already (the branch has started: it resumes from its own). UserError if the source has no
  committed checkpoint at `step`."""
  target = os.path.join(workdir, 'checkpoints')
  if committed_steps(target):
    return
  source = os.path.join(source_workdir, 'checkpoints')
  have = committed_steps(source)
  if step not in have:
    listed = ', '.join(map(str, sorted(have))) or 'none'
    raise UserError(f'{source_workdir} has no complete checkpoint at step {step} to branch from '
                    f'(its steps: {listed}); pick one of those, or save one there with '
                    '--config.checkpoint_steps')
  with files.new_directory(os.path.join(target, str(step)), 'workdir') as tmp:
    shutil.copytree(os.path.join(source, str(step)), tmp, dirs_exist_ok=True)


def is_committed(step_directory: str) -> bool:
  """Whether orbax finished writing this step directory (its commit marker is there)."""
  if os.path.exists(os.path.join(step_directory, COMMIT_MARKER)):
    return True
  try:
    with open(os.path.join(step_directory, STEP_METADATA)) as f:
      return bool(json.load(f).get('commit_timestamp_nsecs'))
  except (OSError, ValueError, AttributeError):
    return False


def _existing_parent(path: str) -> str:
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return path


def _is_out_of_space(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from, is a full disk (or quota)."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(text in str(error) for text in ('No space left on device', 'RESOURCE_EXHAUSTED',
                                           'Disk quota exceeded')):
      return True
    error = error.__cause__ or error.__context__
  return False


def _first_line(error: BaseException) -> str:
  """The type and the first line of the error that `error` was raised from, the root cause
  (orbax wraps TensorStore's errors and appends their whole spec)."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).split(' See full TensorStore details')[0].strip()
  return f'{type(error).__name__}: {text.splitlines()[0] if text else ""}'[:200]


# What orbax's unfinished reads report after one read of a damaged checkpoint has failed.
_LEFTOVERS = ('Encountered error while reading array index', 'Event loop is closed')


def _is_leftover(error) -> bool:
  return error is not None and any(text in str(error) for text in _LEFTOVERS)


def _drop_leftovers_of_failed_reads() -> None:
  """Orbax reads a checkpoint's arrays concurrently. When one read fails it raises that error
  (reported in one line by newest_readable) while the other reads finish in the background and
  report their errors to no one: asyncio's 'exception was never retrieved' log records,
  unawaited coroutines, TensorStore callbacks into the closed event loop. Once checkpoints are
  read with a fallback, those leftovers (and only they) are dropped, so a skipped checkpoint
  stays one line."""
  if getattr(sys.unraisablehook, 'drops_read_leftovers', False):
    return
  previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook
  previous_thread = threading.excepthook

  def unraisable(info):
    if not _is_leftover(info.exc_value):
      previous_unraisable(info)

  def uncaught(kind, value, traceback):
    if not _is_leftover(value):
      previous_except(kind, value, traceback)

  def thread(args):
    if not _is_leftover(args.exc_value):
      previous_thread(args)

  warnings.filterwarnings('ignore', message="coroutine '_read_array_index_and_device_put' was "
                          'never awaited')
  unraisable.drops_read_leftovers = True
  sys.unraisablehook, sys.excepthook, threading.excepthook = unraisable, uncaught, thread
  logging.getLogger('asyncio').addFilter(
      lambda record: 'exception was never retrieved' not in record.getMessage())


def newest_readable(steps: list[int], read: Callable[[int], object], directory: str,
                    log: Callable[[str], None]) -> tuple[int, object]:
  """(step, read(step)) for the first of `steps` (newest first) that reads; each one before it
  that cannot be read is logged as skipped. UserError if there are no steps or none reads; a
  UserError from `read` (a model of another shape) is not a damaged file and passes through."""
  if not steps:
    raise UserError(f'{directory} holds no complete checkpoint; train the run first')
  _drop_leftovers_of_failed_reads()
  reasons = []
  for step in steps:
    try:
      return step, read(step)
    except UserError:
      raise
    except Exception as e:  # TensorStore and orbax raise many types for a damaged file
      reason = _first_line(e)
      reasons.append(f'step {step}: {reason}')
      log(f'skipping checkpoint step {step} in {directory}: it cannot be read ({reason})')
  raise UserError(f'no checkpoint in {directory} can be read ({"; ".join(reasons)}); restore '
                  'the directory from a copy or start a new run')


def save_params(directory: str, step: int, params) -> None:
  """A checkpoint of parameters alone (an imported model): item 'state' = {'params': params}, as
  a training checkpoint holds them, so `Checkpoints` and `restore_params` read it."""
  manager = ocp.CheckpointManager(os.path.abspath(directory),
                                  item_handlers={'state': ocp.StandardCheckpointHandler()})
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({'params': params})))
  manager.wait_until_finished()
  manager.close()


def restore_params(directory: str, step: int, abstract_params):
  """The parameters alone from the checkpoint at `step` (a partial restore: the optimizer state
  is not read), placed as `abstract_params` says."""
  manager = ocp.CheckpointManager(os.path.abspath(directory),
                                  item_handlers={'state': ocp.PyTreeCheckpointHandler()})
  abstract = {'params': abstract_params}
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
      partial_restore=True)))
  manager.close()
  return restored['state']['params']


def restore_params_beside(directory: str, step: int, key: str, mesh: jax.sharding.Mesh) -> dict:
  """The parameters of the checkpoint at `step` other than params[key]: what an objective trains
  beside the model under `key` (a task, reward or value head, special-token embeddings), read
  from the checkpoint's own metadata whatever the objective, replicated on `mesh` (they are
  small)."""
  manager = ocp.CheckpointManager(os.path.abspath(directory), item_handlers={
      'state': ocp.StandardCheckpointHandler(), 'data': grain.checkpoint.CheckpointHandler()})
  tree = manager.item_metadata(step)['state'].tree['params']
  manager.close()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated),
                          {name: part for name, part in tree.items() if name != key})
  return restore_params(directory, step, abstract)
