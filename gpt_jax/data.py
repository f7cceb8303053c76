"""Prepared data, and the grain pipelines that cut it into training and evaluation batches.

`prepare` gives the corpus of config.data cleaned, split into train and val, tokenized and kept
in the cache as .npy shards (gpt_jax.prepare builds it: streamed, on every core; on several
machines gpt_jax.cluster_prepare, as .ds files), or a corpus tokenized by datatrove, read in
place (gpt_jax.token_files);
`Prepared.tokens(split)` reads a split's shards as one memory-mapped sequence of tokens.
"""

import dataclasses
import os
from collections.abc import Callable, Sequence

import grain
import ml_collections
import numpy as np

from gpt_jax import prepare as prepare_lib
from gpt_jax import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError
from gpt_jax.prepare import is_validation, token_stream  # noqa: F401 (this module's API too)

SPLITS = prepare_lib.SPLITS


@dataclasses.dataclass(frozen=True)
class Prepared:
  directory: str
  tokenizer: tokenizer_lib.Tokenizer
  manifest: dict

  @classmethod
  def open(cls, directory: str) -> 'Prepared':
    tokenizer = tokenizer_lib.load(tokenizer_lib.find(directory))
    return cls(directory, tokenizer, prepare_lib.read_manifest(directory))

  def tokens(self, split: str) -> 'TokenShards':
    """The split's tokens, read from its shards as they are asked for."""
    path = lambda shard: os.path.join(self.directory, shard['file'])  # or absolute
    return TokenShards([path(shard) if 'start' not in shard else
                        (path(shard), shard['start'], shard['tokens'], shard['dtype'])
                        for shard in self.manifest['splits'][split]['shards']])

  def bytes_per_token(self, split: str) -> float:
    """UTF-8 bytes of text per token: bits per byte = loss per token / ln 2 / bytes_per_token."""
    counts = self.manifest['splits'][split]
    return counts['bytes'] / counts['tokens']


def prepare(data_cfg: ml_collections.ConfigDict, vocab_size: int,
            log: Callable[[str], None] = print) -> Prepared:
  """The prepared data for `data_cfg` (config.data), from the cache or built into it; UserError
  with data.shard (one machine's part: python -m gpt_jax.prepare)."""
  return Prepared.open(prepare_lib.prepare_directory(data_cfg, vocab_size, log))


class TokenShards:
  """Shards of tokens read as their concatenation: len(), slices [start:stop] (step 1, a window
  may span two shards) and np.asarray. A shard is a .npy file (its path), or a range of a raw
  token file (path, first token, tokens, dtype: gpt_jax.token_files). A slice is one positional
  read of just its tokens: no memory map, whose pages would count in the process's resident
  memory (random windows under the kernel's readahead touch far more pages than they use;
  measured, README)."""

  def __init__(self, shards: Sequence):
    self._files = []  # (path, byte offset of the data, number of tokens)
    dtype = None
    for shard in shards:
      if isinstance(shard, str):
        with open(shard, 'rb') as f:
          fmt = np.lib.format
          read_header = (fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0)
                         else fmt.read_array_header_2_0)
          shape, _, dtype = read_header(f)
          self._files.append((shard, f.tell(), shape[0]))
      else:
        path, start, tokens, dtype = shard[0], shard[1], shard[2], np.dtype(shard[3])
        self._files.append((path, start * dtype.itemsize, tokens))
    self.dtype = dtype
    self._starts = np.cumsum([0] + [n for _, _, n in self._files])

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, index: slice) -> np.ndarray:
    start, stop, step = index.indices(len(self))
    if step != 1:
      raise IndexError('TokenShards take slices of step 1')
    i = int(np.searchsorted(self._starts, start, side='right')) - 1
    parts = []
    while start < stop:
      path, offset, size = self._files[i]
      first = start - int(self._starts[i])
      take = min(stop - start, size - first)
      itemsize = self.dtype.itemsize
      with open(path, 'rb', buffering=0) as f:
        data = os.pread(f.fileno(), take * itemsize, offset + first * itemsize)
      parts.append(np.frombuffer(data, self.dtype))
      start += take
      i += 1
    return np.concatenate(parts) if parts else np.empty(0, self.dtype)

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    return self[0:len(self)].astype(dtype or self.dtype, copy=False)


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
