"""Command-line plumbing shared by the entry points: config flags, one-line errors and the
compilation cache.

`--config=FILE[:ARG]` loads FILE's `get_config(ARG)`; `--config.a.b=VALUE` overrides any key.
Every failure a user can fix ends as one line on stderr and exit status 2, never a traceback.
"""

import argparse
import errno
import importlib.util
import os
import sys
from typing import Callable

from absl import flags
from ml_collections import config_flags

from gpt_jax import files
from gpt_jax.errors import UserError


def load_experiment(spec: str):
  """The config of `FILE[:ARG]`: FILE's get_config(ARG), or get_config() without ARG."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise UserError(f'--config={spec}: no such file {path!r}; pass an experiment file such as '
                    '--config=experiments/tiny.py')
  module_spec = importlib.util.spec_from_file_location(f'experiment_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:
    raise UserError(f'cannot load {path}: {type(e).__name__}: {e}') from None
  if not hasattr(module, 'get_config'):
    raise UserError(f'{path} has no get_config() function; an experiment file defines one')
  return module.get_config(arg) if arg else module.get_config()


def unknown_key(config, key: str) -> bool:
  """Whether the dotted `key` ('optim.lr') names no setting of `config`."""
  node = config
  for part in key.split('.'):
    if not hasattr(node, 'keys') or part not in node:
      return True
    node = node[part]
  return False


def _apply_overrides(config, argv: list[str], extra_flags: Callable[[flags.FlagValues], None]):
  """Parses `--config.a.b=v` overrides (typed by the config) and the flags extra_flags defines."""
  for arg in argv[1:]:
    key = arg[len('--config.'):].split('=', 1)[0] if arg.startswith('--config.') else None
    if key is not None and unknown_key(config, key):
      raise UserError(f'unknown config key config.{key}; check the spelling against '
                      'gpt_jax/config.py')
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_dict('config', config, flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  extra_flags(flag_values)
  try:
    flag_values(argv)
  except (flags.Error, TypeError, ValueError) as e:
    raise UserError(f'{e}; run with --helpfull to list the flags') from None
  return flag_values


def default_workdir(config_arg: str) -> str:
  """runs/<experiment name>[_<arg>] for --config=experiments/<name>.py[:<arg>]."""
  path, _, arg = config_arg.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join('runs', f'{name}_{arg}' if arg else name)


def _define_run_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string('workdir', '', 'Run directory; default runs/<experiment>.',
                      flag_values=flag_values)
  # A multi-host job: every process runs the same command with its own process id.
  flags.DEFINE_string('coordinator_address', os.environ.get('JAX_COORDINATOR_ADDRESS', ''),
                      'host:port of process 0, to join a multi-process job.',
                      flag_values=flag_values)
  flags.DEFINE_integer('num_processes', int(os.environ.get('JAX_NUM_PROCESSES', 0)),
                       'Processes in the job (with --coordinator_address).',
                       flag_values=flag_values)
  flags.DEFINE_integer('process_id', int(os.environ.get('JAX_PROCESS_ID', -1)),
                       'This process (with --coordinator_address).', flag_values=flag_values)
  flags.DEFINE_bool('distributed', False, 'Join a multi-host job whose settings the cluster '
                    'provides (TPU VM slices, SLURM, Open MPI).', flag_values=flag_values)


def parse_train_args(argv: list[str]):
  """(config, workdir) from `--config=FILE[:ARG] [--config.x=v ...] [--workdir=DIR]`; with
  multi-host flags, this process first joins the others (jax.distributed.initialize)."""
  specs = [a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')]
  if not specs:
    raise UserError('missing --config=FILE; pass an experiment file, e.g. '
                    '--config=experiments/tiny.py')
  config = load_experiment(specs[-1])
  flag_values = _apply_overrides(config, [a for a in argv if not a.startswith('--config=')],
                                 _define_run_flags)
  _join_processes(flag_values)
  return config, flag_values.workdir or default_workdir(specs[-1])


def _join_processes(flag_values: flags.FlagValues) -> None:
  join_processes(flag_values.coordinator_address, flag_values.num_processes,
                 flag_values.process_id, flag_values.distributed)


def join_processes(coordinator_address: str = '', num_processes: int = 1, process_id: int = -1,
                   distributed: bool = False) -> None:
  """Joins the other processes of a multi-host job (jax.distributed.initialize): the ones at
  coordinator_address (host:port) with num_processes and this process_id, or with distributed
  those the cluster names (TPU VM slices, SLURM, Open MPI); neither: nothing to join."""
  import jax  # here, not at the top: gpt_jax.scaling uses this module and needs no jax
  if coordinator_address:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise UserError(f'--coordinator_address needs --num_processes >= 1 and --process_id in '
                      f'[0, num_processes), got {num_processes} and {process_id}')
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # collectives across CPU hosts
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif distributed:
    jax.distributed.initialize()


def use_compilation_cache() -> None:
  """Keeps compiled XLA programs on disk (unless the user chose a place already), so a rerun, a
  resumed run or a sweep's repeated shapes skip most of the compile time."""
  import jax  # here, not at the top: gpt_jax.scaling uses this module and needs no jax
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.join(files.cache_root(), 'jax'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose errors are UserErrors: one line and exit 2 through `run`, not usage text."""

  def error(self, message: str):
    raise UserError(f'{message}; see {self.prog} --help')


def run(fn: Callable[[], object]) -> None:
  """Runs fn; a UserError, a full disk or Ctrl-C becomes one line on stderr and a non-zero exit."""
  try:
    fn()
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    print(f'error: no space left on the disk of {e.filename or "the output"}; free some space '
          '(or write elsewhere) and run the same command again', file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print('interrupted; run the same command again to resume from the last checkpoint',
          file=sys.stderr)
    sys.exit(130)
