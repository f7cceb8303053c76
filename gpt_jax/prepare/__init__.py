"""Preparing a corpus for training: streamed, in bounded memory, on every core.

    python -m gpt_jax.prepare --config=FILE [--config.data.KEY=VALUE ...]   (__main__.py)

cleans the corpus, splits it by document into train and val, trains the tokenizer on the training
split and writes each split's tokens (every document followed by EOS) as .npy shards:
  <cache root>/data/<key>/manifest.json        what went in, what each stage removed, the shards
                          tokenizer.model (or tokenizer.json, a Hugging Face one)
                          train-00000.npy ...  data.shard_tokens tokens each, the last fewer
                          val-00000.npy ...
The cache root is data.cache_dir, else $GPT_JAX_CACHE, else ~/.cache/gpt_jax. The key hashes the
settings and each corpus file's path, size and modification time (not its bytes: a 40 GB corpus
would be read to find out that it is prepared already), so a run with the same corpus and
settings reuses the directory. Training (`gpt_jax.data.prepare`) calls the same function.

Two passes, each over worker processes (data.workers) that take chunks of about a megabyte:
  1. read → clean (corpus.documents, clean.inspect: workers) → de-duplicate (clean.Deduplicator:
     here, in corpus order) → split by a hash of each document's text → the kept documents to a
     temporary file per split; the tokenizer trains on the training file, sentencepiece keeping a
     seeded sample of data.tokenizer_sentences lines.
  2. tokenize (workers) → shards.
Memory holds a few chunks per worker, one shard being filled and the de-duplication keys (16
bytes per document, and with near_dedup its MinHash signature), never the corpus.

On several machines, gpt_jax.cluster_prepare runs the same stages on datatrove's executors,
de-duplicating across the whole corpus, into the directory this module would write (the command's
--config.data.shard=i/N is its front end for machine i of N). A corpus of datatrove's tokenized
.ds files is read in place (gpt_jax.token_files). The shards are .npy rather than ArrayRecord:
windows of tokens are slices of a memory map, no records to decode, and numpy needs no other
package.
"""

import functools
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import ml_collections
import numpy as np
import tqdm

from gpt_jax import clean, corpus, files, token_files, workers
from gpt_jax import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError

FORMAT_VERSION = 5  # bump when the files written change, so old caches are not reused
SPLITS = ('train', 'val')
_CHUNK_BYTES = 1 << 20  # input per task sent to a worker


def prepare_directory(data_cfg: ml_collections.ConfigDict, vocab_size: int,
                      log: Callable[[str], None] = print) -> str:
  """The prepared data directory of `data_cfg` (config.data), from the cache or built on this
  machine (prepared on several, data.shard, by gpt_jax.cluster_prepare into the same place)."""
  if data_cfg.shard:
    raise UserError(f'data.shard={data_cfg.shard} prepares one machine\'s part of the corpus: run '
                    'python -m gpt_jax.prepare with it on each machine, then train without '
                    '--config.data.shard')
  cleaning, given, paths = inputs(data_cfg, vocab_size)
  if any(map(token_files.is_token_file, paths)):
    return _prepare_token_files(paths, data_cfg, given, log)
  settings, directory = keyed_settings(data_cfg, vocab_size, cleaning, given, paths)
  if _exists(directory):
    # The preparation's own report, shown again as what was done then, not now.
    log(f'reusing prepared data at {directory}, prepared earlier:')
    for line in read_manifest(directory)['log']:
      log(f'  {line}')
    return directory
  if os.path.isdir(directory) and os.listdir(directory):
    raise UserError(f'{directory} holds no finished preparation (the parts of an older version?); '
                    'remove it and run again')
  return _build(directory, paths, settings, data_cfg=data_cfg, vocab_size=vocab_size,
                cleaning=cleaning, given=given, log=log)


def inputs(data_cfg, vocab_size: int) -> tuple[clean.Settings, object, list[str]]:
  """(the cleaning settings, the given tokenizer or None, the corpus files) of config.data,
  checked: UserError naming the setting to fix."""
  corpus.check_cut_settings(data_cfg.max_document_chars, data_cfg.piece_chars)
  if data_cfg.bad_lines not in ('stop', 'skip'):
    raise UserError(f"data.bad_lines={data_cfg.bad_lines!r} is not 'stop' or 'skip'; fix "
                    '--config.data.bad_lines')
  if data_cfg.tokenizer_sentences < 1 or data_cfg.shard_tokens < 1:
    raise UserError(f'data.tokenizer_sentences={data_cfg.tokenizer_sentences} and '
                    f'data.shard_tokens={data_cfg.shard_tokens} must be >= 1; fix --config.data')
  cleaning = clean.Settings.from_config(data_cfg)
  given = _load_tokenizer(data_cfg.tokenizer, vocab_size) if data_cfg.tokenizer else None
  return cleaning, given, corpus.input_files(data_cfg.corpus)


def keyed_settings(data_cfg, vocab_size: int, cleaning: clean.Settings, given,
                   paths: list[str]) -> tuple[dict, str]:
  """(the settings that decide the prepared data, with their 'key'; its directory in the cache):
  the same settings give the same directory, however it is prepared."""
  settings = {
      'format': FORMAT_VERSION,
      'files': [_file_stamp(path) for path in paths],
      'text_field': data_cfg.text_field, 'bad_lines': data_cfg.bad_lines,
      # the url field is read only for the host block list
      'url_field': data_cfg.url_field if cleaning.blocked_hosts else '',
      'max_document_chars': data_cfg.max_document_chars, 'piece_chars': data_cfg.piece_chars,
      'stages': cleaning.key(),
      'val_fraction': data_cfg.val_fraction,
      'shard_tokens': data_cfg.shard_tokens,
      # a given tokenizer fixes the tokens; a trained one depends on its vocab size and sample
      'tokenizer': given.sha256 if given else (
          f'trained to {vocab_size} tokens on {data_cfg.tokenizer_sentences} lines'),
  }
  key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
  settings['key'] = key
  return settings, os.path.join(files.cache_root(data_cfg.cache_dir), 'data', key)


def _prepare_token_files(paths: list[str], data_cfg, tokenizer, log) -> str:
  """The prepared directory of a corpus of datatrove .ds token files (gpt_jax.token_files)."""
  if not all(map(token_files.is_token_file, paths)):
    raise UserError(f'data.corpus={data_cfg.corpus!r} mixes .ds token files with text files; '
                    'name only one kind')
  if tokenizer is None:
    raise UserError(f'data.corpus={data_cfg.corpus!r} is already tokenized (.ds files): pass the '
                    'tokenizer it was made with as --config.data.tokenizer')
  if data_cfg.shard:
    raise UserError(f'data.shard={data_cfg.shard}: .ds token files are read in place, not '
                    'prepared in parts; drop --config.data.shard')
  key = token_files.settings_key(paths, tokenizer, data_cfg.val_fraction)
  directory = os.path.join(files.cache_root(data_cfg.cache_dir), 'data', key)
  if _exists(directory):
    log(f'reusing prepared data at {directory}')
    return directory
  return token_files.prepare(paths, tokenizer, data_cfg.val_fraction, directory, log)


def read_manifest(directory: str) -> dict:
  with open(os.path.join(directory, 'manifest.json')) as f:
    return json.load(f)


def is_validation(text: str, val_fraction: float) -> bool:
  """Whether a document goes to the validation split: decided by its text alone, not its order."""
  bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], 'big') % 1_000_000
  return bucket < val_fraction * 1_000_000


def token_stream(ids: list[list[int]], eos_id: int, dtype: np.dtype) -> np.ndarray:
  """The documents' tokens as one array, each document followed by EOS."""
  tokens = np.empty(sum(len(doc_ids) + 1 for doc_ids in ids), dtype)
  start = 0
  for doc_ids in ids:
    tokens[start:start + len(doc_ids)] = doc_ids
    tokens[start + len(doc_ids)] = eos_id
    start += len(doc_ids) + 1
  return tokens


def _file_stamp(path: str) -> list:
  try:
    stat = os.stat(path)
  except OSError as e:
    raise UserError(f"cannot read corpus file '{path}': {e.strerror}; fix or remove it") from None
  return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def _exists(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, 'manifest.json'))


def _load_tokenizer(path: str, vocab_size: int):
  tokenizer = tokenizer_lib.load(path)
  if tokenizer.vocab_size > vocab_size:
    raise UserError(f'the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is '
                    f'{vocab_size}; set --config.model.vocab_size >= {tokenizer.vocab_size}')
  return tokenizer


def _build(directory: str, paths: list[str], settings: dict, *, data_cfg, vocab_size: int,
           cleaning: clean.Settings, given, log: Callable[[str], None]) -> str:
  """Prepares `paths` into `directory`: built beside it and renamed into place, so a killed run
  leaves no half-written data."""
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  input_bytes = sum(stamp[1] for stamp in settings['files'])
  with tempfile.TemporaryDirectory(prefix='.tmp', dir=parent) as tmp, \
      workers.Workers(workers.count(data_cfg.workers, input_bytes)) as pool:
    texts = os.path.join(tmp, 'texts')
    build = os.path.join(tmp, 'build')
    os.mkdir(texts)
    os.mkdir(build)
    lines, counts, cleaned, loaded = _clean_pass(pool, paths, data_cfg, cleaning, texts, log)
    if given:
      tokenizer = given
    else:
      start = time.perf_counter()
      sample = _tokenizer_sample(os.path.join(texts, 'train'), counts['train']['lines'],
                                 data_cfg.tokenizer_sentences)
      tokenizer = tokenizer_lib.train(sample, vocab_size, sentences=data_cfg.tokenizer_sentences)
      lines.append(f'trained a BPE tokenizer of {vocab_size} tokens in '
                   f'{time.perf_counter() - start:.1f}s')
      log(lines[-1])
    tokenizer.save(os.path.join(build, tokenizer.filename))
    splits = _tokenize_pass(pool, texts, build, tokenizer, counts, data_cfg.shard_tokens, log)
    lines += [_split_line(split, s) for split, s in splits.items()]
    manifest = {**settings, 'files': len(paths), 'corpus': data_cfg.corpus,
                'read': loaded.to_json(), 'cleaning': cleaned.summary(cleaning),
                'cleaning_counts': cleaned.to_json(), 'log': lines,
                'tokenizer_sha256': tokenizer.sha256, 'vocab_size': tokenizer.vocab_size,
                'splits': splits}
    files.write_json(os.path.join(build, 'manifest.json'), manifest)
    try:
      os.rename(build, directory)
      log(f'prepared data at {directory}')
    except OSError:
      if not _exists(directory):
        raise
      log(f'reusing prepared data at {directory}, written meanwhile by another run')
  return directory


def _split_line(split: str, counts: dict) -> str:
  return (f'{split}: {counts["documents"]:,} documents, {counts["tokens"]:,} tokens, '
          f'{counts["chars"] / max(counts["tokens"], 1):.2f} characters per token')


def _chunks(paths: list[str], data_cfg, progress) -> Iterator[list[corpus.Record]]:
  """The corpus's records in chunks, read as the workers need them."""
  records = (record for path in paths
             for record in corpus.records(path, shakespeare=data_cfg.corpus == 'shakespeare',
                                          max_chars=data_cfg.max_document_chars,
                                          piece_chars=data_cfg.piece_chars))
  return _chunked(records, lambda record: record.size, progress)


def _chunked(items, size_of, progress) -> Iterator[list]:
  """`items` in lists of about _CHUNK_BYTES by size_of(item), the bytes counted in `progress`."""
  chunk, size = [], 0
  for item in items:
    chunk.append(item)
    size += size_of(item)
    if size >= _CHUNK_BYTES:
      progress.update(size)
      yield chunk
      chunk, size = [], 0
  progress.update(size)
  if chunk:
    yield chunk


def _inspect_chunk(records: list[corpus.Record], *, read: dict,
                   cleaning: clean.Settings) -> tuple[corpus.LoadReport, list[clean.Inspected]]:
  """A worker's part of the cleaning pass: a chunk's documents through their own stages."""
  report = corpus.LoadReport('')
  inspected = [clean.inspect(doc, cleaning) for record in records
               for doc in corpus.documents(record, report, **read)]
  return report, inspected


def _clean_pass(pool: workers.Workers, paths: list[str], data_cfg, cleaning: clean.Settings,
                texts: str, log
                ) -> tuple[list[str], dict, clean.CleanReport, corpus.LoadReport]:
  """Pass 1: the kept documents of each split into texts/<split>; the log lines, the splits'
  counts, the cleaning report and what was read. UserError for no text, nothing kept or an
  empty split (check_prepared)."""
  loaded = corpus.LoadReport(data_cfg.corpus, len(paths))
  cleaned, dedup = clean.CleanReport(), clean.Deduplicator(cleaning)
  read = dict(text_field=data_cfg.text_field, url_field=data_cfg.url_field,
              bad_lines=data_cfg.bad_lines, max_chars=data_cfg.max_document_chars,
              piece_chars=data_cfg.piece_chars)
  task = functools.partial(_inspect_chunk, read=read, cleaning=cleaning)
  counts = {split: {'documents': 0, 'chars': 0, 'bytes': 0, 'lines': 0} for split in SPLITS}
  input_bytes = sum(os.path.getsize(p) for p in paths)
  start = time.perf_counter()
  with _progress(input_bytes, 'cleaning') as progress, \
      _TextWriter(os.path.join(texts, 'train')) as train, \
      _TextWriter(os.path.join(texts, 'val')) as val:
    for report, inspected in pool.map(task, _chunks(paths, data_cfg, progress)):
      loaded.add(report)
      for item in inspected:
        stage = item.removed_by or dedup.duplicate_of_earlier(item)
        cleaned.count(item, stage)
        if not stage:
          split = 'val' if is_validation(item.doc.text, data_cfg.val_fraction) else 'train'
          count_document(counts[split], item.doc.text,
                         (train if split == 'train' else val).write(item.doc.text))
      progress.set_postfix_str(f'{loaded.num_documents / (time.perf_counter() - start):,.0f} '
                               'documents/s', refresh=False)
  seconds = time.perf_counter() - start
  check_prepared(loaded, cleaned, cleaning, counts, data_cfg)
  lines = [loaded.summary(),
           loaded.cut_summary(data_cfg.max_document_chars, data_cfg.piece_chars),
           cleaned.summary(cleaning),
           f'read and cleaned {input_bytes / 1e6:,.1f} MB in {seconds:.1f}s with {pool.count} '
           f'worker{"s" * (pool.count > 1)}: {input_bytes / 1e6 / seconds:,.1f} MB/s, '
           f'{loaded.num_documents / seconds:,.0f} documents/s']
  for line in lines:
    log(line)
  return lines, counts, cleaned, loaded


def count_document(counts: dict, text: str, size: int) -> None:
  """Adds a kept document of `text` (`size` UTF-8 bytes) to its split's counts."""
  for name, n in (('documents', 1), ('chars', len(text)), ('bytes', size),
                  ('lines', text.count('\n') + 1)):
    counts[name] += n


def check_prepared(loaded: corpus.LoadReport, cleaned: clean.CleanReport,
                   cleaning: clean.Settings, counts: dict, data_cfg) -> None:
  """UserError for a corpus that gave no text, no document to keep or an empty split; `counts`
  per split hold 'documents'."""
  if not loaded.num_chars:
    raise corpus.empty_corpus_error(loaded, data_cfg.text_field)
  if cleaning.blocked_hosts and not loaded.urls:
    raise UserError(f'data.blocked_hosts is set, but no row of corpus {data_cfg.corpus} has a '
                    f"string field '{data_cfg.url_field}' to check; set --config.data.url_field")
  cleaned.check_kept(cleaning, loaded)
  for split in SPLITS:
    if not counts[split]['documents']:
      raise UserError(f'the {split} split is empty: {cleaned.kept_documents} documents with '
                      f'val_fraction {data_cfg.val_fraction}; use a larger corpus, a different '
                      '--config.data.val_fraction, or cut long documents into smaller pieces '
                      '(--config.data.max_document_chars, --config.data.piece_chars)')


def _encode_chunk(texts: list[str], *, tokenizer_path: str, dtype: str,
                  threads: int) -> np.ndarray:
  """A worker's part of the tokenizing pass: a chunk of documents as one token stream."""
  tokenizer = _cached_tokenizer(tokenizer_path)
  return token_stream(tokenizer.encode_batch(texts, threads), tokenizer.eos_id, np.dtype(dtype))


@functools.lru_cache(maxsize=1)
def _cached_tokenizer(path: str):
  return tokenizer_lib.load(path)


def _tokenize_pass(pool: workers.Workers, texts: str, build: str, tokenizer, counts: dict,
                   shard_tokens: int, log) -> dict:
  """Pass 2: each split's documents as shards of tokens in `build`; the manifest's splits."""
  dtype = token_files.token_dtype(tokenizer.vocab_size).str
  # Worker processes encode on one thread each: more threads than cores only contend.
  task = functools.partial(_encode_chunk, dtype=dtype, threads=1 if pool.count > 1 else 0,
                           tokenizer_path=os.path.join(build, tokenizer.filename))
  splits = {}
  for split in SPLITS:
    path = os.path.join(texts, split)
    start = time.perf_counter()
    with _progress(os.path.getsize(path), f'tokenizing {split}') as progress:
      writer = _ShardWriter(build, split, shard_tokens, np.dtype(dtype))
      for tokens in pool.map(task, _text_chunks(path, progress)):
        writer.add(tokens)
      shards = writer.close()
    tokens = sum(shard['tokens'] for shard in shards)
    splits[split] = {**counts[split], 'tokens': tokens, 'shards': shards}
    seconds = time.perf_counter() - start
    log(f'{_split_line(split, splits[split])}; tokenized in {seconds:.1f}s: '
        f'{counts[split]["bytes"] / 1e6 / seconds:,.1f} MB/s')
  return splits


def _progress(total: int, what: str):
  """A progress bar of input bytes on a terminal's stderr (none in logs or tests)."""
  return tqdm.tqdm(total=total, desc=what, unit='B', unit_scale=True, file=sys.stderr,
                   disable=None, leave=False)


class _TextWriter:
  """Documents to a file, each as its UTF-8 length (8 bytes, little-endian) and bytes."""

  def __init__(self, path: str):
    self._file = open(path, 'wb')

  def write(self, text: str) -> int:
    data = text.encode()
    self._file.write(len(data).to_bytes(8, 'little'))
    self._file.write(data)
    return len(data)

  def __enter__(self) -> '_TextWriter':
    return self

  def __exit__(self, *exc) -> None:
    self._file.close()


def _read_texts(path: str) -> Iterator[str]:
  """The documents _TextWriter wrote, in order."""
  with open(path, 'rb') as f:
    while header := f.read(8):
      yield f.read(int.from_bytes(header, 'little')).decode()


def _tokenizer_sample(path: str, lines: int, sentences: int) -> Iterator[str]:
  """The training documents the tokenizer reads: all when they hold at most `sentences` lines,
  else a seeded sample of about that many lines, chosen by a hash of each document's text.
  Sentencepiece keeps a uniform sample of `sentences` lines of whatever it reads, but streaming
  every line of a large corpus through it takes as long as training (3.9 s of 7.8 s for 8.5M
  lines); this sample is read in a fraction of that."""
  rate = min(1.0, sentences / max(lines, 1))
  for text in _read_texts(path):
    if rate == 1.0 or _bucket(b'tokenizer sample', text) < rate:
      yield text


def _bucket(salt: bytes, text: str) -> float:
  """A number in [0, 1) that a document's text gives, the same in every process and run."""
  return int.from_bytes(hashlib.sha256(salt + text.encode()).digest()[:8], 'big') / 2**64


def _text_chunks(path: str, progress) -> Iterator[list[str]]:
  return _chunked(_read_texts(path), lambda text: len(text) + 8, progress)


class _ShardWriter:
  """A split's token stream as .npy files of shard_tokens tokens (the last may hold fewer)."""

  def __init__(self, directory: str, split: str, shard_tokens: int, dtype: np.dtype):
    self._directory, self._split, self._size = directory, split, shard_tokens
    self._buffer = np.empty(shard_tokens, dtype)
    self._filled = 0
    self._shards = []

  def add(self, tokens: np.ndarray) -> None:
    while len(tokens):
      n = min(len(tokens), self._size - self._filled)
      self._buffer[self._filled:self._filled + n] = tokens[:n]
      self._filled += n
      tokens = tokens[n:]
      if self._filled == self._size:
        self._flush()

  def close(self) -> list[dict]:
    if self._filled or not self._shards:
      self._flush()
    return self._shards

  def _flush(self) -> None:
    name = f'{self._split}-{len(self._shards):05d}.npy'
    np.save(os.path.join(self._directory, name), self._buffer[:self._filled])
    self._shards.append({'file': name, 'tokens': self._filled})
    self._filled = 0
