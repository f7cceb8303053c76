"""What preparing a large corpus costs, and what cleaning takes out of it (a benchmark that prints
figures, not a test):

  python -m gpt_jax.bench_data [--size_mb=300[,1200]] [--mode=prepare|cluster|train] [--repo=PATH]
                               [--set=data.KEY=VALUE ...] [--corpus_dir=DIR] [--seed=0]
                               [--bad_lines=0] [--files=1] [--json=OUT]

For each size a JSON Lines corpus ({"text", "url"} per line) is generated from the shipped
Shakespeare (`generate`), or reused from --corpus_dir, with planted documents that cleaning should
remove: exact and near duplicates of earlier documents, documents carrying e-mail addresses, phone
numbers and IPv4 addresses, low-quality ones, ones in Cyrillic, short ones and ones from the
blocked host spam.example; their counts are written beside the corpus (<corpus>.planted.json).

Mode prepare runs `data.prepare` of experiments/tiny.py on it in a fresh subprocess, with the
checkout --repo on PYTHONPATH (an old commit's `git worktree` is measured the same way), into a
fresh cache; mode cluster runs `python -m gpt_jax.cluster_prepare` (datatrove's local executor:
--set=data.cluster.tasks=N, data.cluster.workers=W; it needs --set=data.tokenizer=FILE, which
mode prepare takes too, for a like comparison); mode train runs 5 steps of `python -m
gpt_jax.train` instead. Per size it prints the
wall time, the throughput (corpus bytes / wall time), the peak resident memory of the process tree
and of its largest process (`measure`), and the cleaning entry of the prepared manifest as is.
"""

import ast
import dataclasses
import functools
import glob
import json
import os
import random
import re
import signal
import string
import subprocess
import sys
import tempfile
import time

from gpt_jax import cli, corpus, files
from gpt_jax.errors import UserError

GENERATOR_VERSION = 1  # bump when generate() writes other bytes, so cached corpora are not reused

# The share of documents of each planted kind; the rest are normal documents.
PLANTED_FRACTIONS = {
    'exact_duplicate': 0.02,  # the text of an earlier normal document, under another url
    'near_duplicate': 0.03,  # an earlier normal document with NEAR_DUPLICATE_WORDS replaced
    'pii': 0.05,  # a normal document with 1-3 e-mail addresses, phones or IPv4s at line ends
    'low_quality': 0.02,  # symbol soup, one line repeated, or a bullet list of numbers
    'other_script': 0.01,  # a normal document transliterated to Cyrillic letter by letter
    'short': 0.01,  # under SHORT_CHARS characters
    'spam_host': 0.01,  # a normal document whose url host is SPAM_HOST
}
NEAR_DUPLICATE_WORDS = 0.01  # replaced in a near duplicate: word 5-gram Jaccard ~0.9 to its source
DOCUMENT_PASSAGES = (8, 14)  # a normal document: this many passages (inclusive range) ...
PASSAGE_LINES = (10, 24)  # ... of this many consecutive lines of a random scene: ~6 KB
SHORT_CHARS = 200
SPAM_HOST = 'spam.example'
# Hosts under the reserved .example domain (RFC 2606), so no url names a real site.
HOSTS = tuple(f'{word}-{kind}.example' for word in (
    'globe', 'rialto', 'elsinore', 'arden', 'verona', 'illyria', 'athens', 'dunsinane', 'windsor',
    'bosworth') for kind in ('news', 'blog', 'forum', 'wiki', 'shop'))
DUPLICATE_POOL = 1000  # earlier normal documents kept (a uniform sample) to copy duplicates from

_NAMES = ('iago', 'viola', 'hamlet', 'portia', 'puck', 'lear', 'juliet', 'falstaff', 'rosalind',
          'prospero')
_MAIL_DOMAINS = ('example.org', 'example.com', 'example.net', 'mail.example.org')
_SYMBOLS = '#$%&*+<=>^_|~{}[]/\\'  # no '@', which e-mail scrubbing should not see here
_CYRILLIC = str.maketrans(string.ascii_lowercase + string.ascii_uppercase,
                          'абцдефгхийклмнопярстувшжыз' + 'абцдефгхийклмнопярстувшжыз'.upper())
_WORD = re.compile(r'\S+')


@dataclasses.dataclass(frozen=True)
class _Source:
  scenes: list[tuple[str, list[int]]]  # each scene's non-blank lines joined by '\n', and where
  # each line starts (plus len + 1 at the end), so a run of lines is one slice
  words: list[str]  # the distinct words, sorted: replacements for near duplicates


@functools.cache
def _source() -> _Source:
  docs, _ = corpus.load_documents('shakespeare')
  scenes, words = [], set()
  for doc in docs:
    lines = [line for line in doc.text.split('\n') if line.strip()]
    starts = [0]
    for line in lines:
      starts.append(starts[-1] + len(line) + 1)
    scenes.append(('\n'.join(lines), starts))
    words.update(re.findall(r"[A-Za-z']+", doc.text))
  return _Source(scenes, sorted(words))


def _passages(source: _Source, rng, count: int) -> str:
  """`count` runs of PASSAGE_LINES consecutive lines of random scenes, a blank line between."""
  # int(random() * n), not randrange(n): generation spends its time here, and randrange costs
  # twice as much; the bias (n / 2^53) does not matter for a benchmark's text.
  low, high = PASSAGE_LINES
  parts = []
  for _ in range(count):
    text, starts = source.scenes[int(rng.random() * len(source.scenes))]
    num_lines = low + int(rng.random() * (high - low + 1))
    last = len(starts) - 1  # the number of lines
    first = int(rng.random() * max(1, last - num_lines + 1))
    parts.append(text[starts[first]:starts[min(first + num_lines, last)] - 1])
  return '\n\n'.join(parts)


def _near_duplicate(text: str, rng, words: list[str]) -> str:
  spans = [m.span() for m in _WORD.finditer(text)]
  chosen = sorted(rng.sample(range(len(spans)), max(1, round(NEAR_DUPLICATE_WORDS * len(spans)))))
  out, end = [], 0
  for i in chosen:
    start, stop = spans[i]
    word = rng.choice(words)
    while word == text[start:stop]:
      word = rng.choice(words)
    out += [text[end:start], word]
    end = stop
  return ''.join(out + [text[end:]])


def _phone(rng) -> str:
  """A North American number, '+1 555-123-4567' or '(555) 123-4567'."""
  area = rng.randrange(200, 1000)
  number = f'{rng.randrange(100, 1000)}-{rng.randrange(10_000):04d}'
  return f'+1 {area}-{number}' if rng.random() < 0.5 else f'({area}) {number}'


_IDENTIFIERS = {
    'email': lambda rng: f'{rng.choice(_NAMES)}.{rng.randrange(100)}@{rng.choice(_MAIL_DOMAINS)}',
    'phone': _phone,
    'ipv4': lambda rng: '.'.join(str(rng.randrange(1, 255)) for _ in range(4)),
}


def _with_identifiers(text: str, rng, counts: dict) -> str:
  lines = text.split('\n')
  for _ in range(rng.randint(1, 3)):
    kind = rng.choice(sorted(_IDENTIFIERS))
    counts[kind] += 1
    lines[rng.randrange(len(lines))] += ' ' + _IDENTIFIERS[kind](rng)
  return '\n'.join(lines)


def _low_quality(source: _Source, rng) -> str:
  kind = rng.randrange(3)
  if kind == 0:  # symbol soup
    return '\n'.join(''.join(rng.choices(_SYMBOLS + ' ', k=rng.randint(40, 80)))
                     for _ in range(rng.randint(20, 60)))
  if kind == 1:  # one line over and over
    line = _passages(source, rng, 1).split('\n')[0]
    return '\n'.join([line] * rng.randint(50, 150))
  return '\n'.join(f'- {rng.randrange(1_000_000)}' for _ in range(rng.randint(100, 300)))


def _draw_kind(rng) -> str:
  draw = rng.random()
  for kind, fraction in PLANTED_FRACTIONS.items():
    if draw < fraction:
      return kind
    draw -= fraction
  return 'normal'


def _text(kind: str, source: _Source, rng, pool: list[str], identifiers: dict) -> str:
  if kind == 'exact_duplicate':
    return rng.choice(pool)
  if kind == 'near_duplicate':
    return _near_duplicate(rng.choice(pool), rng, source.words)
  if kind == 'low_quality':
    return _low_quality(source, rng)
  if kind == 'short':
    return _passages(source, rng, 1)[:rng.randrange(40, SHORT_CHARS)].strip()
  text = _passages(source, rng, rng.randint(*DOCUMENT_PASSAGES))
  if kind == 'pii':
    return _with_identifiers(text, rng, identifiers)
  if kind == 'other_script':
    return text.translate(_CYRILLIC)
  return text  # normal and spam_host


def generate(path: str, size_bytes: int, seed: int = 0, bad_lines: int = 0) -> dict:
  """Writes a JSON Lines corpus of about `size_bytes` bytes (it stops at the first line that
  reaches it) to `path`, atomically, and its planted counts to <path>.planted.json.

  Each line is {"text", "url"}: a normal document is DOCUMENT_PASSAGES passages of PASSAGE_LINES
  consecutive lines of random Shakespeare scenes (~6 KB; distinct documents share almost no word
  5-grams), its url https://<one of HOSTS>/<document number>; a PLANTED_FRACTIONS share of them are
  planted kinds instead. `bad_lines` more lines, at random places, are not documents: every
  other one is not JSON, the rest JSON without "text". Memory stays bounded (DUPLICATE_POOL
  documents), whatever the size. The bytes depend on (size_bytes, seed, bad_lines) alone; the
  first call reads the plays (~0.5 s).

  Returns what <path>.planted.json holds: 'documents' (lines with a text), 'bytes', 'planted'
  (documents of each PLANTED_FRACTIONS kind), 'identifiers' (e-mail addresses, phones and IPv4s
  in the pii documents), 'bad_lines' ('not_json', 'no_text'), and the arguments.
  """
  if size_bytes < 1 or bad_lines < 0:
    raise UserError(f'generate: size_bytes={size_bytes} must be >= 1 and bad_lines={bad_lines} '
                    '>= 0')
  source, rng = _source(), random.Random(seed)
  # Their own generator, so bad_lines changes no document (a few at the end may not fit).
  bad_rng = random.Random(f'{seed}:bad_lines')
  bad_at = sorted(bad_rng.randrange(size_bytes) for _ in range(bad_lines))
  planted = dict.fromkeys(PLANTED_FRACTIONS, 0)
  identifiers = dict.fromkeys(sorted(_IDENTIFIERS), 0)
  bad = {'not_json': 0, 'no_text': 0}
  pool, normal_docs, written, documents = [], 0, 0, 0
  with files.atomic_path(path) as tmp, open(tmp, 'wb', buffering=1 << 20) as f:
    while written < size_bytes:
      if bad_at and written >= bad_at[0]:
        bad_at.pop(0)
        kind = 'not_json' if sum(bad.values()) % 2 == 0 else 'no_text'
        bad[kind] += 1
        line = ('{"text": "cut off' if kind == 'not_json' else
                json.dumps({'url': f'https://{bad_rng.choice(HOSTS)}/{documents}'}))
        written += f.write(line.encode() + b'\n')
        continue
      kind = _draw_kind(rng) if pool else 'normal'  # the first one: nothing to duplicate yet
      host = SPAM_HOST if kind == 'spam_host' else rng.choice(HOSTS)
      text = _text(kind, source, rng, pool, identifiers)
      if kind != 'normal':
        planted[kind] += 1
      else:  # reservoir sampling (Vitter's algorithm R): the pool stays a uniform sample
        normal_docs += 1
        if len(pool) < DUPLICATE_POOL:
          pool.append(text)
        elif (slot := rng.randrange(normal_docs)) < DUPLICATE_POOL:
          pool[slot] = text
      # UTF-8 for Cyrillic (not 6 bytes a letter); else ASCII: json's ASCII encoder is 2x faster
      line = json.dumps({'text': text, 'url': f'https://{host}/{documents}'},
                        ensure_ascii=kind != 'other_script')
      written += f.write(line.encode() + b'\n')
      documents += 1
  counts = {'documents': documents, 'bytes': written, 'planted': planted,
            'identifiers': identifiers, 'bad_lines': bad, 'size_bytes': size_bytes, 'seed': seed,
            'generator_version': GENERATOR_VERSION}
  files.write_json(path + '.planted.json', counts)
  return counts


def _tree(root: int) -> list[int]:
  """`root` and all its descendants alive now, from the parent ids in /proc/<pid>/stat (which,
  unlike /proc/<pid>/task/*/children, every Linux kernel has)."""
  children: dict[int, list[int]] = {}
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        with open(f'/proc/{entry}/stat', 'rb') as f:
          stat = f.read()
      except OSError:  # it exited meanwhile
        continue
      ppid = int(stat[stat.rindex(b')') + 2:].split(maxsplit=2)[1])  # after '(comm) state '
      children.setdefault(ppid, []).append(int(entry))
  tree, todo = [], [root]
  while todo:
    pid = todo.pop()
    tree.append(pid)
    todo += children.get(pid, [])
  return tree


def _rss_bytes(pid: int) -> tuple[int, int]:
  """Resident memory of process `pid` (VmRSS) and the anonymous part of it (RssAnon: not pages
  of mapped files, which the kernel can drop and read again), (0, 0) if it has exited."""
  sizes = {b'VmRSS:': 0, b'RssAnon:': 0}
  try:
    with open(f'/proc/{pid}/status', 'rb') as f:
      for line in f:
        fields = line.split()
        if fields and fields[0] in sizes:
          sizes[fields[0]] = int(fields[1]) * 1024  # in kB
  except OSError:
    pass
  return sizes[b'VmRSS:'], sizes[b'RssAnon:']


def _tail(f, num_lines: int) -> str:
  f.seek(0)
  return '\n'.join(f.read().decode('utf-8', 'replace').rstrip('\n').split('\n')[-num_lines:])


def measure(command: list[str], *, cwd: str | None = None, env: dict | None = None,
            interval: float = 0.05, tail_lines: int = 20) -> dict:
  """Runs `command` and samples its memory every `interval` seconds until it exits.

  Returns 'seconds' (wall), 'returncode', 'peak_rss_bytes' (the largest sum of the resident
  memory of the process and all its descendants at one sample), 'peak_anon_bytes' (the same sum
  of anonymous memory: RSS without the pages of memory-mapped files such as token shards, which
  the kernel drops under pressure), 'peak_process_rss_bytes' (the largest single process), and
  'stdout_tail' and 'stderr_tail' (their last `tail_lines` lines; both go to temporary files, so
  no pipe fills up and blocks it). A sum of RSS counts pages that processes share (a fork's
  copy-on-write pages, the same mapped file) once per process, so the tree peak is an upper bound
  for forked workers; samples can miss a peak shorter than `interval`. wait4's ru_maxrss is not
  used: for a child forked from a large process (pytest) it reports the parent's size. Linux only
  (/proc). If this process is interrupted, the command's process group is
  killed.
  """
  peak_tree = peak_process = peak_anon = 0
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=err, start_new_session=True)
    try:
      while True:
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
          break
        sizes, anon = zip(*[_rss_bytes(p) for p in _tree(proc.pid)])
        peak_tree, peak_process = max(peak_tree, sum(sizes)), max(peak_process, *sizes)
        peak_anon = max(peak_anon, sum(anon))
        time.sleep(interval)
    except BaseException:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      raise
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, so Popen never will
    return {'seconds': seconds, 'returncode': proc.returncode,
            'peak_rss_bytes': max(peak_tree, peak_process), 'peak_process_rss_bytes': peak_process,
            'peak_anon_bytes': peak_anon,
            'stdout_tail': _tail(out, tail_lines), 'stderr_tail': _tail(err, tail_lines)}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout
EXPERIMENT = 'experiments/tiny.py'
# Run by `python -c` in --repo with argv: experiment, corpus, cache directory, repr of the data
# overrides; only what old checkouts have too.
PREPARE = '''
import ast, sys
from gpt_jax import cli, data
config = cli.load_experiment(sys.argv[1])
config.data.corpus, config.data.cache_dir = sys.argv[2], sys.argv[3]
for key, value in ast.literal_eval(sys.argv[4]).items():
  if key not in config.data:
    sys.exit(f'error: this checkout has no config.data.{key}; drop --set=data.{key}=...')
  config.data[key] = value
data.prepare(config.data, config.model.vocab_size, log=print)
'''


def corpus_file(directory: str, size_mb: float, seed: int, bad_lines: int) -> tuple[str, dict]:
  """(path, planted counts) of the corpus of `size_mb` MB (10^6 bytes) for `seed`, generated into
  `directory` unless a whole one (its .planted.json is written last) is there already."""
  name = f'shakespeare_{size_mb:g}mb_seed{seed}_bad{bad_lines}_v{GENERATOR_VERSION}.jsonl'
  path = os.path.join(directory, name)
  if os.path.isfile(path) and os.path.isfile(path + '.planted.json'):
    with open(path + '.planted.json') as f:
      print(f'reusing {path}', flush=True)
      return path, json.load(f)
  _source()  # read before the clock starts: the figure is generation speed
  start = time.perf_counter()
  planted = generate(path, round(size_mb * 1e6), seed, bad_lines)
  seconds = time.perf_counter() - start
  print(f'generated {path}: {planted["bytes"] / 1e6:,.1f} MB, {planted["documents"]:,} documents '
        f'in {seconds:.1f} s ({planted["bytes"] / 1e6 / seconds:,.0f} MB/s)', flush=True)
  return path, planted


def split_corpus(path: str, parts: int) -> str:
  """The directory of `path` cut into `parts` files of consecutive lines (corpus order kept: the
  first-copy de-duplication gives the same documents), made once beside it."""
  directory = f'{path}.parts{parts}'
  if os.path.isdir(directory):
    return directory
  with open(path, 'rb') as f:
    lines = sum(1 for _ in f)
  with files.new_directory(directory, '--files') as tmp, open(path, 'rb') as f:
    for i in range(parts):
      with open(os.path.join(tmp, f'part-{i:05d}.jsonl'), 'wb') as out:
        for _ in range((i + 1) * lines // parts - i * lines // parts):
          out.write(next(f))
  return directory


def parse_override(text: str) -> tuple[str, object]:
  """'data.KEY=VALUE' -> (KEY, VALUE as a Python literal, else the string)."""
  key, eq, value = text.partition('=')
  if not key.startswith('data.') or not eq or len(key) == len('data.'):
    raise UserError(f'--set={text!r} is not data.KEY=VALUE; pass e.g. --set=data.min_chars=100')
  try:
    return key[len('data.'):], ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key[len('data.'):], value


def command(args, corpus_path: str, tmp: str) -> list[str]:
  """The measured command: mode prepare or train of --repo on `corpus_path`, caching into `tmp`."""
  cache = os.path.join(tmp, 'cache')
  if args.mode == 'prepare':
    overrides = dict(parse_override(item) for item in args.set)
    return [sys.executable, '-c', PREPARE, EXPERIMENT, corpus_path, cache, repr(overrides)]
  if args.mode == 'cluster':
    return [sys.executable, '-m', 'gpt_jax.cluster_prepare', f'--config={EXPERIMENT}',
            f'--config.data.corpus={corpus_path}', f'--config.data.cache_dir={cache}',
            *(f'--config.{item}' for item in args.set)]
  return [sys.executable, '-m', 'gpt_jax.train', f'--config={EXPERIMENT}',
          f'--config.data.corpus={corpus_path}', f'--config.data.cache_dir={cache}',
          '--config.steps=5', f'--workdir={os.path.join(tmp, "run")}',
          *(f'--config.{item}' for item in args.set)]


def _commit(repo: str) -> str:
  result = subprocess.run(['git', '-C', repo, 'rev-parse', '--short', 'HEAD'], text=True,
                          capture_output=True)
  return result.stdout.strip() if result.returncode == 0 else 'unknown'


def run(args) -> list[dict]:
  env = {**os.environ, 'PYTHONPATH': args.repo, 'PYTHONUNBUFFERED': '1'}  # tails even on a crash
  commit = _commit(args.repo)
  print(f'mode {args.mode} of {args.repo} at commit {commit}', flush=True)
  rows = []
  for size_mb in args.size_mb:
    path, planted = corpus_file(args.corpus_dir, size_mb, args.seed, args.bad_lines)
    source = split_corpus(path, args.files) if args.files > 1 else path
    # Beside the corpus, not in /tmp: a tmpfs would hold the prepared data in memory.
    with tempfile.TemporaryDirectory(prefix='.measure', dir=args.corpus_dir) as tmp:
      result = measure(command(args, os.path.abspath(source), tmp), cwd=args.repo, env=env)
      if result['returncode']:
        tails = '\n'.join(filter(None, (result['stdout_tail'], result['stderr_tail'])))
        print(f'{args.mode} of {path} failed (exit status {result["returncode"]}); the end of its '
              f'output:\n{tails}', file=sys.stderr)
        sys.exit(1)
      manifests = glob.glob(os.path.join(tmp, 'cache', 'data', '*', 'manifest.json'))
      cleaning = None
      if manifests:
        with open(manifests[0]) as f:
          cleaning = json.load(f).get('cleaning')
    print(f'{size_mb:g} MB: {result["seconds"]:.1f} s', flush=True)
    rows.append({'size_mb': size_mb, 'corpus': path, 'corpus_bytes': planted['bytes'],
                 'documents': planted['documents'], 'mode': args.mode, 'repo': args.repo,
                 'commit': commit, 'overrides': args.set, 'seconds': result['seconds'],
                 'mb_per_sec': planted['bytes'] / 1e6 / result['seconds'],
                 'peak_rss_bytes': result['peak_rss_bytes'],
                 'peak_process_rss_bytes': result['peak_process_rss_bytes'],
                 'peak_anon_bytes': result['peak_anon_bytes'],
                 'cleaning': cleaning, 'planted': planted})
  return rows


def table(rows: list[dict]) -> str:
  """The figures of each size as a markdown table (MB = 10^6 bytes, GB = 10^9), then each
  corpus's planted counts and the manifest's cleaning entry as they are."""
  lines = ['| corpus MB | documents | wall s | MB/s | peak RSS, tree GB | '
           'peak RSS, one process GB | peak anonymous, tree GB |', '|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['corpus_bytes'] / 1e6:,.1f} | {r['documents']:,} | {r['seconds']:.1f} | "
                 f"{r['mb_per_sec']:.2f} | {r['peak_rss_bytes'] / 1e9:.2f} | "
                 f"{r['peak_process_rss_bytes'] / 1e9:.2f} | {r['peak_anon_bytes'] / 1e9:.2f} |")
  for r in rows:
    planted = {k: r['planted'][k] for k in ('planted', 'identifiers', 'bad_lines')}
    cleaning = r['cleaning'] if isinstance(r['cleaning'], str) else json.dumps(r['cleaning'])
    lines += [f"{r['size_mb']:g} MB planted: {json.dumps(planted)}",
              f"{r['size_mb']:g} MB cleaning (manifest): {cleaning}"]
  return '\n'.join(lines)


def parse_args(argv):
  parser = cli.ArgumentParser(prog='python -m gpt_jax.bench_data',
                              description=__doc__.split('\n\n')[0])
  parser.add_argument('--size_mb', default='300', help='comma-separated corpus sizes, 10^6 bytes')
  parser.add_argument('--mode', default='prepare', choices=('prepare', 'cluster', 'train'))
  parser.add_argument('--repo', default=REPO, help='the gpt_jax checkout to measure')
  parser.add_argument('--set', action='append', default=[], metavar='data.KEY=VALUE',
                      help='a config.data override; repeatable')
  parser.add_argument('--corpus_dir', default='', help='default <cache root>/bench_data')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--bad_lines', type=int, default=0, help='lines that are not documents')
  parser.add_argument('--files', type=int, default=1,
                      help='the corpus cut into this many files (a cluster task reads whole files)')
  parser.add_argument('--json', default='runs/bench/data.json')
  args = parser.parse_args(argv)
  text = args.size_mb
  try:
    args.size_mb = [float(s) for s in text.split(',') if s]
  except ValueError:
    args.size_mb = []
  if not args.size_mb or min(args.size_mb) <= 0:
    raise UserError(f'--size_mb={text!r}: give a comma-separated list of positive sizes '
                    'in MB, e.g. 300,1200')
  if args.bad_lines < 0 or args.files < 1:
    raise UserError(f'--bad_lines={args.bad_lines} must be >= 0 and --files={args.files} >= 1')
  args.repo = os.path.abspath(args.repo)
  if not all(os.path.isfile(os.path.join(args.repo, p)) for p in ('gpt_jax/data.py', EXPERIMENT)):
    raise UserError(f'--repo={args.repo} is not a gpt_jax checkout (no gpt_jax/data.py and '
                    f'{EXPERIMENT}); pass one, e.g. a `git worktree` of an old commit')
  for item in args.set:
    parse_override(item)
  args.corpus_dir = args.corpus_dir or os.path.join(files.cache_root(), 'bench_data')
  return args


def main(argv=None) -> None:
  def bench():
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = run(args)
    print(table(rows))
    files.write_json(args.json, rows)
    print(f'wrote {args.json}')
  cli.run(bench)


if __name__ == '__main__':
  main()
