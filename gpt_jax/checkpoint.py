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
    saved = _shapes(self._manager.item_metadata(step)['state'].tree['params'])
    wanted = _shapes(abstract_params)
    if saved == wanted:
      return
    differ = sorted(set(saved) ^ set(wanted)) or sorted(k for k in saved if saved[k] != wanted[k])
    key = differ[0]
    raise UserError(
        f'{self.directory} holds a checkpoint of a different model shape (params{key}: checkpoint '
        f'{saved.get(key, "absent")} vs config {wanted.get(key, "absent")}); use a new --workdir '
        'or the model settings of that run')

  def save(self, step: int, state, data_iterator, *, force: bool = False) -> None:
    self._manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)))

  def restore(self, step: int, abstract_state, data_iterator):
    """The state at `step`; also moves `data_iterator` to where it was at that step."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored['state']

  def restore_state(self, step: int, abstract_state):
    """The state at `step` alone, without the data iterator (e.g. a teacher's parameters)."""
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))['state']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
