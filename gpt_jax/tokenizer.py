"""A byte-level BPE tokenizer (sentencepiece) that gives back exactly the text it was given.

Text is not normalized, spaces are kept as they are (a space becomes '▁' inside pieces, and runs
of spaces may merge), each newline is a token of its own, and any character the vocabulary lacks
is spelled in its UTF-8 bytes (byte fallback), so decode(encode(text)) == text for any string.

Models imported from Hugging Face may bring a `tokenizer.json` instead (GPT-2's byte-level BPE):
`HFTokenizer` reads it with the `tokenizers` package behind the same interface, and `load(path)`
picks the class by the file name. A run keeps its tokenizer as DIR/<tokenizer.filename>.

Both kinds encode a document as text, whatever it spells: '<|endoftext|>' or '</s>' inside a
document are characters, never the EOS token that ends documents. Both refuse to decode an id
outside the vocabulary (UserError), rather than fail inside the library or drop it silently.
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
FILENAMES = ('tokenizer.model', 'tokenizer.json')  # sentencepiece, Hugging Face
_FIX = ("set --config.data.tokenizer to a sentencepiece .model file (or a Hugging Face "
        "tokenizer.json), or to '' to train one")

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
    shuffle_input_sentence=True,
    max_sentence_length=1 << 20,  # bytes; longer lines are skipped
    num_threads=2,  # not os.cpu_count(): it is stored in the model, whose bytes must not vary
    minloglevel=2,  # errors only
)


class Tokenizer:
  """A sentencepiece model; `sha256` identifies it."""
  filename = FILENAMES[0]  # what a run or a prepared data directory calls it

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

  def encode_batch(self, texts: Sequence[str], threads: int = 0) -> list[list[int]]:
    """Token ids of each text, on `threads` threads (0: one per core)."""
    # A literal '▁' would decode as ' ', so cut the texts there and spell each '▁' in bytes.
    parts = [text.split(_SPACE) for text in texts]
    flat = [p for ps in parts for p in ps]
    encoded = iter(self._sp.encode(flat, num_threads=threads or os.cpu_count() or 1))
    ids = []
    for ps in parts:
      text_ids = next(encoded)
      for _ in ps[1:]:
        text_ids += self._space_bytes + next(encoded)
      ids.append(text_ids)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """The text of token ids; UserError for an id outside the vocabulary."""
    return self._sp.decode(_in_vocabulary(ids, self.vocab_size))

  def save(self, path: str) -> None:
    """Writes the model file atomically: a killed process leaves the old file or the new one."""
    with files.atomic_path(path) as tmp, open(tmp, 'wb') as f:
      f.write(self._proto)

  @classmethod
  def load(cls, path: str) -> 'Tokenizer | HFTokenizer':
    """The tokenizer in `path`: a HFTokenizer for a .json file, else a sentencepiece model."""
    if path.endswith('.json'):
      return HFTokenizer.load(path)
    try:
      tokenizer = cls(_read(path))
    except (RuntimeError, OSError):
      raise UserError(f"tokenizer '{path}' is not a sentencepiece model; {_FIX}") from None
    return _check_eos(tokenizer, path)


class HFTokenizer:
  """A Hugging Face tokenizer.json (`tokenizers` package); `sha256` identifies the file."""
  filename = FILENAMES[1]
  _EOS = ('<|endoftext|>', '<|end_of_text|>', '</s>')  # GPT-2, LLaMA 3, LLaMA 2 / Mistral
  _BOS = ('<|begin_of_text|>', '<s>', '<|endoftext|>')  # GPT-2 starts texts with its EOS token

  def __init__(self, data: bytes):
    try:
      import tokenizers  # only models imported from Hugging Face need it
    except ImportError:
      raise UserError("reading a tokenizer.json needs the tokenizers package; "
                      "pip install -e '.[hf]'") from None
    self._data = data
    # utf-8-sig: a file saved by a Windows editor may start with a byte-order mark.
    self._tok = tokenizers.Tokenizer.from_str(data.decode('utf-8-sig'))
    # Special tokens are matched in the text by default: '<|endoftext|>' inside a document would
    # end it. Off, they are spelled like any other text.
    self._tok.encode_special_tokens = True

  def _first_id(self, tokens: tuple[str, ...]) -> int:
    ids = [self._tok.token_to_id(t) for t in tokens]
    return next((i for i in ids if i is not None), -1)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  @property
  def bos_id(self) -> int:
    return self._first_id(self._BOS)

  @property
  def eos_id(self) -> int:
    return self._first_id(self._EOS)

  @property
  def sha256(self) -> str:
    return hashlib.sha256(self._data).hexdigest()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without BOS or EOS."""
    return self.encode_batch([text])[0]

  def encode_batch(self, texts: Sequence[str], threads: int = 0) -> list[list[int]]:
    """Token ids of each text (`threads` is the tokenizers package's to choose)."""
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    """The text of token ids, special tokens spelled out; UserError for an id outside the
    vocabulary (which `tokenizers` would drop without a word)."""
    return self._tok.decode(_in_vocabulary(ids, self.vocab_size), skip_special_tokens=False)

  def save(self, path: str) -> None:
    with files.atomic_path(path) as tmp, open(tmp, 'wb') as f:
      f.write(self._data)

  @classmethod
  def load(cls, path: str) -> 'HFTokenizer':
    data = _read(path)
    try:
      tokenizer = cls(data)
    except UserError:
      raise
    except Exception:  # tokenizers raises its own exception types for a malformed file
      raise UserError(f"tokenizer '{path}' is not a Hugging Face tokenizer.json; {_FIX}") from None
    return _check_eos(tokenizer, path)


def load(path: str) -> Tokenizer | HFTokenizer:
  """The tokenizer in `path`, by file name: .json is Hugging Face, anything else sentencepiece."""
  return Tokenizer.load(path)


def find(directory: str) -> str | None:
  """The path of the tokenizer file in a run or data directory, or None if it has none."""
  for name in FILENAMES:
    if os.path.exists(os.path.join(directory, name)):
      return os.path.join(directory, name)
  return None


def _read(path: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise UserError(f"cannot read tokenizer '{path}': {e.strerror}; {_FIX}") from None


def _in_vocabulary(ids: Iterable[int], vocab_size: int) -> list[int]:
  """`ids` as a list of ints, or UserError naming the first one outside 0..vocab_size-1."""
  ids = [int(i) for i in ids]
  bad = next((i for i in ids if not 0 <= i < vocab_size), None)
  if bad is not None:
    raise UserError(f'cannot decode token id {bad}: the tokenizer has {vocab_size} tokens (ids 0 '
                    f'to {vocab_size - 1}); decode only ids of this tokenizer')
  return ids


def _check_eos(tokenizer, path: str):
  if tokenizer.eos_id < 0:
    raise UserError(f"tokenizer '{path}' has no end-of-sequence token to end documents; {_FIX}")
  return tokenizer


def train(texts: Iterable[str], vocab_size: int, sentences: int = 2_000_000) -> Tokenizer:
  """A BPE tokenizer of exactly `vocab_size` tokens; the same texts give the same model bytes.
  `texts` are read once, lazily: sentencepiece keeps a seeded uniform sample of `sentences` of
  their lines (reservoir sampling), so memory holds the sample, not the texts."""
  lines = (line for text in texts for line in text.split('\n') if line)
  model = io.BytesIO()
  spm.set_random_generator_seed(0)  # it samples the lines when there are too many
  try:
    spm.SentencePieceTrainer.train(sentence_iterator=lines, model_writer=model,
                                   vocab_size=vocab_size, input_sentence_size=sentences,
                                   **_TRAINER_OPTIONS)
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
