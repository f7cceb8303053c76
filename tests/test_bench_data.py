"""The data benchmark's parts: the generated corpus is deterministic and holds what its planted
counts say; measure() sees a subprocess's memory and exit status."""

import json
import os
import re
import sys

import pytest

from gpt_jax import bench_data
from gpt_jax.errors import UserError


def read_lines(path) -> list[str]:
  with open(path, encoding='utf-8') as f:
    return f.read().split('\n')[:-1]


def test_generate_is_deterministic(tmp_path):
  first = bench_data.generate(str(tmp_path / 'a.jsonl'), 200_000, seed=0)
  second = bench_data.generate(str(tmp_path / 'b.jsonl'), 200_000, seed=0)
  assert (tmp_path / 'a.jsonl').read_bytes() == (tmp_path / 'b.jsonl').read_bytes()
  assert first == second == json.loads((tmp_path / 'a.jsonl.planted.json').read_text())
  assert first['documents'] == 30 and first['bytes'] == 203_277
  assert first['planted'] == {**dict.fromkeys(bench_data.PLANTED_FRACTIONS, 0),
                              'near_duplicate': 1}
  records = [json.loads(line) for line in read_lines(tmp_path / 'a.jsonl')]
  assert len(records) == 30 and all(
      sorted(r) == ['text', 'url'] and r['url'].startswith('https://') for r in records)
  assert bench_data.generate(str(tmp_path / 'c.jsonl'), 200_000, seed=1) != first


@pytest.fixture(scope='module')
def two_mb(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('corpus') / 'c.jsonl')
  return path, bench_data.generate(path, 2_000_000, seed=0)


def test_planted_documents_are_in_the_corpus(two_mb):
  path, counts = two_mb
  assert counts['documents'] == 307 and counts['planted'] == {
      'exact_duplicate': 6, 'near_duplicate': 9, 'pii': 15, 'low_quality': 4,
      'other_script': 3, 'short': 2, 'spam_host': 4}
  records = [json.loads(line) for line in read_lines(path)]
  texts = [r['text'] for r in records]
  planted = counts['planted']
  assert len(set(texts)) == len(texts) - planted['exact_duplicate']
  assert sum(len(t) < bench_data.SHORT_CHARS for t in texts) == planted['short']
  assert sum('//spam.example/' in r['url'] for r in records) == planted['spam_host']
  assert sum(bool(re.search('[а-я]', t)) for t in texts) == planted['other_script']
  text = '\n'.join(texts)
  identifiers = counts['identifiers']
  assert identifiers == {'email': 6, 'phone': 12, 'ipv4': 10}
  email = r'\b[a-z]+\.\d+@[a-z.]+\.(?:org|com|net)\b'
  assert len(re.findall(email, text)) == identifiers['email']
  assert len(re.findall(r'(?:\+1 \d{3}-|\(\d{3}\) )\d{3}-\d{4}', text)) == identifiers['phone']
  assert len(re.findall(r'\b(?:\d{1,3}\.){3}\d{1,3}\b', text)) == identifiers['ipv4']


def test_bad_lines_leave_the_documents_alone(two_mb, tmp_path):
  path, counts = two_mb
  bad = bench_data.generate(str(tmp_path / 'bad.jsonl'), 2_000_000, seed=0, bad_lines=3)
  assert bad['bad_lines'] == {'not_json': 2, 'no_text': 1}
  documents, rejected = [], 0
  for line in read_lines(tmp_path / 'bad.jsonl'):
    try:
      documents.append(json.loads(line)['text'])
    except (json.JSONDecodeError, KeyError):
      rejected += 1
  assert rejected == 3 and len(documents) == bad['documents']
  assert documents == [json.loads(line)['text'] for line in read_lines(path)][:len(documents)]


def test_measure_sees_memory_and_failure():
  grown = bench_data.measure(
      [sys.executable, '-c', 'x = bytearray(200_000_000); import time; time.sleep(0.5)'])
  assert grown['returncode'] == 0 and grown['seconds'] >= 0.5
  assert grown['peak_rss_bytes'] >= grown['peak_process_rss_bytes'] >= 190_000_000
  failed = bench_data.measure([sys.executable, '-c', 'import sys; print(1); sys.exit("boom")'])
  assert failed['returncode'] == 1
  assert (failed['stdout_tail'], failed['stderr_tail']) == ('1', 'boom')


def test_overrides_are_literals_or_strings():
  assert bench_data.parse_override('data.min_chars=100') == ('min_chars', 100)
  assert bench_data.parse_override('data.corpus=a.txt') == ('corpus', 'a.txt')
  with pytest.raises(UserError, match='is not data.KEY=VALUE'):
    bench_data.parse_override('min_chars=100')


def test_each_cleaning_stage_removes_what_was_planted_for_it(two_mb):
  """The stage counts on the generated corpus: every planted duplicate, near-duplicate (word
  5-gram Jaccard ~0.9, threshold 0.8), other-script document, blocked host and identifier."""
  from gpt_jax import clean, corpus
  path, counts = two_mb
  docs, _ = corpus.load_documents(path)
  settings = clean.Settings(min_chars=200, min_letter_fraction=0.6, script='latin',
                            min_script_fraction=0.8, blocked_hosts=frozenset({'spam.example'}),
                            near_dedup=True, scrub_pii=True)
  _, report = clean.clean_documents(docs, settings)
  planted, found = counts['planted'], counts['identifiers']
  assert {stage: n for stage, (n, _) in report.removed.items()} == {
      'quality': 3, 'script': planted['other_script'], 'blocked_host': planted['spam_host'],
      'exact_dedup': planted['exact_duplicate'], 'near_dedup': planted['near_duplicate']}
  assert report.pii == {'email': found['email'], 'phone': found['phone'],
                        'ip_address': found['ipv4']}


def test_a_corpus_is_split_into_files_of_consecutive_lines(tmp_path):
  path = tmp_path / 'c.jsonl'
  path.write_bytes(b''.join(b'{"text": "%d"}\n' % i for i in range(10)))
  directory = bench_data.split_corpus(str(path), 3)
  parts = sorted(os.listdir(directory))
  assert parts == ['part-00000.jsonl', 'part-00001.jsonl', 'part-00002.jsonl']
  lines = [open(os.path.join(directory, p), 'rb').read().splitlines() for p in parts]
  assert [len(part) for part in lines] == [3, 3, 4]
  assert b'\n'.join(line for part in lines for line in part) + b'\n' == path.read_bytes()
  assert bench_data.split_corpus(str(path), 3) == directory  # made once
