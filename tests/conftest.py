"""Shared fixtures and helpers: a small real corpus on disk, tiny runs to fine-tune, a cache that
is never ~/.cache, the paths, metrics reader and command runner the test files share.

Tests import the helpers with `from conftest import X`. Under pytest-xdist (`-n 2`) the workers
share the session's directories (the corpus, the tiny runs, the cache): the first worker to need
one builds it under a file lock, the others wait for it and reuse it."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from gpt_jax import corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'experiments', 'tiny.py')
TIMING = ('tokens_per_sec', 'mfu')  # wall-clock figures: they differ between runs by nature


def read_metrics(workdir, timing: bool = False) -> list[dict]:
  """The records of workdir's metrics.jsonl, without the TIMING figures unless `timing`."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return records if timing else [{k: v for k, v in r.items() if k not in TIMING}
                                 for r in records]


def run_cli(*args, module: str = 'gpt_jax.train', devices: int | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
  """`python -m module args...` from the checkout's root, its output captured as text; with
  `devices`, on that many CPU devices (XLA_FLAGS), else in this process's environment."""
  env = None if devices is None else dict(
      os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.run([sys.executable, '-m', module, *map(str, args)], capture_output=True,
                        text=True, env=env, cwd=ROOT, timeout=timeout)


def run_main(*args, module: str = 'gpt_jax.train') -> subprocess.CompletedProcess:
  """What run_cli(*args, module=module) gives, from the command's main() in this process: its
  exit status and what it printed, without starting an interpreter and importing JAX again. For
  the checks of a command's input; a test of the command line itself (a fresh process's whole
  output, signals, devices) uses run_cli."""
  import contextlib
  import importlib
  import io
  argv = [*map(str, args)]
  # a package's command is its __main__, as `python -m` runs it
  main = getattr(importlib.import_module(module), 'main', None) or importlib.import_module(
      f'{module}.__main__').main
  out, err, status = io.StringIO(), io.StringIO(), 0
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      main(['train', *argv] if module == 'gpt_jax.train' else argv)  # train's main reads argv[1:]
    except SystemExit as e:  # as the interpreter ends: an int is the status, text is printed
      if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
      status = e.code if isinstance(e.code, int) else int(e.code is not None)
  return subprocess.CompletedProcess([module, *argv], status, out.getvalue(), err.getvalue())


SMALL_PLAYS = ('the-comedy-of-errors', 'a-midsummer-night-s-dream', 'the-tempest', 'macbeth',
               'julius-caesar')


def _session_root(tmp_path_factory):
  """The directory that holds what the whole test session shares: pytest's base temporary
  directory, or under pytest-xdist the one above the workers' own."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


def shared_directory(tmp_path_factory, name: str, build) -> str:
  """The directory `name` of the session, which `build(path)` fills once: under pytest-xdist the
  first worker to ask builds it under a file lock (a failed build is left to the next one to
  redo), the others wait for it."""
  if not os.environ.get('PYTEST_XDIST_WORKER'):
    path = tmp_path_factory.mktemp(name)
    build(path)
    return str(path)
  import filelock
  root = _session_root(tmp_path_factory)
  path, done = root / name, root / f'{name}.done'
  with filelock.FileLock(str(root / f'{name}.lock')):
    if not done.exists():
      shutil.rmtree(path, ignore_errors=True)
      path.mkdir()
      build(path)
      done.touch()
  return str(path)


@pytest.fixture(scope='session', autouse=True)
def cache_root(tmp_path_factory, pytestconfig):
  """Points GPT_JAX_CACHE at a fresh directory for the whole session, and JAX's persistent
  compilation cache, for every program compiled in this process and in the commands the tests
  start, at .pytest_cache/d/jax_compilation_cache: kept from one session to the next (a rerun
  compiles little; `pytest --cache-clear` empties it), or with -p no:cacheprovider at the
  session's cache/jax. A cached program is the one XLA compiles: the results are the same."""
  import jax
  root = _session_root(tmp_path_factory) / 'cache'
  root.mkdir(exist_ok=True)
  kept = getattr(pytestconfig, 'cache', None)
  jax_cache = str(kept.mkdir('jax_compilation_cache') if kept else root / 'jax')
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('GPT_JAX_CACHE', str(root))
    mp.setenv('JAX_COMPILATION_CACHE_DIR', jax_cache)
    mp.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
    before = (jax.config.jax_compilation_cache_dir,
              jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update('jax_compilation_cache_dir', jax_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    yield root
    jax.config.update('jax_compilation_cache_dir', before[0])
    jax.config.update('jax_persistent_cache_min_compile_time_secs', before[1])


@pytest.fixture(scope='session')
def shakespeare() -> list[corpus.Document]:
  docs, _ = corpus.load_documents('shakespeare')
  return docs


@pytest.fixture(scope='session')
def small_corpus(tmp_path_factory, shakespeare) -> str:
  """A directory of five plays (~0.5 MB), one .txt file per scene: <play>/<nn>.txt."""
  def build(root):
    for doc in shakespeare:
      name, number = os.path.basename(doc.source).split('.md#')
      if name in SMALL_PLAYS:
        os.makedirs(root / name, exist_ok=True)
        (root / name / f'{int(number):02d}.txt').write_text(doc.text, encoding='utf-8')
  return shared_directory(tmp_path_factory, 'small_corpus', build)


@pytest.fixture(scope='session')
def tiny_base(small_corpus, tmp_path_factory) -> str:
  """The workdir of a finished experiments/tiny.py run on the small corpus: a base model to
  fine-tune (20 steps, seconds). Shared by every test: read it, never write into it; a test
  that resumes or changes a run of these settings works on a copy (shutil.copytree)."""
  from gpt_jax import cli, trainer
  def build(workdir):
    config = cli.load_experiment(TINY)
    config.data.corpus, config.sample.num = small_corpus, 0
    trainer.train(config, str(workdir), log=lambda _: None)
  return shared_directory(tmp_path_factory, 'tiny_base', build)


def write_preferences(path, pairs: int = 48, seed: int = 0) -> str:
  """A preference .jsonl file whose judge is simple: of two answers (three words each) to a
  prompt, the chosen one holds the word 'love' and the rejected one does not."""
  import json
  import random
  rng = random.Random(seed)
  words = ['thou', 'art', 'king', 'sweet', 'night', 'sword', 'crown', 'moon', 'fair']
  with open(path, 'w', encoding='utf-8') as f:
    for i in range(pairs):
      prompt = f'Speak of {rng.choice(words)} {i % 12}.'
      chosen = ' '.join(rng.sample(words, 2) + ['love'])
      rejected = ' '.join(rng.sample(words, 3))
      f.write(json.dumps({'prompt': prompt, 'chosen': chosen, 'rejected': rejected}) + '\n')
  return str(path)


@pytest.fixture(scope='session')
def preference_file(tmp_path_factory) -> str:
  directory = shared_directory(tmp_path_factory, 'preferences',
                               lambda path: write_preferences(path / 'pairs.jsonl'))
  return os.path.join(directory, 'pairs.jsonl')


@pytest.fixture(scope='session')
def tiny_reward(tiny_base, preference_file, tmp_path_factory) -> str:
  """The workdir of a reward model trained from tiny_base on preference_file through the command
  line (experiments/reward.py with tiny settings), finished and normalised. Read only."""
  from gpt_jax import train
  def build(workdir):
    train.main(['train', f'--config={ROOT}/experiments/reward.py', f'--workdir={workdir}',
                f'--config.init_from={tiny_base}', f'--config.data.tasks={preference_file}',
                '--config.data.held_out_tasks=', '--config.preference.held_out=0.25',
                '--config.seq_len=48', '--config.steps=30', '--config.batch_size=8',
                '--config.log_every=10', '--config.eval_every=10', '--config.optim.lr=3e-3',
                '--config.optim.warmup_steps=5', '--config.data.num_epochs=20'])
  return shared_directory(tmp_path_factory, 'tiny_reward', build)


def directory_digest(directory) -> str:
  """sha256 of every file's name and bytes under `directory`: equal digests, untouched files."""
  h = hashlib.sha256()
  for root, _, names in sorted(os.walk(directory)):
    for name in sorted(names):
      with open(os.path.join(root, name), 'rb') as f:
        h.update(name.encode() + f.read())
  return h.hexdigest()
