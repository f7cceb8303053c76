"""Shared fixtures: a small real corpus on disk, and a cache that is never ~/.cache."""

import os

import pytest

from gpt_jax import corpus

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
