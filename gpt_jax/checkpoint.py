"""Checkpoints of a run: the train state and the data iterator, saved together by orbax.

Saves are asynchronous (training continues while arrays are written) and atomic (orbax writes a
temporary directory and renames it on commit), so a run killed at any moment resumes from the
last complete step. The grain iterator state is captured at the moment of the save call.
"""

import os

import grain
import jax
import orbax.checkpoint as ocp

from gpt_jax.errors import UserError


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

  def __init__(self, directory: str, keep: int):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def check_params_match(self, step: int, abstract_params) -> None:
    """Raises UserError if the checkpoint at `step` holds parameters of other shapes."""
    check_same_shapes(self._metadata(step)['params'], abstract_params, self.directory,
                      'use a new --workdir or the model settings of that run')

  def holds_params_only(self, step: int) -> bool:
    """True for a checkpoint of parameters without optimizer state (an imported model)."""
    return 'opt_state' not in self._metadata(step)

  def _metadata(self, step: int) -> dict:
    return self._manager.item_metadata(step)['state'].tree

  def save(self, step: int, state, data_iterator, *, force: bool = False) -> None:
    self._manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)))

  def restore(self, step: int, abstract_state, data_iterator):
    """The state at `step`; also moves `data_iterator` to where it was at that step."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored['state']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


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
