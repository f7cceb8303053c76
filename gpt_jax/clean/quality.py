"""Document quality rules: the Gopher quality filter with C4's line rule, and a script filter.

`gopher_rule_failed` applies the heuristics of Rae et al. 2021, "Scaling Language Models:
Methods, Analysis & Insights from Training Gopher", Appendix A.1.1 (MassiveWeb's quality filter
and repetition removal, the thresholds in Table A1), with the paper's values, plus a
document-level form of the line rule of Raffel et al. 2020, "Exploring the Limits of Transfer
Learning with a Unified Text-to-Text Transformer", Section 2.2 (C4). Where the paper leaves a
detail open (what a word is, how overlapping duplicate n-grams count), the docstrings say what was
chosen and where datatrove's GopherQualityFilter and GopherRepetitionFilter
(github.com/huggingface/datatrove) differ.

`script_fraction` measures how much of a document's text is in one writing system, from the
Unicode character names.
"""

import functools
import itertools
import re
import sys
import unicodedata

import numpy as np

from gpt_jax.errors import UserError

# Gopher quality filter (Rae et al. 2021, A.1.1).
MIN_WORDS, MAX_WORDS = 50, 100_000
MIN_MEAN_WORD_LENGTH, MAX_MEAN_WORD_LENGTH = 3, 10  # characters
MAX_SYMBOL_RATIO = 0.1  # '#' per word, and ellipses per word, each
MAX_BULLET_LINES = 0.9  # fraction of lines starting with a bullet point
MAX_ELLIPSIS_LINES = 0.3  # fraction of lines ending with an ellipsis
MIN_ALPHABETIC_WORDS = 0.8  # fraction of words with at least one alphabetic character
STOP_WORDS = ('the', 'be', 'to', 'of', 'and', 'that', 'have', 'with')
MIN_STOP_WORDS = 2
# Gopher repetition removal (Rae et al. 2021, A.1.1, Table A1).
MAX_DUPLICATE_LINES = 0.30  # fraction of lines that repeat an earlier line
MAX_DUPLICATE_LINE_CHARS = 0.20  # fraction of line characters in those repeats
MAX_DUPLICATE_PARAGRAPHS = 0.30
MAX_DUPLICATE_PARAGRAPH_CHARS = 0.20
MAX_TOP_NGRAM_CHARS = {2: 0.20, 3: 0.18, 4: 0.16}  # n -> word characters in the commonest n-gram
MAX_DUPLICATE_NGRAM_CHARS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
# C4 keeps only lines that end in a terminal punctuation mark: a period, exclamation mark, question
# mark or end quotation mark (Raffel et al. 2020, 2.2). Verse and lists of clauses end their lines
# with ':', ';' and ',' as often as with a period, so those count too; a line that ends in '...'
# ends in '.'.
TERMINAL_PUNCTUATION = ('.', '!', '?', '"', "'", '\u201d', '\u2019', ':', ';', ',')
# Dropping every unpunctuated line, as C4 does, would cut documents apart, so the rule is applied
# to the whole document: it fails when almost no line ends a sentence or clause, as in menus, link
# lists, tables and keyword lists. The bound is low enough for hard-wrapped prose: each of the 779
# Shakespeare scenes of 50 words or more, run together and wrapped at 70 columns, has a median
# 0.22 of its lines punctuated; 1% of them fall under 0.05, 4% under 0.1.
MIN_PUNCTUATED_LINES = 0.05

# Markdown and typographic list markers, single characters; not dashes, which open dialogue lines
# in many languages.
BULLETS = ('-', '*', '+', '\u2022', '\u2023', '\u2043', '\u2219', '\u25aa', '\u25cf', '\u25cb',
           '\u25e6', '\u25a0', '\u25a1', '\u25b6', '\u25ba', '\u27a2')
ELLIPSES = ('...', '\u2026')

# The rules in the order they are checked, cheap ones first; gopher_rule_failed names one of these.
RULES = ('word_count', 'mean_word_length', 'symbol_ratio', 'bullet_lines', 'ellipsis_lines',
         'punctuated_lines', 'stop_words', 'alphabetic_words', 'duplicate_lines',
         'duplicate_line_chars', 'duplicate_paragraphs', 'duplicate_paragraph_chars',
         *(f'top_{n}gram' for n in MAX_TOP_NGRAM_CHARS),
         *(f'duplicate_{n}gram' for n in MAX_DUPLICATE_NGRAM_CHARS))

_STOP_WORD = re.compile(r'\b(?:%s)\b' % '|'.join(STOP_WORDS))
_PARAGRAPH_BREAK = re.compile(r'\n\s*\n')
_LETTER, _SPACE = 1, 2  # character classes
# Words and n-grams are hashed to uint64 in wrapping arithmetic: a word by the polynomial hash of
# its code points, an n-gram by that of its words' hashes. A collision would change a count by one.
_CHAR_BASE = 0x100000001b3  # the 64-bit FNV prime; odd, so it has an inverse modulo 2**64
_NGRAM_BASE = np.uint64(0x9e3779b97f4a7c15)  # 2**64 over the golden ratio, made odd
_FMIX64_MULTIPLIERS = (np.uint64(0xff51afd7ed558ccd), np.uint64(0xc4ceb9fe1a85ec53))
_POSITION_BITS = np.uint64((1 << MAX_WORDS.bit_length()) - 1)
_HASH_BITS = ~_POSITION_BITS


def gopher_rule_failed(text: str) -> str | None:
  """The first rule of `RULES` that `text` fails, or None when it passes them all.

  The rules and their bounds were set for English web text (the stop words are English).

  Words are the whitespace-separated tokens, as str.split gives them (datatrove uses a word
  tokenizer; whitespace keeps punctuation attached, which lengthens words by a few percent).
  Lines and paragraphs (split at blank lines) are stripped and empty ones ignored. Character
  fractions of lines count line characters; those of n-grams count word characters, so spacing
  does not matter. Stop words are counted with repeats, as datatrove does, in the lower-cased text.
  """
  codes = np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), np.uint32)
  classes = _char_classes()[codes]
  in_word = np.concatenate([[False], classes != _SPACE, [False]])
  edges = np.flatnonzero(in_word[1:] != in_word[:-1])  # character offsets: start, end, start...
  starts, ends = edges[0::2], edges[1::2]
  num_words = len(starts)
  if not MIN_WORDS <= num_words <= MAX_WORDS:
    return 'word_count'
  lengths = ends - starts
  word_chars = int(lengths.sum())
  if not MIN_MEAN_WORD_LENGTH <= word_chars / num_words <= MAX_MEAN_WORD_LENGTH:
    return 'mean_word_length'
  max_symbols = MAX_SYMBOL_RATIO * num_words
  ellipses = sum(map(text.count, ELLIPSES))
  if text.count('#') > max_symbols or ellipses > max_symbols:
    return 'symbol_ratio'
  lines = [line for line in map(str.strip, text.splitlines()) if line]
  first_chars = ''.join([line[0] for line in lines])
  if sum(map(first_chars.count, BULLETS)) > MAX_BULLET_LINES * len(lines):
    return 'bullet_lines'
  if (ellipses > MAX_ELLIPSIS_LINES * len(lines)  # else too few to fail
      and sum(line.endswith(ELLIPSES) for line in lines) > MAX_ELLIPSIS_LINES * len(lines)):
    return 'ellipsis_lines'
  last_chars = ''.join([line[-1] for line in lines])
  if sum(map(last_chars.count, TERMINAL_PUNCTUATION)) < MIN_PUNCTUATED_LINES * len(lines):
    return 'punctuated_lines'
  stop_words = itertools.islice(_STOP_WORD.finditer(text.lower()), MIN_STOP_WORDS)
  if sum(1 for _ in stop_words) < MIN_STOP_WORDS:
    return 'stop_words'
  # Between two word starts the only letters are those of the first word.
  has_letter = np.logical_or.reduceat(classes == _LETTER, starts)
  if np.count_nonzero(has_letter) < MIN_ALPHABETIC_WORDS * num_words:
    return 'alphabetic_words'
  for pieces, kind, max_fraction, max_char_fraction in (
      (lines, 'line', MAX_DUPLICATE_LINES, MAX_DUPLICATE_LINE_CHARS),
      (_PARAGRAPH_BREAK.split(text), 'paragraph', MAX_DUPLICATE_PARAGRAPHS,
       MAX_DUPLICATE_PARAGRAPH_CHARS)):
    pieces = [piece for piece in map(str.strip, pieces) if piece]
    unique = set(pieces)
    if len(pieces) - len(unique) > max_fraction * len(pieces):
      return f'duplicate_{kind}s'
    chars = len(''.join(pieces))
    if chars - len(''.join(unique)) > max_char_fraction * chars:
      return f'duplicate_{kind}_chars'
  return _ngram_rule_failed(_word_hashes(codes, starts, ends), lengths, word_chars)


@functools.cache
def _char_classes() -> np.ndarray:
  """uint8 [0x110000]: the class of each code point, _LETTER (str.isalpha), _SPACE (str.isspace,
  all below U+3001) or 0. Built once per process, in about 0.2 s."""
  size = sys.maxunicode + 1
  classes = np.fromiter(map(str.isalpha, map(chr, range(size))), np.uint8, size)
  classes[[c for c in range(0x3001) if chr(c).isspace()]] = _SPACE
  return classes


def _word_hashes(codes: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
  """uint64 [words]: a hash of each word's code points (codes[starts[i]:ends[i]]).

  The polynomial hash from prefix sums of code * base**position, scaled by base**-start so that
  it does not depend on where the word stands, then MurmurHash3's 64-bit finalizer, so that words
  that differ in one letter differ in all bits (the n-gram grouping uses the high bits).
  """
  with np.errstate(over='ignore'):
    powers = _powers(_CHAR_BASE, len(codes))
    inverse_powers = _powers(pow(_CHAR_BASE, -1, 2**64), len(codes))
    prefix = np.concatenate([[np.uint64(0)], np.cumsum(codes * powers)])
    hashes = (prefix[ends] - prefix[starts]) * inverse_powers[starts]
    for multiplier in _FMIX64_MULTIPLIERS:
      hashes ^= hashes >> np.uint64(33)
      hashes *= multiplier
    return hashes ^ (hashes >> np.uint64(33))


def _powers(base: int, n: int) -> np.ndarray:
  """uint64 [n]: base**0, base**1, ... modulo 2**64."""
  return _cached_powers(base, max(4096, 1 << (n - 1).bit_length()))[:n]


@functools.lru_cache(maxsize=8)
def _cached_powers(base: int, n: int) -> np.ndarray:
  powers = np.full(n, base, np.uint64)
  powers[0] = 1
  with np.errstate(over='ignore'):
    return np.cumprod(powers)


def _ngram_rule_failed(word_hashes: np.ndarray, lengths: np.ndarray,
                       word_chars: int) -> str | None:
  """Gopher's n-gram rules over word n-grams (words given by their hashes and lengths).

  top_{n}gram: the characters of all occurrences of the most frequent n-gram (the longest, among
  equally frequent ones). duplicate_{n}gram: the characters of the words covered by an occurrence
  of an n-gram that occurred earlier, each word counted once however many such n-grams overlap it
  (datatrove instead skips n words after each repeat, which can leave some uncounted).

  Two bounds skip most of the work on ordinary text. An n-gram occurs at most as often as its
  first n-1 words, so the count of the commonest (n-1)-gram times the longest n-gram bounds the
  top n-gram's characters. The words covered by repeated (n+1)-grams are among those covered by
  repeated n-grams, so once the covered fraction is under every remaining bound the larger n are
  not computed.
  """
  before = np.concatenate([[0], np.cumsum(lengths)])  # word characters before each word
  keys = word_hashes
  top_count = len(keys)  # bounds the count of the commonest n-gram
  for n in range(2, max(MAX_DUPLICATE_NGRAM_CHARS) + 1):
    with np.errstate(over='ignore'):
      keys = keys[:-1] * _NGRAM_BASE + word_hashes[n - 1:]  # one per n-gram, by first word
    if keys.size == 0:
      return None
    chars = before[n:] - before[:-n]  # characters of each n-gram's words
    if n in MAX_TOP_NGRAM_CHARS and top_count * chars.max() > MAX_TOP_NGRAM_CHARS[n] * word_chars:
      positions, first = _group_occurrences(keys)
      run_starts = np.flatnonzero(first)
      counts = np.diff(np.append(run_starts, len(keys)))
      top_count = counts.max()
      if top_count * chars[positions[run_starts[counts == top_count]]].max() > (
          MAX_TOP_NGRAM_CHARS[n] * word_chars):
        return f'top_{n}gram'
    if n in MAX_DUPLICATE_NGRAM_CHARS:
      if top_count == 1:
        return None
      positions, first = _group_occurrences(keys)
      repeats = positions[~first]
      depth = np.cumsum(np.bincount(repeats, minlength=len(lengths) + 1)
                        - np.bincount(repeats + n, minlength=len(lengths) + 1))
      covered_chars = lengths[depth[:-1] > 0].sum()
      if covered_chars > MAX_DUPLICATE_NGRAM_CHARS[n] * word_chars:
        return f'duplicate_{n}gram'
      if covered_chars <= min(MAX_DUPLICATE_NGRAM_CHARS.values()) * word_chars:
        return None
  return None


def _group_occurrences(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The positions of `keys` (uint64 [n], n <= MAX_WORDS) grouped by key, each group in order
  (int64 [n]), and whether each is the first of its group (bool [n]).

  One np.sort of the keys with their positions in the low bits, three times faster than a stable
  argsort; the remaining 47 bits of hash make a collision a 1 in 3 * 10**8 chance for a document
  of 1,000 words (1 in 30,000 at MAX_WORDS).
  """
  packed = np.sort(keys & _HASH_BITS | np.arange(len(keys), dtype=np.uint64))
  hashes = packed & _HASH_BITS
  first = np.concatenate([[True], hashes[1:] != hashes[:-1]])
  return (packed & _POSITION_BITS).astype(np.int64), first


# Writing systems, by the prefixes of the Unicode names of their letters.
SCRIPTS = {
    'latin': ('LATIN', 'FULLWIDTH LATIN'),
    'cyrillic': ('CYRILLIC',),
    'greek': ('GREEK',),
    'arabic': ('ARABIC',),
    'hebrew': ('HEBREW',),
    'devanagari': ('DEVANAGARI',),
    'han': ('CJK',),  # CJK UNIFIED IDEOGRAPH-4E00 and the compatibility ideographs
    'japanese': ('HIRAGANA', 'KATAKANA', 'HALFWIDTH KATAKANA', 'CJK'),
    'korean': ('HANGUL', 'HALFWIDTH HANGUL'),
}


def script_fraction(text: str, script: str) -> float:
  """The fraction of the letters of `text` (characters with str.isalpha) whose Unicode names start
  with a prefix of SCRIPTS[script]; 0.0 when `text` has no letters.

  Raises UserError for a script not in SCRIPTS.
  """
  if script not in SCRIPTS:
    raise UserError(f'unknown script {script!r} in --config.data.script; choose one of '
                    f'{", ".join(SCRIPTS)}')
  codes, counts = np.unique(np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), np.uint32),
                            return_counts=True)
  is_letter = _char_classes()[codes] == _LETTER
  letters = in_script = 0
  for code, count in zip(codes[is_letter].tolist(), counts[is_letter].tolist()):
    letters += count
    if script in _scripts_of(code):
      in_script += count
  return in_script / letters if letters else 0.0


@functools.cache
def _scripts_of(code: int) -> frozenset[str]:
  """The names of the SCRIPTS whose prefixes start the Unicode name of chr(code)."""
  name = unicodedata.name(chr(code), '')
  return frozenset(script for script, prefixes in SCRIPTS.items() if name.startswith(prefixes))
