"""Reading corpora (the embedded Shakespeare, files, directories, globs) and cleaning them."""

import gzip
import json
import os

import pytest

from gpt_jax import config, corpus
from gpt_jax.corpus import Document
from gpt_jax.errors import UserError

PLAY = r"""# The Tempest

## ACT I

### SCENE I. On a ship at sea: a tempestuous noise

_A tempestuous noise of thunder and lightning heard. Enter a Master and a
Boatswain_

**Master**  
Boatswain!

**BOATSWAIN**  
Here, master: what cheer?  
__\[Awaking]_  
_\[Aside]_ Good, speak to the mariners\--fall to't, yarely.  
*Exeunt.*

#### ACT II

### SCENE II. Another part of the island.

**CALIBAN**  
All the infections that the sun sucks up
"""

SCENE_1 = """The Tempest

ACT I

SCENE I. On a ship at sea: a tempestuous noise

A tempestuous noise of thunder and lightning heard. Enter a Master and a
Boatswain

Master:
Boatswain!

BOATSWAIN:
Here, master: what cheer?
[Awaking]
[Aside] Good, speak to the mariners--fall to't, yarely.
Exeunt."""

SCENE_2 = """ACT II

SCENE II. Another part of the island.

CALIBAN:
All the infections that the sun sucks up"""


def test_markup_is_stripped_and_the_play_split_into_scenes():
  assert [corpus.strip_markup(s) for s in corpus.split_scenes(PLAY)] == [SCENE_1, SCENE_2]


def test_shakespeare_loads_one_document_per_scene_without_markup(shakespeare):
  docs, report = corpus.load_documents('shakespeare')
  assert docs == shakespeare
  assert (report.num_files, report.num_documents, report.invalid_bytes) == (38, 783, {})
  assert report.num_chars == sum(len(d.text) for d in docs) > 4_900_000
  assert not [d.source for d in docs if any(m in d.text for m in ('**', '#', '_', '\\', '  \n'))]
  othello = [d for d in docs if d.source.startswith('tragedies/othello.md#')]
  assert [d.source for d in othello[:2]] == ['tragedies/othello.md#1', 'tragedies/othello.md#2']
  assert othello[0].text.startswith('Othello\n\nACT I\n\nSCENE I. Venice. A street.\n\n'
                                    'Enter RODERIGO and IAGO\n\nRODERIGO:\nTush! never tell me;')
  assert othello[1].text.startswith('SCENE II. Another street.\n\n')
  assert len(othello) == 15  # 15 scenes
  assert docs == sorted(docs, key=lambda d: (d.source.split('#')[0], int(d.source.split('#')[1])))


def _write(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with (gzip.open if path.endswith('.gz') else open)(path, 'wb') as f:
    f.write(data)


def _jsonl(*records) -> bytes:
  return ''.join(json.dumps(r) + '\n' for r in records).encode()


@pytest.fixture
def mixed_dir(tmp_path):
  """One file of each kind, and files a directory search skips."""
  _write(f'{tmp_path}/a.txt', 'plain text\n\nwith lines'.encode())
  _write(f'{tmp_path}/b.md', b'# markdown stays as it is')
  _write(f'{tmp_path}/c.jsonl', _jsonl({'text': 'first', 'id': 1}, {'text': 'second'}) + b'\n')
  _write(f'{tmp_path}/sub/d.jsonl.gz', _jsonl({'body': 'x', 'text': 'zipped line'}))
  _write(f'{tmp_path}/sub/e.txt.gz', 'zipped text \u00e9'.encode())
  _write(f'{tmp_path}/sub/f.json', _jsonl({'text': 'json lines'}))
  _write(f'{tmp_path}/skipped.csv', b'a,b')
  _write(f'{tmp_path}/skipped.gz', b'zipped, but what is it')
  return str(tmp_path)


def test_a_directory_is_searched_for_text_files(mixed_dir):
  docs, report = corpus.load_documents(mixed_dir)
  d = mixed_dir
  assert docs == [
      Document(f'{d}/a.txt', 'plain text\n\nwith lines'),
      Document(f'{d}/b.md', '# markdown stays as it is'),
      Document(f'{d}/c.jsonl:1', 'first'),
      Document(f'{d}/c.jsonl:2', 'second'),
      Document(f'{d}/sub/d.jsonl.gz:1', 'zipped line'),
      Document(f'{d}/sub/e.txt.gz', 'zipped text \u00e9'),
      Document(f'{d}/sub/f.json:1', 'json lines'),
  ]
  assert (report.num_files, report.num_documents, report.num_chars) == (6, 7, 92)


def test_files_and_globs_are_comma_separated(mixed_dir):
  docs, report = corpus.load_documents(f'{mixed_dir}/sub/*.gz, {mixed_dir}/skipped.csv',
                                       text_field='body')
  assert [d.source for d in docs] == [f'{mixed_dir}/sub/d.jsonl.gz:1', f'{mixed_dir}/sub/e.txt.gz',
                                      f'{mixed_dir}/skipped.csv']
  assert docs[0].text == 'x'
  assert report.num_files == 3
  docs, _ = corpus.load_documents(f'{mixed_dir}/**/*.txt*')
  assert [d.source for d in docs] == [f'{mixed_dir}/a.txt', f'{mixed_dir}/sub/e.txt.gz']


def test_invalid_utf8_bytes_are_replaced_and_counted(tmp_path):
  _write(f'{tmp_path}/bad.txt', b'caf\xc3\xa9 \xff\xfe ok \xc3')  # two stray bytes, one cut short
  # a Latin-1 byte, and an escaped lone surrogate (replaced, as UTF-8 cannot hold it, not counted)
  _write(f'{tmp_path}/bad.jsonl.gz', b'{"text": "a\xe9b \\ud800"}\n')
  _write(f'{tmp_path}/good.txt', b'fine')
  docs, report = corpus.load_documents(str(tmp_path))
  assert [d.text for d in docs] == ['a\ufffdb \ufffd', 'caf\u00e9 \ufffd\ufffd ok \ufffd', 'fine']
  assert report.invalid_bytes == {f'{tmp_path}/bad.jsonl.gz': 1, f'{tmp_path}/bad.txt': 3}
  assert report.total_invalid_bytes == 4
  assert '4 bytes were not valid UTF-8' in report.summary()


@pytest.mark.parametrize('spec, message', [
    ('{d}/nope.txt', "corpus path '{d}/nope.txt' does not exist; pass 'shakespeare' or"),
    ('{d}/*.nope', "corpus glob '{d}/*.nope' matches nothing; pass"),
    ('{d}/empty_dir',
     "corpus directory '{d}/empty_dir' holds no .txt/.md/.jsonl/.json/.parquet files"),
    ('{d}/blank.txt', 'corpus {d}/blank.txt is empty'),
    (' , ', "corpus=' , ' names no file"),
    ('{d}/bad.jsonl', '{d}/bad.jsonl:2 is not valid JSON'),
    ('{d}/nofield.jsonl', "corpus {d}/nofield.jsonl: no row has a string field 'text' (2 rows, "
     'the first {d}/nofield.jsonl:1); set --config.data.text_field'),
    ('{d}/broken.txt.gz', "cannot read corpus file '{d}/broken.txt.gz'"),
])
def test_bad_corpora_are_user_errors(tmp_path, spec, message):
  os.mkdir(tmp_path / 'empty_dir')
  _write(f'{tmp_path}/empty_dir/notes.csv', b'a,b')
  _write(f'{tmp_path}/blank.txt', b' \n\n ')
  _write(f'{tmp_path}/bad.jsonl', b'{"text": "ok"}\n{"text": \n')
  _write(f'{tmp_path}/nofield.jsonl', _jsonl({'content': 'no text'}, ['a list']))
  (tmp_path / 'broken.txt.gz').write_bytes(b'not gzip at all')
  with pytest.raises(UserError) as e:
    corpus.load_documents(spec.format(d=tmp_path))
  assert str(e.value).startswith(message.format(d=tmp_path))
  assert '\n' not in str(e.value) and '; ' in str(e.value)


def test_long_documents_are_cut_at_blank_lines_then_line_ends():
  text = 'aaa\n\nbbbb\ncc\n\n' + 'x' * 25 + '\nyy\n\n\nzz'
  docs, summary = corpus.cut_long_documents([corpus.Document('a.txt', text),
                                             corpus.Document('b.txt', 'short')], 12, 10)
  assert [(d.source, d.text) for d in docs] == [
      ('a.txt:part1', 'aaa'), ('a.txt:part2', 'bbbb\ncc'), ('a.txt:part3', 'x' * 10),
      ('a.txt:part4', 'x' * 10), ('a.txt:part5', 'xxxxx\nyy'), ('a.txt:part6', 'zz'),
      ('b.txt', 'short')]
  assert summary.startswith('cut 1 document longer than data.max_document_chars=12 characters '
                            'into 6 pieces')
  assert corpus.cut_long_documents(docs, 0, 10) == (
      docs, 'documents are not cut (data.max_document_chars=0)')
  with pytest.raises(UserError, match='data.piece_chars=20 in'):
    corpus.cut_long_documents(docs, 12, 20)


def test_shakespeares_scenes_are_never_cut(shakespeare):
  """The default limit is above the longest scene: the shipped corpus is as it always was."""
  d = config.base_config().data
  assert corpus.cut_long_documents(shakespeare, d.max_document_chars, d.piece_chars)[0] == \
      shakespeare


def test_a_byte_order_mark_is_not_text(tmp_path):
  (tmp_path / 'bom.txt').write_bytes(b'\xef\xbb\xbfHello')
  (tmp_path / 'bom.jsonl').write_bytes(b'\xef\xbb\xbf{"text": "Hi"}\n')
  assert corpus.read_text(str(tmp_path / 'bom.txt')) == ('Hello', 0)
  docs, _ = corpus.load_documents(str(tmp_path / 'bom.jsonl'))
  assert [d.text for d in docs] == ['Hi']


def test_byte_order_marks_at_the_start_of_any_line_are_not_text(tmp_path):
  """Files saved with a byte-order mark and joined by `cat` (jsonlines #69): the second file's
  mark starts line 16; a file of a mark alone, or one before another, gives more of them."""
  bom = b'\xef\xbb\xbf'
  first = bom + _jsonl(*({'text': f'row {i}'} for i in range(1, 16)))
  _write(f'{tmp_path}/joined.jsonl', first + bom + _jsonl({'text': 'row 16'}) + bom + b'\n'
         + bom + bom + _jsonl({'text': 'row 18'}))
  docs, report = corpus.load_documents(f'{tmp_path}/joined.jsonl')
  assert [d.text for d in docs] == [f'row {i}' for i in range(1, 17)] + ['row 18']
  assert (report.bad_lines, report.missing_text) == (0, 0)
  _write(f'{tmp_path}/joined.txt', bom + b'First file.\n\n' + bom + b'Second file.\n')
  assert corpus.read_text(f'{tmp_path}/joined.txt') == ('First file.\n\nSecond file.\n', 0)
  pieces = [r.text for r in corpus.records(f'{tmp_path}/joined.txt', shakespeare=False,
                                           max_chars=20, piece_chars=15)]
  assert pieces == ['First file.', 'Second file.']


def test_rows_without_text_and_lines_that_are_not_json_are_counted_when_skipped(tmp_path):
  _write(f'{tmp_path}/mixed.jsonl', b'{"text": "one", "url": "https://a.org/1"}\nnot json\n'
         b'{"body": "x"}\n{"text": "two"}\n{"text": 3')
  with pytest.raises(UserError, match=r'mixed.jsonl:2 is not valid JSON \(Expecting value\); .* '
                     r'set --config.data.bad_lines=skip'):
    corpus.load_documents(str(tmp_path))
  docs, report = corpus.load_documents(str(tmp_path), bad_lines='skip')
  assert [(d.text, d.url) for d in docs] == [('one', 'https://a.org/1'), ('two', '')]
  assert (report.bad_lines, report.missing_text) == (2, 1)
  assert report.summary().endswith(
      f'skipped 2 non-JSON lines (data.bad_lines=skip), the first {tmp_path}/mixed.jsonl:2'
      f' (Expecting value); skipped 1 row without the text field, the first '
      f'{tmp_path}/mixed.jsonl:3')


def test_parquet_rows_read_as_the_same_jsonl_lines_do(tmp_path, monkeypatch):
  """A .parquet corpus (datatrove's ParquetWriter output: text, id, metadata columns) gives the
  documents of the same rows as JSON Lines, a row without a string text counted and skipped,
  across batches; without the text column, one line names data.text_field."""
  pq = pytest.importorskip('pyarrow.parquet', reason="needs pyarrow: pip install -e '.[data]'")
  import pyarrow as pa
  rows = [{'text': f'document {i}\r\nline two', 'id': str(i), 'url': f'https://h{i % 3}.org/x'}
          for i in range(5)] + [{'text': None, 'id': 'none', 'url': None}]
  os.makedirs(tmp_path / 'pq')
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / 'pq' / 'part.parquet', row_group_size=4)
  _write(f'{tmp_path}/rows.jsonl', '\n'.join(map(json.dumps, rows)).encode())
  monkeypatch.setattr(corpus, '_PARQUET_BATCH', 2)
  docs, report = corpus.load_documents(str(tmp_path / 'pq'))
  expected, _ = corpus.load_documents(f'{tmp_path}/rows.jsonl')
  assert [(d.text, d.url) for d in docs] == [(d.text, d.url) for d in expected]
  assert docs[0].text == 'document 0\nline two' and docs[4].source.endswith('part.parquet:row5')
  assert (report.num_documents, report.missing_text, report.urls) == (5, 1, 5)
  with pytest.raises(UserError, match="no row has a string field 'body' .* set "
                     "--config.data.text_field"):
    corpus.load_documents(str(tmp_path / 'pq'), text_field='body')


@pytest.mark.parametrize('block', [5, 64, 1 << 20])
def test_a_long_text_file_is_cut_while_it_is_read_as_in_memory(tmp_path, monkeypatch, block):
  """records() reads a text file a block at a time: its pieces are cut_long_documents' pieces,
  whatever the block size, and the invalid bytes are all counted."""
  monkeypatch.setattr(corpus, '_BLOCK', block)
  text = ('aaa\n\nbbbb\ncc\n\n' + 'x' * 25 + '\nyy\n\n\nzz\n') * 7 + 'caf\u00e9 end'
  _write(f'{tmp_path}/long.txt', b'\xef\xbb\xbf' + text.encode() + b'\xff')
  expected, _ = corpus.cut_long_documents([Document(f'{tmp_path}/long.txt', text + '\ufffd')],
                                          30, 12)
  report = corpus.LoadReport('')
  docs = [doc for record in corpus.records(f'{tmp_path}/long.txt', shakespeare=False,
                                           max_chars=30, piece_chars=12)
          for doc in corpus.documents(record, report)]
  assert docs == expected and len(docs) == 37
  assert (report.cut_documents, report.pieces, report.invalid_bytes) == (
      1, 37, {f'{tmp_path}/long.txt': 1})
  whole = list(corpus.records(f'{tmp_path}/long.txt', shakespeare=False, max_chars=0,
                              piece_chars=0))
  assert [r.text for r in whole] == [text + '\ufffd']


@pytest.mark.parametrize('block', [5, 1 << 20])
def test_windows_and_old_mac_line_ends_are_cut_where_unix_ones_are(tmp_path, monkeypatch, block):
  """'\\r\\n\\r\\n' and '\\r\\r' are blank lines too (txtai #1152): a text file, cut while read
  (5-byte blocks split some '\\r\\n'), a .jsonl row and a document in memory give the pieces of
  the same text with '\\n' line ends, at its paragraph ends and without a '\\r'."""
  monkeypatch.setattr(corpus, '_BLOCK', block)
  text = ''.join(f'Paragraph {i}, its first line.\nIts second line.\n\n' for i in range(12))
  unix, _ = corpus.cut_long_documents([Document('a', text + 'The end.\n')], 150, 100)
  assert [d.text for d in unix] == [
      f'Paragraph {i}, its first line.\nIts second line.\n\nParagraph {i + 1}, its first line.\n'
      'Its second line.' for i in range(0, 12, 2)] + ['The end.']
  for line_end in ('\r\n', '\r'):
    other = (text + 'The end.\n').replace('\n', line_end)
    assert corpus.cut_long_documents([Document('a', other)], 150, 100)[0] == unix
    _write(f'{tmp_path}/a.txt', other.encode())
    _write(f'{tmp_path}/a.jsonl', _jsonl({'text': other}))
    for path in (f'{tmp_path}/a.txt', f'{tmp_path}/a.jsonl'):
      docs = [doc for record in corpus.records(path, shakespeare=False, max_chars=150,
                                               piece_chars=100)
              for doc in corpus.documents(record, corpus.LoadReport(''), max_chars=150,
                                          piece_chars=100)]
      assert [d.text for d in docs] == [d.text for d in unix]
    assert corpus.read_text(f'{tmp_path}/a.txt') == (text + 'The end.\n', 0)


def test_a_file_that_vanishes_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match=r"^corpus file '.*gone.jsonl' vanished while the corpus was "
                     r'read; restore it .* nothing was written$'):
    list(corpus.records(str(tmp_path / 'gone.jsonl'), shakespeare=False, max_chars=0,
                        piece_chars=0))


def test_letter_fraction_of_ascii_and_unicode_text():
  assert corpus.letter_fraction('ab 1\n2') == 0.5
  assert corpus.letter_fraction('\u00e9t\u00e9 1\u3000\u00bd') == 0.6  # 3 letters of 5 visible
  assert corpus.letter_fraction(' \n\t') == 0.0
