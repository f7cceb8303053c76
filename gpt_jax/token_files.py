"""Corpora tokenized by datatrove (its DocumentTokenizer, FineWeb's last step), read in place.

A `.ds` file holds the tokens of its documents one after another, little-endian uint16 (uint32
for a vocabulary above 65,536 ids); `NAME.ds.index` holds each document's end, in tokens (uint64,
little-endian); an optional `NAME.ds.metadata` names the tokenizer and the token size
(datatrove.pipeline.tokens.tokenizer.TokenizedFile). When data.corpus names only such files (or
directories of them), `prepare` makes no copy: its manifest points at ranges of them, and
training reads them as it reads its own shards (data.TokenShards), so a run resumes bit for bit.

- The tokenizer they were made with is --config.data.tokenizer (required): its token size must
  be the files', every id below its vocabulary (checked over every token), and every document
  must end with its EOS (DocumentTokenizer's eos_token), as prepare's own streams do.
- Splits: DocumentTokenizer shuffles the documents in each file (seeded), so the validation
  split is the last round(val_fraction · n) documents of each file with n documents and the
  training split the ones before: one range each per file, never a document in both.
- A file whose size is not its index's last end (a task killed while writing), or without its
  index, is refused in one line; nothing half written is read as finished.

Bits per byte need the text's bytes: the validation documents are decoded once to count them
(the training split's are not, and its manifest 'bytes' is null).
"""

import hashlib
import json
import os
from collections.abc import Callable

import numpy as np

from gpt_jax import files
from gpt_jax.errors import UserError

EXTENSION = '.ds'
_FIX_TOKENIZER = ('pass the tokenizer the files were made with as --config.data.tokenizer (a '
                  'tokenizer.json or .model)')


def token_dtype(vocab_size: int) -> np.dtype:
  """Tokens of a vocabulary of `vocab_size` ids: little-endian uint16 up to 65,536 ids, else
  uint32, as datatrove's TokenizedFile sizes them and prepare's shards hold them."""
  return np.dtype('<u2' if vocab_size <= 1 << 16 else '<u4')


def is_token_file(path: str) -> bool:
  return path.endswith(EXTENSION)


def _document_ends(path: str) -> np.ndarray:
  index = path + '.index'
  if not os.path.exists(index):
    raise UserError(f"'{path}' has no index '{index}' of its documents' ends; tokenize with "
                    "datatrove's DocumentTokenizer(save_index=True), or rerun the task that "
                    'wrote it')
  return np.fromfile(index, '<u8')


def _token_size(path: str, tokenizer) -> int:
  """Bytes per token: the tokenizer's (2 up to 65,536 ids, else 4), checked against the file's
  .metadata where it has one."""
  size = token_dtype(tokenizer.vocab_size).itemsize
  metadata = path + '.metadata'
  if os.path.exists(metadata):
    with open(metadata) as f:
      written = int(f.readline().strip().rsplit('|', 1)[-1])
    if written != size:
      raise UserError(f"'{path}' holds {written}-byte tokens, but the tokenizer of "
                      f'{tokenizer.vocab_size} ids takes {size}: it was made with another '
                      f'tokenizer; {_FIX_TOKENIZER}')
  return size


def ranges(path: str, tokenizer, val_fraction: float) -> tuple[dict, dict, int]:
  """The (train, val) shards of one .ds file, each {'file', 'start', 'tokens', 'documents',
  'dtype'} with start and tokens in tokens, and the file's document count; UserError for a file
  unfinished, damaged or made with another tokenizer (module docstring)."""
  ends = _document_ends(path)
  size = _token_size(path, tokenizer)
  dtype = np.dtype(f'<u{size}')
  tokens = os.path.getsize(path) // size
  if os.path.getsize(path) % size or (ends[-1] if len(ends) else 0) != tokens or np.any(
      np.diff(ends.astype(np.int64), prepend=0) <= 0):
    raise UserError(f"'{path}' holds {os.path.getsize(path):,} bytes but its index ends at "
                    f'{int(ends[-1]) if len(ends) else 0:,} tokens of {size} bytes: it is '
                    'unfinished or damaged; rerun the task that wrote it')
  data = np.memmap(path, dtype, mode='r') if tokens else np.empty(0, dtype)
  if tokens and int(data.max()) >= tokenizer.vocab_size:
    raise UserError(f"'{path}' holds token id {int(data.max())}, beyond the tokenizer's "
                    f'{tokenizer.vocab_size} ids: it was made with another tokenizer; '
                    f'{_FIX_TOKENIZER}')
  last = data[ends.astype(np.int64) - 1] if tokens else np.empty(0, dtype)
  if np.any(last != tokenizer.eos_id):
    raise UserError(f"'{path}': its documents do not end with the tokenizer's EOS (id "
                    f'{tokenizer.eos_id}); tokenize with DocumentTokenizer(eos_token=...) naming '
                    f'that token, or {_FIX_TOKENIZER}')
  val_documents = int(round(val_fraction * len(ends)))
  split = int(ends[len(ends) - val_documents - 1]) if val_documents < len(ends) else 0
  shard = lambda start, stop, documents: {'file': os.path.abspath(path), 'start': start,
                                          'tokens': stop - start, 'documents': documents,
                                          'dtype': dtype.str}
  return (shard(0, split, len(ends) - val_documents), shard(split, tokens, val_documents),
          len(ends))


def settings_key(paths: list[str], tokenizer, val_fraction: float) -> str:
  """The cache key of a token corpus: its files (path, size, mtime), tokenizer and split."""
  stamps = [[os.path.abspath(p), os.path.getsize(p), os.stat(p).st_mtime_ns] for p in paths]
  text = json.dumps({'format': 'datatrove .ds 1', 'files': stamps, 'tokenizer': tokenizer.sha256,
                     'val_fraction': val_fraction}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare(paths: list[str], tokenizer, val_fraction: float, directory: str,
            log: Callable[[str], None]) -> str:
  """Writes `directory` (the prepared data: manifest.json and the tokenizer) for the .ds files
  `paths`, whole or not at all; UserError for a file refused by `ranges`, or a split with no
  document."""
  splits = {split: {'documents': 0, 'tokens': 0, 'bytes': None, 'shards': []}
            for split in ('train', 'val')}
  for path in paths:
    for split, shard in zip(('train', 'val'), ranges(path, tokenizer, val_fraction)[:2]):
      splits[split]['documents'] += shard['documents']
      splits[split]['tokens'] += shard['tokens']
      if shard['tokens']:
        splits[split]['shards'].append(shard)
  for split, counts in splits.items():
    if not counts['documents']:
      raise UserError(f'the {split} split is empty: {len(paths)} .ds files with val_fraction '
                      f'{val_fraction}; use more documents or another --config.data.val_fraction')
  splits['val']['bytes'] = _val_bytes(splits['val']['shards'], tokenizer)
  lines = [f'{split}: {c["documents"]:,} documents, {c["tokens"]:,} tokens, read in place from '
           f'{len(c["shards"])} .ds files' for split, c in splits.items()]
  manifest = {'format': 'datatrove .ds 1', 'files': len(paths), 'log': lines,
              'tokenizer_sha256': tokenizer.sha256, 'vocab_size': tokenizer.vocab_size,
              'splits': splits}
  with files.new_directory(directory, 'data.corpus') as tmp:
    tokenizer.save(os.path.join(tmp, tokenizer.filename))
    files.write_json(os.path.join(tmp, 'manifest.json'), manifest)
  for line in lines:
    log(line)
  return directory


def _val_bytes(shards: list[dict], tokenizer) -> int:
  """UTF-8 bytes of the validation documents' text (their EOS tokens spell nothing)."""
  total = 0
  for shard in shards:
    dtype = np.dtype(shard['dtype'])
    tokens = np.fromfile(shard['file'], dtype, count=shard['tokens'],
                         offset=shard['start'] * dtype.itemsize)
    for document in np.split(tokens, np.flatnonzero(tokens == tokenizer.eos_id) + 1):
      total += len(tokenizer.decode(document[document != tokenizer.eos_id]).encode())
  return total
