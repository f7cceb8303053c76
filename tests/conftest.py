"""Shared fixtures and helpers: a small real corpus on disk, tiny runs to fine-tune, a cache that
is never ~/.cache, the paths, metrics reader and command runner the test files share.

Tests import the helpers with `from conftest import X`."""

import hashlib
import json
import os
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


SMALL_PLAYS = ('the-comedy-of-errors', 'a-midsummer-night-s-dream', 'the-tempest', 'macbeth',
               'julius-caesar')


@pytest.fixture(scope='session', autouse=True)
def cache_root(tmp_path_factory):
  """Points GPT_JAX_CACHE at a fresh directory for the whole session."""
  root = tmp_path_factory.mktemp('cache')
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('GPT_JAX_CACHE', str(root))
    yield root


@pytest.fixture(scope='session')
def shakespeare() -> list[corpus.Document]:
  docs, _ = corpus.load_documents('shakespeare')
  return docs


@pytest.fixture(scope='session')
def small_corpus(tmp_path_factory, shakespeare) -> str:
  """A directory of five plays (~0.5 MB), one .txt file per scene: <play>/<nn>.txt."""
  root = tmp_path_factory.mktemp('small_corpus')
  for doc in shakespeare:
    name, number = os.path.basename(doc.source).split('.md#')
    if name in SMALL_PLAYS:
      os.makedirs(root / name, exist_ok=True)
      (root / name / f'{int(number):02d}.txt').write_text(doc.text, encoding='utf-8')
  return str(root)


@pytest.fixture(scope='session')
def tiny_base(small_corpus, tmp_path_factory) -> str:
  """The workdir of a finished experiments/tiny.py run on the small corpus: a base model to
  fine-tune (20 steps, seconds). Shared by every test: read it, never write into it; a test
  that resumes or changes a run of these settings works on a copy (shutil.copytree)."""
  from gpt_jax import cli, trainer
  config = cli.load_experiment(TINY)
  config.data.corpus, config.sample.num = small_corpus, 0
  workdir = str(tmp_path_factory.mktemp('tiny_base'))
  trainer.train(config, workdir, log=lambda _: None)
  return workdir


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
  return write_preferences(tmp_path_factory.mktemp('preferences') / 'pairs.jsonl')


@pytest.fixture(scope='session')
def tiny_reward(tiny_base, preference_file, tmp_path_factory) -> str:
  """The workdir of a reward model trained from tiny_base on preference_file through the command
  line (experiments/reward.py with tiny settings), finished and normalised."""
  from gpt_jax import train
  workdir = str(tmp_path_factory.mktemp('tiny_reward'))
  train.main(['train', '--config=experiments/reward.py', f'--workdir={workdir}',
              f'--config.init_from={tiny_base}', f'--config.data.tasks={preference_file}',
              '--config.data.held_out_tasks=', '--config.preference.held_out=0.25',
              '--config.seq_len=48', '--config.steps=30', '--config.batch_size=8',
              '--config.log_every=10', '--config.eval_every=10', '--config.optim.lr=3e-3',
              '--config.optim.warmup_steps=5', '--config.data.num_epochs=20'])
  return workdir


def directory_digest(directory) -> str:
  """sha256 of every file's name and bytes under `directory`: equal digests, untouched files."""
  h = hashlib.sha256()
  for root, _, names in sorted(os.walk(directory)):
    for name in sorted(names):
      with open(os.path.join(root, name), 'rb') as f:
        h.update(name.encode() + f.read())
  return h.hexdigest()
