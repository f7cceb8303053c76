"""datatrove's tokenized .ds files read in place (gpt_jax.token_files): the tokens datatrove's
own DocumentTokenizer writes are prepare's token stream, split by document, batched and resumed
like prepared shards; files unfinished, without an index or of another tokenizer are refused."""

import itertools
import json
import os
import struct

import numpy as np
import pytest

from gpt_jax import config, corpus, data, token_files
from gpt_jax.errors import UserError
from gpt_jax.tokenizer import HFTokenizer
from test_data import assert_resumes_bit_for_bit
from test_tokenizer import byte_level_bpe

VOCAB = 400


@pytest.fixture(scope='module')
def texts(small_corpus) -> list[str]:
  return [d.text for d in corpus.load_documents(small_corpus)[0]][:40]


@pytest.fixture(scope='module')
def tokenizer_path(texts, tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp('tok') / 'tokenizer.json'
  path.write_text(byte_level_bpe(texts, VOCAB))
  return str(path)


@pytest.fixture(scope='module')
def tokenized(texts, tokenizer_path, tmp_path_factory) -> str:
  """The texts in two .jsonl files tokenized by datatrove's DocumentTokenizer, in file order."""
  pytest.importorskip('datatrove', reason="needs datatrove: pip install -e '.[cluster]'")
  from datatrove.executor import LocalPipelineExecutor
  from datatrove.pipeline.readers import JsonlReader
  from datatrove.pipeline.tokens import DocumentTokenizer
  root = tmp_path_factory.mktemp('datatrove')
  os.makedirs(root / 'jsonl')
  for i, part in enumerate((texts[:25], texts[25:])):
    (root / 'jsonl' / f'{i}.jsonl').write_text(
        '\n'.join(json.dumps({'text': t, 'id': str(j)}) for j, t in enumerate(part)))
  LocalPipelineExecutor(pipeline=[
      JsonlReader(str(root / 'jsonl')),
      DocumentTokenizer(str(root / 'tokens'), tokenizer_path, eos_token='<|endoftext|>',
                        shuffle_documents=False)],
      tasks=2, workers=1, logging_dir=str(root / 'logs')).run()
  return str(root / 'tokens')


def data_config(spec: str, cache_dir: str, tokenizer: str, **overrides):
  cfg = config.base_config().data
  cfg.update(corpus=spec, cache_dir=cache_dir, tokenizer=tokenizer, val_fraction=0.1)
  cfg.update(overrides)
  return cfg


def test_datatroves_tokens_are_prepares_stream_split_by_document(texts, tokenizer_path,
                                                                 tokenized, tmp_path):
  prepared = data.prepare(data_config(tokenized, str(tmp_path), tokenizer_path), VOCAB,
                          log=lambda _: None)
  tokenizer = HFTokenizer.load(tokenizer_path)
  ids = tokenizer.encode_batch(texts)
  # Per file, its last round(0.1 n) documents are validation: 25 -> 22 + 3 (2.5 rounds to 2).
  train = ids[:23] + ids[25:38]
  val = ids[23:25] + ids[38:40]
  expected = {'train': data.token_stream(train, tokenizer.eos_id, np.uint16),
              'val': data.token_stream(val, tokenizer.eos_id, np.uint16)}
  for split, tokens in expected.items():
    np.testing.assert_array_equal(np.asarray(prepared.tokens(split)), tokens)
  assert prepared.manifest['splits']['val']['bytes'] == sum(
      len(tokenizer.decode(doc).encode()) for doc in val)
  assert all(s['file'].endswith('.ds') for s in prepared.manifest['splits']['train']['shards'])

  ds = data.train_dataset(prepared, seq_len=32, batch_size=4, seed=3, num_epochs=2)
  first = list(itertools.islice(iter(ds.to_iter_dataset()), 3))
  assert_resumes_bit_for_bit(ds, first)
  again = data.prepare(data_config(tokenized, str(tmp_path), tokenizer_path), VOCAB,
                       log=lambda _: None)
  assert again.directory == prepared.directory  # reused


def write_ds(path, documents: list[list[int]], index: bool = True, metadata: str | None = None):
  tokens = [t for doc in documents for t in doc]
  with open(path, 'wb') as f:
    f.write(struct.pack(f'<{len(tokens)}H', *tokens))
  if index:
    with open(f'{path}.index', 'wb') as f:
      ends = np.cumsum([len(doc) for doc in documents]).tolist()
      f.write(struct.pack(f'<{len(ends)}Q', *ends))
  if metadata is not None:
    with open(f'{path}.metadata', 'w') as f:
      f.write(metadata)


def test_bad_token_files_are_one_line(tokenizer_path, tmp_path):
  eos = HFTokenizer.load(tokenizer_path).eos_id
  prepare = lambda spec, **kw: data.prepare(
      data_config(spec, str(tmp_path / 'cache'), kw.pop('tokenizer', tokenizer_path), **kw),
      VOCAB, log=lambda _: None)
  docs = [[5, 6, eos], [7, eos], [8, 9, 10, eos]] * 4
  cases = {'noindex': (dict(index=False), r"has no index '.*noindex.ds.index' of its documents"),
           'ids': (dict(documents=[[5, VOCAB + 3, eos]] * 12),
                   rf'holds token id {VOCAB + 3}, beyond the tokenizer'),
           'noeos': (dict(documents=[[5, 6]] * 12),
                     r"documents do not end with the tokenizer's EOS"),
           'size': (dict(metadata='gpt2|4\n36\n36'), r'holds 4-byte tokens, but the tokenizer of')}
  for name, (kwargs, message) in cases.items():
    path = tmp_path / f'{name}.ds'
    write_ds(path, kwargs.pop('documents', docs), **kwargs)
    with pytest.raises(UserError, match=message):
      prepare(str(path))
  write_ds(tmp_path / 'cut.ds', docs)
  with open(tmp_path / 'cut.ds', 'r+b') as f:
    f.truncate(20)  # a task killed while writing
  with pytest.raises(UserError, match=r"holds 20 bytes but its index ends at 36 tokens of 2 "
                     'bytes: it is unfinished or damaged; rerun the task that wrote it'):
    prepare(str(tmp_path / 'cut.ds'))
  write_ds(tmp_path / 'good.ds', docs)
  with pytest.raises(UserError, match=r'is already tokenized \(.ds files\): pass the tokenizer'):
    prepare(str(tmp_path / 'good.ds'), tokenizer='')
  (tmp_path / 'a.txt').write_text('text')
  with pytest.raises(UserError, match=r'mixes .ds token files with text files'):
    prepare(f'{tmp_path / "good.ds"},{tmp_path / "a.txt"}')
  with pytest.raises(UserError, match=r'the val split is empty: 1 .ds files with val_fraction'):
    prepare(str(tmp_path / 'good.ds'), val_fraction=0.01)
  with pytest.raises(UserError, match=r"holds tokens \(a datatrove .ds file\), not text"):
    corpus.load_documents(str(tmp_path / 'good.ds'))
  assert not os.path.exists(tmp_path / 'cache' / 'data') or not any(
      os.path.exists(os.path.join(tmp_path / 'cache' / 'data', d, 'manifest.json'))
      for d in os.listdir(tmp_path / 'cache' / 'data'))
  assert token_files.is_token_file(str(tmp_path / 'good.ds'))
