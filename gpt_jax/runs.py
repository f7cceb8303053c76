"""A run's directory (its workdir): what it holds, and how a finished run is read back to sample
from, evaluate, fine-tune (config.init_from) or distill from (config.distill.teacher).

DIR/config.json    the run's whole config
DIR/tokenizer.model  the tokenizer its data was encoded with (sentencepiece), or
DIR/tokenizer.json   a Hugging Face one (a model imported by gpt_jax.hf)
DIR/checkpoints/   orbax checkpoints; the parameters of the newest readable one are what
                   sampling, evaluation, export and distillation use
DIR/lora.json      of a LoRA run (config.lora.rank > 0), whose checkpoints hold the adapters
                   alone: its base run and the base's fingerprint (gpt_jax.lora)
DIR/lock.json      while a run trains in DIR: its host and process id (WorkdirLock)
"""

import contextlib
import dataclasses
import functools
import datetime
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from gpt_jax import checkpoint, config as config_lib, files, lora, model, network, quant, sharding
from gpt_jax import state
from gpt_jax import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError
from gpt_jax.tokenizer import Tokenizer

CONFIG, CHECKPOINTS, LOCK = 'config.json', 'checkpoints', 'lock.json'

# Objectives that train more than the model (a task head, a reward or value head) keep the model's
# parameters under this key of the trained tree (gpt_jax.objectives.classify, reward, ppo).
MODEL_KEY = {'classify': 'gpt', 'reward': 'gpt', 'ppo': 'gpt'}


@dataclasses.dataclass(frozen=True)
class Run:
  gpt: model.GPT
  params: Any  # sharded on the mesh it was loaded onto, by the logical axis rules
  config: ml_collections.ConfigDict  # the run's config, with mesh and dtype as loaded
  tokenizer: Tokenizer
  step: int  # of the checkpoint the parameters come from


def _with_defaults(saved: dict, defaults: dict) -> dict:
  """`saved` with every key it lacks (a setting newer than the run) at its default."""
  return {**defaults, **{key: _with_defaults(value, defaults[key])
                         if isinstance(value, dict) and isinstance(defaults.get(key), dict)
                         else value for key, value in saved.items()}}


def read_config(workdir: str, what: str = 'workdir') -> ml_collections.ConfigDict:
  """The run's config.json; settings added since it was written read as their defaults."""
  path = os.path.join(workdir, CONFIG)
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(_with_defaults(json.load(f),
                                                      config_lib.base_config().to_dict()))
  except FileNotFoundError:
    raise UserError(f'{what}={workdir!r} is not a run of this project (no {CONFIG}); pass the '
                    'workdir of a finished training run or of `python -m gpt_jax.hf import`'
                    ) from None
  except (OSError, ValueError) as e:
    raise UserError(f'cannot read {path}: {e}; pass the workdir of a finished run') from None


def _to_stderr(message: str) -> None:
  print(message, file=sys.stderr)


def load(workdir: str, *, mesh: jax.sharding.Mesh | None = None, dtype: str | None = None,
         what: str = 'workdir', log: Callable[[str], None] = _to_stderr, merge: bool = True) -> Run:
  """The model parameters of the newest readable checkpoint of the run in `workdir` (a damaged
  newer one is skipped with a line to `log`), placed on `mesh` (default: all devices, data
  parallel), computing in `dtype` (default: the run's). `what` names the setting that gave
  `workdir`, for the error messages. Of a run that trained more than the model (MODEL_KEY: a
  task head) they are the model's part alone, so sampling, evaluation, export and init_from read
  it as any language model.

  Of a LoRA run they are its base's (loaded so, recursively, from the workdir its lora.json
  names, and checked against the fingerprint there: UserError if the base changed) with the
  adapters merged in, W + (alpha/r)·A·B (lora.merge), under the plain model; merge=False, or a
  quantized base (QLoRA: merging would dequantize it), keeps them apart, under the adapted model
  (network.build with config.lora)."""
  config, tokenizer, steps, mesh = _open(workdir, mesh, dtype, what)
  adapted = lora.is_adapted(config)
  base = _lora_base(workdir, mesh, dtype, log) if adapted else None
  gpt = network.build(config.model, config.lora if adapted else None)
  abstract_params = state.abstract_params(
      functools.partial(model.init_params, gpt, seq_len=config.seq_len),
      model.logical_axes(gpt, config.seq_len), mesh)
  if adapted:
    abstract_params, _ = lora.split(abstract_params)  # the checkpoints hold the adapters alone
  directory = os.path.join(workdir, CHECKPOINTS)
  key = MODEL_KEY.get(config.get('objective'))
  wanted = abstract_params if key is None else {key: abstract_params}  # a partial restore
  step, params = checkpoint.newest_readable(
      steps, lambda step: checkpoint.restore_params(directory, step, wanted), directory, log)
  params = params if key is None else params[key]
  if adapted:
    params = lora.join(params, base.params)
    if merge and not quant.spec(config.model):
      shardings = jax.tree.map(lambda p: p.sharding, base.params)
      params = jax.jit(functools.partial(lora.merge, lora=config.lora),
                       out_shardings=shardings)(params)
      gpt = network.build(config.model)
  return Run(gpt, params, config, tokenizer, step)


def _open(workdir: str, mesh, dtype: str | None, what: str):
  """(config, tokenizer, committed checkpoint steps, mesh) of the run in workdir, the config's
  mesh and model dtype set to those it will be read with. UserError if it cannot be read."""
  config = read_config(workdir, what)
  path = tokenizer_lib.find(workdir)
  if path is None:
    raise UserError(f'{what}={workdir!r} has no {" or ".join(tokenizer_lib.FILENAMES)}; pass the '
                    'workdir of a finished run')
  tokenizer = tokenizer_lib.load(path)
  if config.data.tokenizer and not os.path.exists(config.data.tokenizer):
    config.data.tokenizer = path  # a written run (write_params_run) that was moved: its own copy
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, CHECKPOINTS), keep=config.keep_checkpoints)
  steps = ckpts.committed_steps()
  ckpts.close()
  if not steps:
    raise UserError(f'{what}={workdir!r} has no checkpoint yet; train it first or pass another run')
  if mesh is None:
    mesh = sharding.data_parallel_mesh()
  config.mesh = ml_collections.ConfigDict(dict(zip(mesh.axis_names, mesh.devices.shape)))
  if dtype:
    config.model.dtype = dtype
  return config, tokenizer, steps, mesh


@dataclasses.dataclass(frozen=True)
class LayerReader:
  """A run read a layer at a time, for a model larger than memory (gpt_jax.generate): its
  GPT, config, tokenizer and checkpoint step, the parameters outside the blocks (`resident`:
  embeddings, final norm, head), and `layer(j)`, block j's parameters, read from the checkpoint
  alone (orbax's partial restore: only that layer's arrays leave the disk)."""
  gpt: model.GPT
  config: ml_collections.ConfigDict
  tokenizer: Tokenizer
  step: int
  resident: dict
  directory: str
  abstract: dict
  key: str | None

  def layer(self, j: int) -> dict:
    return self._read(self.step, [f'h_{j}'])[f'h_{j}']

  def _read(self, step: int, names: list[str]) -> dict:
    wanted = {name: self.abstract[name] for name in names}
    params = checkpoint.restore_params(self.directory, step,
                                       wanted if self.key is None else {self.key: wanted})
    return params if self.key is None else params[self.key]


def layer_reader(workdir: str, what: str = 'workdir',
                 log: Callable[[str], None] = _to_stderr) -> LayerReader | None:
  """The run in workdir as a LayerReader (its newest readable checkpoint, on one device), or
  None where its layers cannot be read apart: a LoRA run (its weights are its base's with the
  adapters merged) or a scanned one (nn.scan stacks every layer's weights in one array each);
  load those whole."""
  config, tokenizer, steps, mesh = _open(workdir, sharding.single_device_mesh(), None, what)
  if lora.is_adapted(config) or config.model.scan_layers:
    return None
  gpt = network.build(config.model)
  abstract = state.abstract_params(functools.partial(model.init_params, gpt,
                                                     seq_len=config.seq_len),
                                   model.logical_axes(gpt, config.seq_len), mesh)
  directory = os.path.join(workdir, CHECKPOINTS)
  reader = LayerReader(gpt, config, tokenizer, 0, {}, directory, abstract,
                       MODEL_KEY.get(config.get('objective')))
  outside = [name for name in abstract if not name.startswith('h_')]
  step, resident = checkpoint.newest_readable(steps, lambda step: reader._read(step, outside),
                                              directory, log)
  return dataclasses.replace(reader, step=step, resident=resident)


def _lora_base(workdir: str, mesh, dtype: str | None, log) -> Run:
  """The base of the LoRA run in `workdir` (merged, if itself a LoRA run): the first run among
  lora.recorded_places with the fingerprint the adapters were trained on. UserError if none of
  them is a run (naming `python -m gpt_jax.lora rebase`, which records where it went) or none has
  that fingerprint (lora.check_base)."""
  record = lora.read_base(workdir)
  recorded = lora.recorded_places(workdir, record)
  places = [place for place in recorded if os.path.exists(os.path.join(place, CONFIG))]
  if not places:
    raise UserError(f'the base of the LoRA run {workdir} is not where its {lora.BASE_FILE} '
                    f'records it ({" nor ".join(recorded)}); if it moved, name its new place with '
                    f'python -m gpt_jax.lora rebase --workdir={workdir} --base=DIR (its '
                    'fingerprint is checked)')
  for place in places:
    base = load(place, mesh=mesh, dtype=dtype, what=f'the base of {workdir}', log=log)
    found = lora.base_record(place, base.step, base.params)
    if found['base_sha256'] == record['base_sha256']:
      return base
  lora.check_base(workdir, found)  # raises: the base changed


def write_params_run(workdir: str, config: ml_collections.ConfigDict, tokenizer: Tokenizer, params,
                     step: int, flag: str, copy: tuple[str, ...] | list[str] = (),
                     records: dict[str, dict] | None = None) -> str:
  """Makes `workdir` (new or empty; `flag` names the setting that gave it) a run of parameters
  alone, whole or not at all: config.json (its data.tokenizer the copy beside it), the tokenizer,
  a params-only checkpoint at `step`, a copy of each file in `copy` and each of `records` (file
  name -> JSON object). Returns the absolute workdir."""
  workdir = os.path.abspath(workdir)
  config.data.tokenizer = os.path.join(workdir, tokenizer.filename)
  with files.new_directory(workdir, flag) as tmp:
    files.write_json(os.path.join(tmp, CONFIG), config.to_dict())
    tokenizer.save(os.path.join(tmp, tokenizer.filename))
    checkpoint.save_params(os.path.join(tmp, CHECKPOINTS), step, params)
    for path in copy:
      shutil.copyfile(path, os.path.join(tmp, os.path.basename(path)))
    for name, record in (records or {}).items():
      files.write_json(os.path.join(tmp, name), record)
  return workdir


# Settings a resumed run may change freely: they decide what is logged, kept or printed, where
# arrays live and which kernel computes, not where the parameters go.
FREE_TO_CHANGE = ('log_every', 'eval_every', 'eval_batches', 'checkpoint_every', 'checkpoint_steps',
                  'keep_checkpoints', 'steps_per_call', 'allow_config_changes', 'init_from',
                  'sample', 'mesh', 'data.cache_dir', 'data.cluster', 'model.attention',
                  'model.remat')


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


# The config sections only one objective reads: another objective's run may change them freely.
OBJECTIVE_SECTIONS = {'lm': ('distill',), 'sft': ('sft',), 'classify': ('task', 'finetune'),
                      'dpo': ('dpo',), 'ppo': ('ppo',)}


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """'key: old -> new' for each setting of `config` that differs from the run's saved config.json
  and changes its trajectory (all but FREE_TO_CHANGE and the sections of other objectives,
  OBJECTIVE_SECTIONS). A setting the saved config lacks (it predates the setting) counts as its
  default."""
  old = {**_flatten(config_lib.base_config().to_dict()), **_flatten(saved)}
  new = _flatten(json.loads(json.dumps(config.to_dict())))  # tuples as config.json has them
  unread = tuple(section for objective, sections in OBJECTIVE_SECTIONS.items()
                 if objective != config.get('objective', 'lm') for section in sections)
  free = lambda key: any(key == f or key.startswith(f + '.') for f in FREE_TO_CHANGE + unread)
  return [f'{key}: {old.get(key, "absent")!r} -> {new.get(key, "absent")!r}'
          for key in sorted(set(old) | set(new))
          if not free(key) and old.get(key, 'absent') != new.get(key, 'absent')]


def check_compatible(run: Run, workdir: str, what: str, config: ml_collections.ConfigDict,
                     tokenizer: Tokenizer) -> None:
  """UserError unless the run loaded from `workdir` (given as setting `what`) shares the tokenizer
  and vocabulary of the run that `config` and `tokenizer` describe."""
  if run.tokenizer.sha256 != tokenizer.sha256:
    fix = (f'give this run the same data settings or --config.data.tokenizer='
           f'{os.path.join(workdir, run.tokenizer.filename)}' if config.objective == 'lm' else
           f"pass a run made with the tokenizer of init_from={config.init_from!r}")
    raise UserError(f'{what}={workdir!r} used another tokenizer than this run; {fix}')
  if run.config.model.vocab_size != config.model.vocab_size:
    raise UserError(f'{what}={workdir!r} has model.vocab_size={run.config.model.vocab_size}, this '
                    f'run {config.model.vocab_size}; set --config.model.vocab_size to match')


def load_compatible(workdir: str, what: str, config: ml_collections.ConfigDict,
                    tokenizer: Tokenizer, *, mesh: jax.sharding.Mesh,
                    log: Callable[[str], None] = _to_stderr) -> Run:
  """The run in `workdir` (load), on `mesh` in config.model.dtype, after check_compatible: how
  init_from, a teacher or a reference model is read."""
  run = load(workdir, mesh=mesh, dtype=config.model.dtype, what=what, log=log)
  check_compatible(run, workdir, what, config, tokenizer)
  return run


def _process_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it exists, under another user
    return True
  return True


class WorkdirLock:
  """DIR/lock.json, held by the one run that writes into DIR, so that a second run started on the
  same workdir stops with one line instead of resuming from checkpoints still being written and
  interleaving its metrics with the first's.

  The file is created exclusively (O_EXCL, which local and network file systems honour) and names
  its holder: host, process id, start time. It is removed on release. A lock left by a process
  that died (kill -9, a crashed machine) is stale: on the same host that is checked and the lock
  taken over; from another host it cannot be, so the error says how to remove it.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK)
    self._created_workdir = False

  def acquire(self, log=print) -> None:
    self._created_workdir = not os.path.isdir(self.workdir)
    os.makedirs(self.workdir, exist_ok=True)
    me = {'host': socket.gethostname(), 'pid': os.getpid(),
          'since': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}
    for _ in range(3):  # a stale lock is taken over at most once per competitor
      try:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        holder = self._holder()
        if holder == {}:  # released meanwhile
          continue
        if not self._is_stale(holder):
          self.release_workdir()
          raise UserError(self._held_message(holder)) from None
        log(f'taking over the stale lock of {self._describe(holder)}, which is no longer running')
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump(me, f)
      return
    raise UserError(f'cannot take the lock {self.path}: other runs keep taking it; start one run '
                    'per workdir')

  def release(self) -> None:
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.path)
    self.release_workdir()

  def release_workdir(self) -> None:
    """Removes the workdir again if acquire() made it and nothing else was written there."""
    if self._created_workdir and os.path.isdir(self.workdir) and not os.listdir(self.workdir):
      os.rmdir(self.workdir)

  def _holder(self) -> dict | None:
    """The lock file's contents: {} if it is gone, None if its creator has not written them
    within a second (it died in between)."""
    for _ in range(20):
      try:
        with open(self.path) as f:
          return json.load(f)
      except FileNotFoundError:
        return {}
      except ValueError:
        time.sleep(0.05)
    return None

  @staticmethod
  def _is_stale(holder: dict | None) -> bool:
    if holder is None:
      return True
    return holder.get('host') == socket.gethostname() and not _process_running(holder['pid'])

  @staticmethod
  def _describe(holder: dict | None) -> str:
    if holder is None:
      return 'a run that died while taking it (the lock file is empty)'
    return f'process {holder.get("pid")} on {holder.get("host")} (since {holder.get("since")})'

  def _held_message(self, holder: dict) -> str:
    message = (f'{self.workdir} is in use by another run: {self._describe(holder)}; wait for it '
               'to finish or stop it, or pass another --workdir')
    if holder.get('host') != socket.gethostname():
      message += f' (if no run is left on {holder.get("host")}, delete {self.path})'
    return message


@contextlib.contextmanager
def hold_workdir(workdir: str, log=print):
  """Holds the WorkdirLock of `workdir` while the block runs. In a multi-process job process 0
  takes it for all (they share the workdir) and every process stops if it cannot."""
  lock = WorkdirLock(workdir)
  error = ''
  if jax.process_index() == 0:
    try:
      lock.acquire(log)
    except UserError as e:
      error = str(e)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    if multihost_utils.broadcast_one_to_all(np.int32(bool(error))) and not error:
      error = f'process 0 could not take the lock of {workdir}; see its error'
  if error:
    raise UserError(error)
  try:
    yield lock
  finally:
    if jax.process_index() == 0:
      lock.release()
