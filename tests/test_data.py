"""prepare(): splits, token files, manifest and cache; the grain training and evaluation batches."""

import json
import os
import shutil

import numpy as np
import pytest

from gpt_jax import config
from gpt_jax import corpus
from gpt_jax import data
from gpt_jax import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError

VOCAB = 512


def data_config(small_corpus: str, cache_dir: str = '', **overrides):
  cfg = config.base_config().data
  cfg.corpus = small_corpus
  cfg.val_fraction = 0.1
  cfg.cache_dir = cache_dir
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope='module')
def prepared(small_corpus) -> data.Prepared:
  return data.prepare(data_config(small_corpus), VOCAB, log=lambda _: None)


def test_prepare_splits_by_document_and_counts_tokens(prepared, small_corpus, cache_root):
  docs, _ = corpus.clean(corpus.load_documents(small_corpus)[0], 200, 0.6)
  val = [d for d in docs if data.is_validation(d.text, 0.1)]
  train = [d for d in docs if not data.is_validation(d.text, 0.1)]
  assert (len(docs), len(train), len(val)) == (74, 65, 9)
  assert os.path.dirname(prepared.directory) == os.path.join(cache_root, 'data')
  assert sorted(os.listdir(prepared.directory)) == ['manifest.json', 'tokenizer.model', 'train.npy',
                                                    'val.npy']
  eos = prepared.tokenizer.eos_id
  for split, split_docs in (('train', train), ('val', val)):
    tokens = prepared.tokens(split)
    ids = prepared.tokenizer.encode_batch([d.text for d in split_docs])
    expected = np.concatenate([i + [eos] for i in ids])  # each document, then EOS
    assert tokens.dtype == np.uint16 and isinstance(tokens, np.memmap)
    np.testing.assert_array_equal(tokens, expected)
    assert prepared.manifest['splits'][split] == {
        'documents': len(split_docs),
        'tokens': sum(len(i) + 1 for i in ids),
        'bytes': sum(len(d.text.encode()) for d in split_docs)}
    assert prepared.bytes_per_token(split) == pytest.approx(
        prepared.manifest['splits'][split]['bytes'] / len(tokens))
  assert prepared.manifest['splits']['train']['tokens'] == 246_297
  assert prepared.manifest['vocab_size'] == prepared.tokenizer.vocab_size == VOCAB
  assert prepared.manifest['tokenizer_sha256'] == prepared.tokenizer.sha256
  raw, _ = corpus.load_documents(small_corpus)
  assert prepared.manifest['source_sha256'] == data.source_sha256(raw)
  # the tokenizer saw the training split only
  assert prepared.tokenizer.sha256 == tokenizer_lib.train([d.text for d in train], VOCAB).sha256


def test_the_split_depends_on_the_text_alone(shakespeare):
  is_val = [data.is_validation(d.text, 0.05) for d in shakespeare]
  assert sum(is_val) == 40  # of 783, about 5%
  assert [data.is_validation(d.text, 0.05) for d in reversed(shakespeare)] == is_val[::-1]
  assert sum(data.is_validation(d.text, 0.5) for d in shakespeare) == 388


def test_prepare_reuses_the_cache_without_cleaning_or_training(prepared, small_corpus, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('prepare() redid work it had cached')
  monkeypatch.setattr(corpus, 'clean', fail)
  monkeypatch.setattr(tokenizer_lib, 'train', fail)
  monkeypatch.setattr(tokenizer_lib.Tokenizer, 'encode_batch', fail)
  logs = []
  again = data.prepare(data_config(small_corpus), VOCAB, log=logs.append)
  assert again.directory == prepared.directory
  assert again.manifest == prepared.manifest
  assert logs[-2].startswith('cleaning kept 74 of 74 documents')  # the report is shown again
  assert logs[-1] == f'reusing prepared data at {prepared.directory}'


def test_each_setting_has_its_own_cache_entry(prepared, small_corpus):
  keys = {os.path.basename(prepared.directory)}
  for cfg, vocab in [(data_config(small_corpus, val_fraction=0.2), VOCAB),
                     (data_config(small_corpus, min_chars=300), VOCAB),
                     (data_config(small_corpus), VOCAB + 64)]:
    keys.add(os.path.basename(data.prepare(cfg, vocab, log=lambda _: None).directory))
  assert len(keys) == 4


def test_a_failed_prepare_leaves_nothing_behind(small_corpus, tmp_path, monkeypatch):
  def fail(*args, **kwargs):
    raise KeyboardInterrupt  # as if killed while writing the tokens
  monkeypatch.setattr(np, 'save', fail)
  with pytest.raises(KeyboardInterrupt):
    data.prepare(data_config(small_corpus, str(tmp_path)), VOCAB, log=lambda _: None)
  assert os.listdir(tmp_path / 'data') == []
  monkeypatch.undo()
  prepared = data.prepare(data_config(small_corpus, str(tmp_path)), VOCAB, log=lambda _: None)
  assert os.listdir(tmp_path / 'data') == [os.path.basename(prepared.directory)]


def test_prepare_keeps_the_copy_of_a_run_that_finished_first(small_corpus, tmp_path, monkeypatch):
  write = data._write

  def write_while_another_run_finishes(directory, *args):
    write(directory, *args)
    theirs = tmp_path / 'data' / os.path.basename(directory)
    shutil.copytree(directory, theirs)
    (theirs / 'theirs').touch()

  monkeypatch.setattr(data, '_write', write_while_another_run_finishes)
  logs = []
  prepared = data.prepare(data_config(small_corpus, str(tmp_path)), VOCAB, log=logs.append)
  assert logs[-1].startswith('reusing prepared data at ')
  assert os.listdir(tmp_path / 'data') == [os.path.basename(prepared.directory)]
  assert os.path.exists(os.path.join(prepared.directory, 'theirs'))


def test_a_given_tokenizer_is_used_and_checked_against_the_model(prepared, small_corpus, tmp_path):
  path = os.path.join(prepared.directory, 'tokenizer.model')
  cfg = data_config(small_corpus, str(tmp_path), tokenizer=path, val_fraction=0.2)
  given = data.prepare(cfg, 1024, log=lambda _: None)
  assert given.tokenizer.sha256 == prepared.tokenizer.sha256
  assert given.manifest['vocab_size'] == VOCAB
  with pytest.raises(UserError, match='^the tokenizer has 512 tokens but model.vocab_size is 500; '
                     'set --config.model.vocab_size >= 512$'):
    data.prepare(cfg, 500, log=lambda _: None)


@pytest.mark.parametrize('val_fraction, split', [(0.0, 'val'), (1.0, 'train')])
def test_an_empty_split_is_a_user_error(small_corpus, val_fraction, split):
  with pytest.raises(UserError, match=f'^the {split} split is empty: 74 documents with '
                     f'val_fraction {val_fraction}; use a larger corpus, a different '
                     r'--config.data.val_fraction, or cut long documents into smaller pieces '
                     r'\(--config.data.max_document_chars, --config.data.piece_chars\)$'):
    data.prepare(data_config(small_corpus, val_fraction=val_fraction), VOCAB, log=lambda _: None)


@pytest.fixture
def counting(tmp_path) -> data.Prepared:
  """Prepared data whose token i is i, so a window's first token says where it starts."""
  for split, n in (('train', 1000), ('val', 250)):
    np.save(tmp_path / f'{split}.npy', np.arange(n, dtype=np.uint16))
  return data.Prepared(str(tmp_path), tokenizer=None, manifest={})


def test_windows_shift_targets_by_one_and_target_every_token_once(counting):
  tokens = counting.tokens('train')
  windows = data.Windows(tokens, seq_len=7)
  assert len(windows) == 142  # (1000 - 1) // 7
  inputs = np.concatenate([windows[i][:-1] for i in range(len(windows))])
  targets = np.concatenate([windows[i][1:] for i in range(len(windows))])
  np.testing.assert_array_equal(inputs, tokens[:994])
  np.testing.assert_array_equal(targets, tokens[1:995])
  assert windows[3].dtype == np.int32 and windows[3].shape == (8,)
  assert [len(data.Windows(np.arange(n), 4)) for n in (0, 1, 4, 5, 8, 9)] == [0, 0, 0, 1, 1, 2]


def window_starts(batches, seq_len: int) -> list[int]:
  """Which windows the batches hold, in order (for `counting` data)."""
  return [int(row[0]) // seq_len for batch in batches for row in batch]


def test_train_dataset_shapes_and_shuffling(prepared, counting):
  ds = data.train_dataset(prepared, seq_len=64, batch_size=8, seed=0)
  assert len(ds) == (246_297 - 1) // 64 // 8
  assert ds[0].shape == (8, 65) and ds[0].dtype == np.int32

  one = data.train_dataset(counting, seq_len=10, batch_size=3, seed=0)  # 99 windows, 33 batches
  starts = window_starts([one[i] for i in range(len(one))], 10)
  assert len(one) == 33 and sorted(starts) == list(range(99)) and starts != sorted(starts)
  again = data.train_dataset(counting, seq_len=10, batch_size=3, seed=0)
  assert window_starts([again[i] for i in range(33)], 10) == starts
  other = data.train_dataset(counting, seq_len=10, batch_size=3, seed=1)
  assert window_starts([other[i] for i in range(33)], 10) != starts

  two = data.train_dataset(counting, seq_len=10, batch_size=3, seed=0, num_epochs=2)
  both = window_starts([two[i] for i in range(len(two))], 10)
  assert len(two) == 66 and both[:99] == starts
  assert sorted(both[99:]) == list(range(99)) and both[99:] != starts  # reshuffled


def test_processes_get_disjoint_equal_shares(counting):
  shares = [data.train_dataset(counting, seq_len=10, batch_size=4, seed=0, num_epochs=1,
                               process_index=p, process_count=3) for p in range(3)]
  assert [len(s) for s in shares] == [8, 8, 8]  # 99 windows: 33 each, 8 batches of 4 and 1 left
  starts = [window_starts([s[i] for i in range(len(s))], 10) for s in shares]
  assert len(set(starts[0] + starts[1] + starts[2])) == 96  # disjoint
  single = window_starts([data.train_dataset(counting, seq_len=10, batch_size=1, seed=0)[i]
                          for i in range(99)], 10)
  assert [starts[p][:4] for p in range(3)] == [single[p:12:3] for p in range(3)]  # interleaved


def test_an_iterator_resumes_mid_epoch_from_its_state(prepared):
  ds = data.train_dataset(prepared, seq_len=32, batch_size=4, seed=3, num_epochs=2)
  it = iter(ds.to_iter_dataset())
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # as a checkpoint would store it
  expected = [next(it) for _ in range(3)]
  resumed = iter(ds.to_iter_dataset())
  resumed.set_state(state)
  for batch in expected:
    np.testing.assert_array_equal(next(resumed), batch)
  np.testing.assert_array_equal(expected[0], ds[7])


def test_too_little_training_data_is_a_user_error(counting):
  with pytest.raises(UserError, match=r'^the training split has 1,000 tokens, too few for one batch '
                     r'of 8x129 on each of 2 processes; lower --config.batch_size'):
    data.train_dataset(counting, seq_len=128, batch_size=8, seed=0, process_count=2)


def test_eval_batches_are_the_first_windows_in_order(counting, prepared):
  batches = data.eval_batches(counting, 'val', seq_len=10, batch_size=4, max_batches=0)
  assert len(batches) == 6  # 24 windows of 249 targets
  assert window_starts(batches, 10) == list(range(24))
  assert all(b.shape == (4, 11) and b.dtype == np.int32 for b in batches)
  first = data.eval_batches(counting, 'val', seq_len=10, batch_size=4, max_batches=2)
  np.testing.assert_array_equal(np.stack(first), np.stack(batches[:2]))
  val = data.eval_batches(prepared, 'val', seq_len=64, batch_size=8, max_batches=0)
  assert len(val) == (prepared.manifest['splits']['val']['tokens'] - 1) // 64 // 8
  np.testing.assert_array_equal(val[0][0], prepared.tokens('val')[:65])
  with pytest.raises(UserError, match=r'^the val split has 250 tokens, fewer than one batch of '
                     r'4x101; lower --config.batch_size or --config.seq_len, or raise '
                     r'--config.data.val_fraction$'):
    data.eval_batches(counting, 'val', seq_len=100, batch_size=4, max_batches=0)


def test_one_long_text_file_is_cut_into_documents_and_split(small_corpus, tmp_path):
  """nanoGPT's input.txt: one file of plays, which as one document could not be split."""
  docs, _ = corpus.load_documents(small_corpus)
  (tmp_path / 'input.txt').write_text('\n\n'.join(d.text for d in docs), encoding='utf-8')
  logs = []
  cfg = data_config(str(tmp_path / 'input.txt'), val_fraction=0.05)
  prepared = data.prepare(cfg, VOCAB, log=logs.append)
  assert logs[1] == ('cut 1 document longer than data.max_document_chars=65,536 characters into '
                     '62 pieces of at most data.piece_chars=8,192 (at blank lines where possible, '
                     'else at line ends, else mid-line; the newlines at each cut dropped)')
  splits = prepared.manifest['splits']
  assert (splits['train']['documents'], splits['val']['documents']) == (60, 2)
  with pytest.raises(UserError, match='split is empty: 1 documents .*max_document_chars'):
    data.prepare(data_config(str(tmp_path / 'input.txt'), max_document_chars=0), VOCAB,
                 log=lambda _: None)  # not cut: one document, in one split or the other
