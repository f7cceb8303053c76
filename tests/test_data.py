"""prepare(): splits, token files, manifest and cache; the grain training and evaluation batches."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from gpt_jax import clean
from gpt_jax import config
from gpt_jax import corpus
from gpt_jax import files
from gpt_jax import prepare as prepare_lib
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
  docs, _ = clean.clean_documents(corpus.load_documents(small_corpus)[0],
                                  clean.Settings.from_config(data_config(small_corpus)))
  val = [d for d in docs if data.is_validation(d.text, 0.1)]
  train = [d for d in docs if not data.is_validation(d.text, 0.1)]
  assert (len(docs), len(train), len(val)) == (74, 65, 9)
  assert os.path.dirname(prepared.directory) == os.path.join(cache_root, 'data')
  assert sorted(os.listdir(prepared.directory)) == ['manifest.json', 'tokenizer.model',
                                                    'train-00000.npy', 'val-00000.npy']
  eos = prepared.tokenizer.eos_id
  for split, split_docs in (('train', train), ('val', val)):
    tokens = prepared.tokens(split)
    ids = prepared.tokenizer.encode_batch([d.text for d in split_docs])
    expected = np.concatenate([i + [eos] for i in ids])  # each document, then EOS
    assert tokens.dtype == np.uint16 and isinstance(tokens, data.TokenShards)
    np.testing.assert_array_equal(tokens, expected)
    assert prepared.manifest['splits'][split] == {
        'documents': len(split_docs),
        'tokens': sum(len(i) + 1 for i in ids),
        'chars': sum(len(d.text) for d in split_docs),
        'bytes': sum(len(d.text.encode()) for d in split_docs),
        'lines': sum(d.text.count('\n') + 1 for d in split_docs),
        'shards': [{'file': f'{split}-00000.npy', 'tokens': len(tokens)}]}
    assert prepared.bytes_per_token(split) == pytest.approx(
        prepared.manifest['splits'][split]['bytes'] / len(tokens))
  assert prepared.manifest['splits']['train']['tokens'] == 246_297
  assert prepared.manifest['vocab_size'] == prepared.tokenizer.vocab_size == VOCAB
  assert prepared.manifest['tokenizer_sha256'] == prepared.tokenizer.sha256
  assert prepared.manifest['files'] == len(corpus.input_files(small_corpus)) == 74
  assert prepared.manifest['cleaning_counts']['removed'] == {}  # the plays are clean
  # the tokenizer saw the training split only
  assert prepared.tokenizer.sha256 == tokenizer_lib.train([d.text for d in train], VOCAB).sha256


def test_the_split_depends_on_the_text_alone(shakespeare):
  is_val = [data.is_validation(d.text, 0.05) for d in shakespeare]
  assert sum(is_val) == 40  # of 783, about 5%
  assert [data.is_validation(d.text, 0.05) for d in reversed(shakespeare)] == is_val[::-1]
  assert sum(data.is_validation(d.text, 0.5) for d in shakespeare) == 388


def test_prepare_reuses_the_cache_without_reading_or_training(prepared, small_corpus, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('prepare() redid work it had cached')
  monkeypatch.setattr(corpus, 'records', fail)
  monkeypatch.setattr(tokenizer_lib, 'train', fail)
  monkeypatch.setattr(tokenizer_lib.Tokenizer, 'encode_batch', fail)
  logs = []
  again = data.prepare(data_config(small_corpus), VOCAB, log=logs.append)
  assert again.directory == prepared.directory
  assert again.manifest == prepared.manifest
  assert logs[0] == f'reusing prepared data at {prepared.directory}, prepared earlier:'
  assert logs[3].startswith('  cleaning kept 74 of 74 documents')  # the report, as then's
  assert any(line.startswith('  trained a BPE tokenizer') for line in logs)


def test_settings_of_a_stage_that_is_off_do_not_change_the_cache_entry(prepared, small_corpus):
  for overrides in (dict(near_dedup_threshold=0.5, near_dedup_ngram=3), dict(url_field='link')):
    again = data.prepare(data_config(small_corpus, **overrides), VOCAB, log=lambda _: None)
    assert again.directory == prepared.directory


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
  write_json = files.write_json

  def write_while_another_run_finishes(path, obj):
    write_json(path, obj)
    build = os.path.dirname(path)
    theirs = tmp_path / 'data' / obj['key']
    shutil.copytree(build, theirs)
    (theirs / 'theirs').touch()

  monkeypatch.setattr(files, 'write_json', write_while_another_run_finishes)
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
  splits = {}
  for split, n in (('train', 1000), ('val', 250)):
    np.save(tmp_path / f'{split}.npy', np.arange(n, dtype=np.uint16))
    splits[split] = {'shards': [{'file': f'{split}.npy', 'tokens': n}]}
  return data.Prepared(str(tmp_path), tokenizer=None, manifest={'splits': splits})


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
  with pytest.raises(UserError, match=r'^the training split has 1,000 tokens, too few for one '
                     r'batch of 8x129 on each of 2 processes; lower --config.batch_size'):
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


def test_token_shards_read_as_one_array(tmp_path):
  paths = []
  for i, (start, stop) in enumerate([(0, 5), (5, 7), (7, 12)]):
    paths.append(str(tmp_path / f'{i}.npy'))
    np.save(paths[-1], np.arange(start, stop, dtype=np.uint16))
  tokens = data.TokenShards(paths)
  assert len(tokens) == 12 and tokens.dtype == np.uint16
  for start, stop in [(0, 12), (3, 9), (5, 7), (6, 8), (11, 12), (4, 4), (10, 20)]:
    np.testing.assert_array_equal(tokens[start:stop], np.arange(12)[start:stop])
  np.testing.assert_array_equal(np.asarray(tokens, np.int32), np.arange(12))
  assert [len(data.Windows(tokens, 4)[i]) for i in range(2)] == [5, 5]


@pytest.fixture(scope='module')
def sharded(small_corpus, tmp_path_factory) -> data.Prepared:
  """The `prepared` corpus through two worker processes, in shards of 10,000 tokens."""
  cfg = data_config(small_corpus, str(tmp_path_factory.mktemp('sharded')), workers=2,
                    shard_tokens=10_000)
  return data.prepare(cfg, VOCAB, log=lambda _: None)


def test_workers_and_shards_give_the_tokens_of_one_process(prepared, sharded):
  assert sharded.tokenizer.sha256 == prepared.tokenizer.sha256
  for split in data.SPLITS:
    shards = sharded.manifest['splits'][split]['shards']
    assert len(shards) == -(-prepared.manifest['splits'][split]['tokens'] // 10_000) > 1
    assert all(shard['tokens'] == 10_000 for shard in shards[:-1])
    tokens = sharded.tokens(split)
    np.testing.assert_array_equal(tokens[0:len(tokens)], prepared.tokens(split))
  assert sharded.manifest['splits']['val']['bytes'] == prepared.manifest['splits']['val']['bytes']


def assert_resumes_bit_for_bit(ds, first: list) -> None:
  """`ds` gives the batches `first`, then, restored from its state (through JSON, as a
  checkpoint keeps it), the same three batches again."""
  it = iter(ds.to_iter_dataset())
  for batch in first:
    np.testing.assert_array_equal(next(it), batch)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(3)]
  resumed = iter(ds.to_iter_dataset())
  resumed.set_state(state)
  for batch in expected:
    np.testing.assert_array_equal(next(resumed), batch)


def test_grain_batches_and_resume_over_shards_are_bitwise(prepared, sharded):
  ds = data.train_dataset(sharded, seq_len=64, batch_size=4, seed=3, num_epochs=2)
  one = data.train_dataset(prepared, seq_len=64, batch_size=4, seed=3, num_epochs=2)
  assert_resumes_bit_for_bit(ds, [one[i] for i in range(5)])
  val = data.eval_batches(sharded, 'val', seq_len=64, batch_size=8, max_batches=0)
  np.testing.assert_array_equal(
      np.stack(val), np.stack(data.eval_batches(prepared, 'val', seq_len=64, batch_size=8,
                                                max_batches=0)))


@pytest.mark.parametrize('overrides, message', [
    (dict(shard='0/2'), r"^data.shard=0/2 prepares one machine's part of the corpus: run python "
                        '-m gpt_jax.prepare with it on each machine'),
    (dict(bad_lines='maybe'), r"^data.bad_lines='maybe' is not 'stop' or 'skip'"),
    (dict(near_dedup=True, near_dedup_threshold=1.5), r'^data.near_dedup_threshold=1.5 is not in '
                                                      r'\(0, 1\]'),
    (dict(near_dedup=True, near_dedup_threshold=0.0), r'^data.near_dedup_threshold=0.0 is not in'),
    (dict(script='klingon', min_script_fraction=0.5), r"unknown script 'klingon'"),
    (dict(min_script_fraction=0.5), r'^data.min_script_fraction=0.5 needs a script to count'),
    (dict(near_dedup_threshold=0.0), r'^data.near_dedup_threshold=0.0 is not in'),
    (dict(blocked_hosts='spam.example'), r"^data.blocked_hosts is set, but no row of corpus .* has "
                                         r"a string field 'url' to check"),
])
def test_bad_preparation_settings_are_user_errors(small_corpus, tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    prepare_lib.prepare_directory(data_config(small_corpus, str(tmp_path), **overrides), VOCAB,
                                  log=lambda _: None)
  assert not os.path.exists(tmp_path / 'data') or os.listdir(tmp_path / 'data') == []


def test_a_bad_line_stops_before_anything_is_written_or_is_skipped(tmp_path):
  rows = [json.dumps({'text': f'Document {i} says hello to the world in many plain words.'})
          for i in range(40)]
  path = tmp_path / 'c.jsonl'
  path.write_text('\n'.join(rows[:20] + ['{"text": "cut'] + rows[20:]) + '\n')
  cfg = data_config(str(path), str(tmp_path / 'cache'), min_chars=10, val_fraction=0.2)
  with pytest.raises(UserError, match=r'c.jsonl:21 is not valid JSON'):
    data.prepare(cfg, 300, log=lambda _: None)
  assert os.listdir(tmp_path / 'cache' / 'data') == []
  cfg.bad_lines = 'skip'
  logs = []
  prepared = data.prepare(cfg, 300, log=logs.append)
  assert 'skipped 1 non-JSON line (data.bad_lines=skip), the first ' in logs[0]
  assert sum(s['documents'] for s in prepared.manifest['splits'].values()) == 40


@pytest.mark.slow
def test_memory_stays_flat_as_the_corpus_grows(tmp_path):
  """Preparing 4x the text takes about the same memory: it streams (the old prepare held every
  document and token: 12-24x the corpus). Loose bounds, so that the test is not flaky."""
  from gpt_jax import bench_data
  peaks = {}
  for mb in (3, 12):
    corpus_path = str(tmp_path / f'{mb}.jsonl')
    bench_data.generate(corpus_path, mb << 20)
    script = ('from gpt_jax import config, prepare\n'
              'cfg = config.base_config().data\n'
              f'cfg.corpus, cfg.cache_dir = {corpus_path!r}, {str(tmp_path / "cache")!r}\n'
              'cfg.workers, cfg.tokenizer_sentences, cfg.shard_tokens = 1, 20_000, 1 << 18\n'
              'prepare.prepare_directory(cfg, 512, log=lambda _: None)\n')
    result = bench_data.measure([sys.executable, '-c', script])
    assert result['returncode'] == 0, result
    peaks[mb] = result['peak_anon_bytes']
  assert peaks[12] - peaks[3] < 40 << 20, peaks  # 9 MB more text; the old prepare: > 100 MB more
  assert peaks[12] < 400 << 20, peaks


@pytest.mark.slow
def test_the_prepare_command_with_worker_processes(prepared, small_corpus, tmp_path):
  """python -m gpt_jax.prepare spawns its workers (which import the command's module) and gives
  the tokens of one process; a bad setting is one line and exit status 2."""

  def command(*overrides):
    return subprocess.run(
        [sys.executable, '-m', 'gpt_jax.prepare', f'--config={ROOT}/experiments/tiny.py',
         f'--config.data.corpus={small_corpus}', f'--config.data.cache_dir={tmp_path}',
         '--config.data.val_fraction=0.1', f'--config.model.vocab_size={VOCAB}', *overrides],
        capture_output=True, text=True, cwd=ROOT)

  result = command('--config.data.workers=2')
  assert result.returncode == 0, result.stderr
  directory = result.stdout.splitlines()[-1].removeprefix('prepared data: ')
  made = data.Prepared.open(directory)
  for split in data.SPLITS:
    np.testing.assert_array_equal(made.tokens(split), prepared.tokens(split))
  result = command('--config.data.shard=4/2')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: data.shard='4/2' is not 'i/N'")


def test_cleaning_everything_away_says_when_rows_had_no_text_field(tmp_path):
  path = tmp_path / 'c.jsonl'
  path.write_text('\n'.join([json.dumps({'body': 'short'})] + [
      json.dumps({'text': f'Document {i} has its words in another field.'}) for i in range(3)]))
  with pytest.raises(UserError, match=r': cleaning removed every one of its 1 documents '
                     r'\(quality 1\) \(3 rows without a string data.text_field were skipped: is '
                     r'--config.data.text_field right\?\); pass other text'):
    data.prepare(data_config(str(path), str(tmp_path / 'cache'), text_field='body'), 300,
                 log=lambda _: None)
