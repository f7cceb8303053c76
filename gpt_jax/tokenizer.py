"""A byte-level BPE tokenizer (sentencepiece) that gives back exactly the text it was given.

Text is not normalized, spaces are kept as they are (a space becomes '▁' inside pieces, and runs
of spaces may merge), each newline is a token of its own, and any character the vocabulary lacks
is spelled in its UTF-8 bytes (byte fallback), so decode(encode(text)) == text for any string.
"""

import hashlib
import io
import os
import re
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from gpt_jax import files
from gpt_jax.errors import UserError

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
_SPACE = '\u2581'  # '▁', sentencepiece's stand-in for ' ': decode turns every one into a space

_TRAINER_OPTIONS = dict(
    model_type='bpe',
    normalization_rule_name='identity',
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    allow_whitespace_only_pieces=True,
    split_digits=True,  # numbers are spelled digit by digit, so alike however they are written
    byte_fallback=True,
    character_coverage=0.9995,  # the rarest characters are left to byte fallback
    user_defined_symbols=['\n'],  # training sees lines; this makes '\n' one token, not a byte
    unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1,
    input_sentence_size=2_000_000,  # lines; more are sampled
    shuffle_input_sentence=True,
    max_sentence_length=1 << 20,  # bytes; longer lines are skipped
    num_threads=2,  # not os.cpu_count(): it is stored in the model, whose bytes must not vary
    minloglevel=2,  # errors only
)


class Tokenizer:
  """A sentencepiece model; `sha256` identifies it."""

  def __init__(self, model_proto: bytes):
    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self._space_bytes = [self._sp.piece_to_id(f'<0x{b:02X}>') for b in _SPACE.encode()]

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def sha256(self) -> str:
    return hashlib.sha256(self._proto).hexdigest()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS or EOS."""
    return self.encode_batch([text])[0]

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    # A literal '▁' would decode as ' ', so cut the texts there and spell each '▁' in bytes.
    parts = [text.split(_SPACE) for text in texts]
    flat = [p for ps in parts for p in ps]
    encoded = iter(self._sp.encode(flat, num_threads=os.cpu_count() or 1))
    ids = []
    for ps in parts:
      text_ids = next(encoded)
      for _ in ps[1:]:
        text_ids += self._space_bytes + next(encoded)
      ids.append(text_ids)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def save(self, path: str) -> None:
    """Writes the model file atomically: a killed process leaves the old file or the new one."""
    with files.atomic_path(path) as tmp, open(tmp, 'wb') as f:
      f.write(self._proto)

  @classmethod
  def load(cls, path: str) -> 'Tokenizer':
    fix = 'set --config.data.tokenizer to a sentencepiece .model file, or to \'\' to train one'
    try:
      with open(path, 'rb') as f:
        proto = f.read()
    except OSError as e:
      raise UserError(f"cannot read tokenizer '{path}': {e.strerror}; {fix}") from None
    try:
      tokenizer = cls(proto)
    except (RuntimeError, OSError):
      raise UserError(f"tokenizer '{path}' is not a sentencepiece model; {fix}") from None
    if tokenizer.eos_id < 0:
      raise UserError(f"tokenizer '{path}' has no end-of-sequence token to end documents; {fix}")
    return tokenizer


def train(texts: Iterable[str], vocab_size: int) -> Tokenizer:
  """A BPE tokenizer of exactly `vocab_size` tokens; the same texts give the same model bytes."""
  lines = (line for text in texts for line in text.split('\n') if line)
  model = io.BytesIO()
  spm.set_random_generator_seed(0)  # it samples the lines when there are too many
  try:
    spm.SentencePieceTrainer.train(sentence_iterator=lines, model_writer=model,
                                   vocab_size=vocab_size, **_TRAINER_OPTIONS)
  except RuntimeError as e:
    _raise_if_vocab_size_error(str(e), vocab_size)
    raise
  return Tokenizer(model.getvalue())


def _raise_if_vocab_size_error(message: str, vocab_size: int) -> None:
  """Turns sentencepiece's complaint about the vocab size into a UserError."""
  if m := re.search(r'smaller than required_chars\. \d+ vs (\d+)', message):
    raise UserError(f'vocab_size {vocab_size} is too small: the tokenizer needs {m[1]} tokens for '
                    'the 256 bytes, special tokens and the characters of the training text; set '
                    f'--config.model.vocab_size >= {m[1]}') from None
  if m := re.search(r'Vocabulary size too high .* Please set it to a value <= (\d+)', message):
    raise UserError(f'vocab_size {vocab_size} is too large: BPE finds at most {m[1]} tokens in the '
                    f'training text; set --config.model.vocab_size <= {m[1]} or use a larger corpus'
                    ) from None
