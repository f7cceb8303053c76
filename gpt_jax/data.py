"""Prepared data, and the grain pipelines that cut it into training and evaluation batches.

`prepare` cleans the corpus, splits it by document into train and val, trains the tokenizer on the
training split and writes each split as one stream of tokens (every document followed by EOS):
  <cache root>/data/<key>/manifest.json     what went in and how much came out
                          tokenizer.model (or tokenizer.json, a Hugging Face one)
                          train.npy, val.npy
The cache root is data.cache_dir, else $GPT_JAX_CACHE, else ~/.cache/gpt_jax. The key hashes every
input, so a run with the same corpus and settings reuses the directory instead of rebuilding it.
"""

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import grain
import ml_collections
import numpy as np

from gpt_jax import corpus
from gpt_jax import files
from gpt_jax import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError

FORMAT_VERSION = 3  # bump when the files prepare() writes change, so old caches are not reused
SPLITS = ('train', 'val')


@dataclasses.dataclass(frozen=True)
class Prepared:
  directory: str
  tokenizer: tokenizer_lib.Tokenizer
  manifest: dict

  def tokens(self, split: str) -> np.ndarray:
    """The split's tokens, memory-mapped."""
    return np.load(os.path.join(self.directory, f'{split}.npy'), mmap_mode='r')

  def bytes_per_token(self, split: str) -> float:
    """UTF-8 bytes of text per token: bits per byte = loss per token / ln 2 / bytes_per_token."""
    counts = self.manifest['splits'][split]
    return counts['bytes'] / counts['tokens']


def prepare(data_cfg: ml_collections.ConfigDict, vocab_size: int,
            log: Callable[[str], None] = print) -> Prepared:
  """The prepared data for `data_cfg` (config.data), from the cache or built into it."""
  docs, loaded = corpus.load_documents(data_cfg.corpus, data_cfg.text_field)
  log(loaded.summary())
  docs, cut = corpus.cut_long_documents(docs, data_cfg.max_document_chars, data_cfg.piece_chars)
  log(cut)
  given = _load_tokenizer(data_cfg.tokenizer, vocab_size) if data_cfg.tokenizer else None
  settings = {
      'format': FORMAT_VERSION,
      'source_sha256': source_sha256(docs),
      'max_document_chars': data_cfg.max_document_chars,
      'piece_chars': data_cfg.piece_chars,
      'min_chars': data_cfg.min_chars,
      'min_letter_fraction': data_cfg.min_letter_fraction,
      'val_fraction': data_cfg.val_fraction,
      # a given tokenizer fixes the tokens; a trained one depends on its vocab size
      'tokenizer': given.sha256 if given else f'trained to {vocab_size} tokens',
  }
  key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
  directory = os.path.join(files.cache_root(data_cfg.cache_dir), 'data', key)
  if os.path.exists(os.path.join(directory, 'manifest.json')):
    prepared = _open(directory)
    log(prepared.manifest['cleaning'])
    log(f'reusing prepared data at {directory}')
    return prepared

  docs, cleaned = corpus.clean(docs, data_cfg.min_chars, data_cfg.min_letter_fraction,
                               loaded=loaded)
  log(cleaned.summary())
  splits = {split: [] for split in SPLITS}
  for doc in docs:
    splits['val' if is_validation(doc.text, data_cfg.val_fraction) else 'train'].append(doc)
  for split, split_docs in splits.items():
    if not split_docs:
      raise UserError(f'the {split} split is empty: {len(docs)} documents with val_fraction '
                      f'{data_cfg.val_fraction}; use a larger corpus, a different '
                      '--config.data.val_fraction, or cut long documents into smaller pieces '
                      '(--config.data.max_document_chars, --config.data.piece_chars)')
  if given:
    tokenizer = given
  else:
    start = time.perf_counter()
    tokenizer = tokenizer_lib.train((doc.text for doc in splits['train']), vocab_size)
    log(f'trained a BPE tokenizer of {vocab_size} tokens in {time.perf_counter() - start:.1f}s')

  os.makedirs(os.path.dirname(directory), exist_ok=True)
  # Built beside its final place and renamed into it, so a killed run leaves no half-written cache.
  with tempfile.TemporaryDirectory(prefix='.tmp', dir=os.path.dirname(directory)) as tmp:
    _write(os.path.join(tmp, key), splits, tokenizer, {**settings, 'corpus': data_cfg.corpus, 'cleaning': cleaned.summary()}, log)
    try:
      os.rename(os.path.join(tmp, key), directory)
      log(f'prepared data at {directory}')
    except OSError:
      if not os.path.exists(os.path.join(directory, 'manifest.json')):
        raise
      log(f'reusing prepared data at {directory}, written meanwhile by another run')
  return _open(directory)


def _write(directory: str, splits: dict[str, list[corpus.Document]],
           tokenizer: tokenizer_lib.Tokenizer, inputs: dict, log: Callable[[str], None]) -> None:
  """Tokenizes the splits into a new `directory`, with the tokenizer and the manifest."""
  os.mkdir(directory)
  manifest = {**inputs, 'tokenizer_sha256': tokenizer.sha256, 'vocab_size': tokenizer.vocab_size,
              'splits': {}}
  dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
  for split, docs in splits.items():
    texts = [doc.text for doc in docs]
    tokens = token_stream(tokenizer.encode_batch(texts), tokenizer.eos_id, dtype)
    np.save(os.path.join(directory, f'{split}.npy'), tokens)
    manifest['splits'][split] = {'documents': len(texts), 'tokens': len(tokens),
                                 'bytes': sum(len(text.encode()) for text in texts)}
    log(f'{split}: {len(texts):,} documents, {len(tokens):,} tokens, '
        f'{sum(map(len, texts)) / len(tokens):.2f} characters per token')
  tokenizer.save(os.path.join(directory, tokenizer.filename))
  files.write_json(os.path.join(directory, 'manifest.json'), manifest)


def source_sha256(docs: Sequence[corpus.Document]) -> str:
  """A hash of the documents as read, sources and texts, before cleaning."""
  h = hashlib.sha256()
  for doc in docs:
    for field in (doc.source, doc.text):
      data = field.encode()
      h.update(len(data).to_bytes(8, 'little'))  # so no two lists of fields hash alike
      h.update(data)
  return h.hexdigest()


def is_validation(text: str, val_fraction: float) -> bool:
  """Whether a document goes to the validation split: decided by its text alone, not its order."""
  bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], 'big') % 1_000_000
  return bucket < val_fraction * 1_000_000


def token_stream(ids: Sequence[Sequence[int]], eos_id: int, dtype: np.dtype) -> np.ndarray:
  """The documents' tokens as one array, each document followed by EOS."""
  tokens = np.empty(sum(len(doc_ids) + 1 for doc_ids in ids), dtype)
  start = 0
  for doc_ids in ids:
    tokens[start:start + len(doc_ids)] = doc_ids
    tokens[start + len(doc_ids)] = eos_id
    start += len(doc_ids) + 1
  return tokens


def _load_tokenizer(path: str, vocab_size: int) -> tokenizer_lib.Tokenizer:
  tokenizer = tokenizer_lib.Tokenizer.load(path)
  if tokenizer.vocab_size > vocab_size:
    raise UserError(f'the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is '
                    f'{vocab_size}; set --config.model.vocab_size >= {tokenizer.vocab_size}')
  return tokenizer


def _open(directory: str) -> Prepared:
  with open(os.path.join(directory, 'manifest.json')) as f:
    manifest = json.load(f)
  tokenizer = tokenizer_lib.load(tokenizer_lib.find(directory))
  return Prepared(directory, tokenizer, manifest)


class Windows:
  """A token array as windows of seq_len + 1 tokens: inputs window[:-1], targets window[1:].

  Window i starts at token i·seq_len, so consecutive windows share one token (the last target of
  one is the first input of the next) and every token after the first is a target exactly once,
  up to the last whole window.
  """

  def __init__(self, tokens: np.ndarray, seq_len: int):
    self.tokens = tokens
    self.seq_len = seq_len

  def __len__(self) -> int:
    return max(0, (len(self.tokens) - 1) // self.seq_len)

  def __getitem__(self, i: int) -> np.ndarray:
    start = i * self.seq_len
    return np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int32)


def shuffled_batches(source, *, batch_size: int, seed: int, num_epochs: int = 1,
                     process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """This process's batches of the rows of `source` (a sequence: len() and [i]), batch_size rows
  each, in a checkpointable order: shuffled by `seed` and reshuffled each epoch, `num_epochs`
  times over; process p takes every process_count-th row from the p-th, the same number for each
  process. len() is the number of batches."""
  ds = grain.MapDataset.source(source)
  ds = ds.shuffle(seed=seed).repeat(num_epochs)  # repeat() reseeds the shuffle for each epoch
  per_process = len(ds) // process_count
  ds = ds[process_index:per_process * process_count:process_count]
  return ds.batch(batch_size, drop_remainder=True)


def train_dataset(prepared: Prepared, *, seq_len: int, batch_size: int, seed: int,
                  num_epochs: int = 1, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """This process's training batches of windows (shuffled_batches), int32
  (batch_size, seq_len + 1). `batch_size` is this process's share of the global batch."""
  tokens = prepared.tokens('train')
  ds = shuffled_batches(Windows(tokens, seq_len), batch_size=batch_size, seed=seed,
                        num_epochs=num_epochs, process_index=process_index,
                        process_count=process_count)
  if len(ds) == 0:
    processes = f' on each of {process_count} processes' if process_count > 1 else ''
    raise UserError(f'the training split has {len(tokens):,} tokens, too few for one batch of '
                    f'{batch_size}x{seq_len + 1}{processes}; lower --config.batch_size or '
                    '--config.seq_len, or use a larger corpus')
  return ds


def eval_batches(prepared: Prepared, split: str, *, seq_len: int, batch_size: int,
                 max_batches: int) -> list[np.ndarray]:
  """The first `max_batches` (0: all) batches of the split's windows in order, int32
  (batch_size, seq_len + 1)."""
  tokens = prepared.tokens(split)
  batches = grain.MapDataset.source(Windows(tokens, seq_len)).batch(batch_size, drop_remainder=True)
  if len(batches) == 0:
    raise UserError(f'the {split} split has {len(tokens):,} tokens, fewer than one batch of '
                    f'{batch_size}x{seq_len + 1}; lower --config.batch_size or --config.seq_len, '
                    'or raise --config.data.val_fraction')
  return [batches[i] for i in range(min(len(batches), max_batches or len(batches)))]
