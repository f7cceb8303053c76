"""Preparing a corpus on several machines: `prepare`'s stages as datatrove pipelines, run by
datatrove's executors, with de-duplication across the whole corpus.

    python -m gpt_jax.cluster_prepare --config=FILE --config.data.tokenizer=TOKENIZER \\
        [--config.data.cluster.executor=local|slurm|ray] [--config.data.cluster.tasks=N] ...

Four pipelines, each a datatrove executor over the same logging folder's completion markers, so
a rerun skips the tasks that finished and redoes the rest (a killed task's outputs are rewritten
whole):
  1. inspect (N tasks): task i reads the i-th of N runs of the sorted corpus files (corpus.records)
     and runs each document's own stages (clean.inspect: quality, Gopher/C4, script, blocked
     hosts, the de-duplication keys, PII), writing the documents that pass to
     docs/0000i.jsonl.gz (datatrove's JsonlWriter) and their keys to keys/0000i.jsonl.gz.
  2. deduplicate (1 task): the keys of every document, in corpus order, through
     clean.Deduplicator, exactly as one machine de-duplicates: the first copy stays, a
     near-duplicate of a kept document goes. Only the keys are read (16 bytes, and with
     near_dedup a MinHash signature, per document), never the text.
  3. tokenize (N tasks): task i drops its removed documents, splits the rest by text (as
     prepare does) and writes each split's tokens, every document followed by EOS, as
     datatrove's .ds/.ds.index files (TokenizedFile).
  4. merge (1 task): the manifest, which training reads like prepare's (the .ds files in place,
     data.TokenShards), under the key that prepare would give the same settings: the kept
     documents and their tokens are the one-machine ones, in the same order (tested). The
     stages' copies of the text go.

Datatrove's own readers, quality filters and MinHash stages are not used: its readers shard files
by stride, not in runs (the corpus order the first-copy rule needs), and do not read this
project's formats (.md markup, Shakespeare, cut documents); its English word tokenizer for
MinHash needs spaCy; and its MinHash clusters documents by any band collision (transitive,
unverified), where prepare removes a document only when its estimated Jaccard similarity to a
kept one reaches data.near_dedup_threshold. Its executors, completion markers, JSONL writer and
token files are used as they are.

On several machines without a scheduler (`local` with data.cluster.local_tasks and
data.cluster.local_rank_offset, or `python -m gpt_jax.prepare --config.data.shard=i/N`, the cache
on a shared filesystem) each machine runs its tasks of 1 and 3; the machine at offset 0 runs 2
and 4; each waits for the others' markers between stages.
"""

import dataclasses
import gzip
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable

import ml_collections
import numpy as np

from gpt_jax import clean, cli, corpus, files, prepare, token_files, tokenizer as tokenizer_lib
from gpt_jax.errors import UserError

EXECUTORS = ('local', 'slurm', 'ray')
STAGES = ('inspect', 'deduplicate', 'tokenize', 'merge')
_POLL_S = 1.0  # how often a machine looks for the other machines' completion markers
_ENCODE_BATCH = 512  # documents a tokenize task holds and encodes at once


def _require_datatrove() -> None:
  try:
    import datatrove  # noqa: F401  (only this command needs it)
  except ImportError:
    raise UserError("preparing on datatrove's executors needs datatrove: pip install -e "
                    "'.[cluster]' (or prepare on this machine: python -m gpt_jax.prepare)"
                    ) from None


@dataclasses.dataclass(frozen=True)
class Plan:
  """What every stage needs, picklable for datatrove's workers."""
  paths: tuple[str, ...]
  corpus: str
  read: dict  # corpus.documents' settings
  max_chars: int
  piece_chars: int
  cleaning: clean.Settings
  val_fraction: float
  tokenizer_path: str
  work: str  # DIRECTORY.work: the stages' outputs and datatrove's logs
  directory: str  # the prepared data
  tasks: int  # of stages 1 and 3
  settings: dict  # prepare.keyed_settings: the manifest's
  data: dict  # config.data, for prepare.check_prepared's messages

  def docs(self, rank: int) -> str:
    return os.path.join(self.work, 'docs', f'{rank:05d}.jsonl.gz')

  def keys(self, rank: int) -> str:
    return os.path.join(self.work, 'keys', f'{rank:05d}.jsonl.gz')

  def stats(self, stage: str, rank: int) -> str:
    return os.path.join(self.work, 'stats', stage, f'{rank:05d}.json')


def _inspect(plan: Plan, data, rank: int, world_size: int) -> None:
  """Stage 1 for task `rank`: its run of files through each document's own stages."""
  from datatrove.data import Document
  from datatrove.pipeline.writers import JsonlWriter
  first, end = rank * len(plan.paths) // world_size, (rank + 1) * len(plan.paths) // world_size
  loaded, cleaned = corpus.LoadReport(plan.corpus, end - first), clean.CleanReport()
  with JsonlWriter(os.path.dirname(plan.docs(rank)), output_filename='${rank}.jsonl.gz',
                   compression='gzip') as writer, \
      files.atomic_path(plan.keys(rank)) as tmp, gzip.open(tmp, 'wt') as keys:
    for path in plan.paths[first:end]:
      for record in corpus.records(path, shakespeare=plan.corpus == 'shakespeare',
                                   max_chars=plan.max_chars, piece_chars=plan.piece_chars):
        for doc in corpus.documents(record, loaded, **plan.read):
          item = clean.inspect(doc, plan.cleaning)
          if item.removed_by:
            cleaned.count(item, item.removed_by)
            continue
          writer.write(Document(text=item.doc.text, id=item.doc.source), rank)
          keys.write(json.dumps([item.doc.source, item.chars, item.digest.hex(), item.pii,
                                 None if item.signature is None else item.signature.tolist()])
                     + '\n')
  files.write_json(plan.stats('inspect', rank),
                   {'read': dataclasses.asdict(loaded), 'cleaning': cleaned.to_json()})


def _read_docs(path: str):
  """The documents stage 1 wrote to `path`, in order (none when its task kept none: JsonlWriter
  makes a file for the first document)."""
  from datatrove.pipeline.readers import JsonlReader
  if not os.path.exists(path):
    return iter(())
  folder, name = os.path.split(path)
  return JsonlReader(folder, glob_pattern=name, compression='gzip', doc_progress=False).run()


def _deduplicate(plan: Plan, data, rank: int, world_size: int) -> None:
  """Stage 2 (one task): clean.Deduplicator over every kept document's keys in corpus order."""
  del data, rank, world_size
  dedup, cleaned, removed = clean.Deduplicator(plan.cleaning), clean.CleanReport(), {}
  for part in range(plan.tasks):
    removed[part] = []
    with gzip.open(plan.keys(part), 'rt') as keys:
      for i, line in enumerate(keys):
        source, chars, digest, pii, signature = json.loads(line)
        item = clean.Inspected(corpus.Document(source, ''), chars, '', bytes.fromhex(digest),
                               None if signature is None else np.asarray(signature, np.uint64),
                               pii)
        stage = dedup.duplicate_of_earlier(item)
        cleaned.count(item, stage)
        if stage:
          removed[part].append(i)
  files.write_json(plan.stats('deduplicate', 0), {'cleaning': cleaned.to_json(),
                                                   'removed': removed})


def _tokenize(plan: Plan, data, rank: int, world_size: int) -> None:
  """Stage 3 for task `rank`: its kept documents split and tokenized into .ds files."""
  from datatrove.pipeline.tokens.tokenizer import TokenizedFile
  removed = set(_read_json(plan.stats('deduplicate', 0))['removed'][str(rank)])
  tokenizer = tokenizer_lib.load(plan.tokenizer_path)
  token_size = token_files.token_dtype(tokenizer.vocab_size).itemsize
  outputs = {split: TokenizedFile(os.path.join(plan.work, 'tokens', split), f'{rank:05d}.ds',
                                  token_size=token_size) for split in prepare.SPLITS}
  counts = {split: {'documents': 0, 'chars': 0, 'bytes': 0, 'lines': 0, 'tokens': 0}
            for split in prepare.SPLITS}
  kept = (doc.text for i, doc in enumerate(_read_docs(plan.docs(rank))) if i not in removed)
  while texts := list(itertools.islice(kept, _ENCODE_BATCH)):
    for text, ids in zip(texts, tokenizer.encode_batch(texts)):
      split = 'val' if prepare.is_validation(text, plan.val_fraction) else 'train'
      outputs[split].write(ids + [tokenizer.eos_id], None)
      prepare.count_document(counts[split], text, len(text.encode()))
      counts[split]['tokens'] += len(ids) + 1
  for output in outputs.values():
    output.close()
  files.write_json(plan.stats('tokenize', rank), counts)


def _merge(plan: Plan, data, rank: int, world_size: int) -> None:
  """Stage 4: the prepared directory (manifest, tokenizer, the .ds files), whole or not at all;
  UserError as prepare gives for no text, nothing kept or an empty split."""
  del data, rank, world_size
  loaded, cleaned = corpus.LoadReport(plan.corpus, len(plan.paths)), clean.CleanReport()
  tokenizer = tokenizer_lib.load(plan.tokenizer_path)
  dtype = token_files.token_dtype(tokenizer.vocab_size).str
  splits = {split: {'documents': 0, 'chars': 0, 'bytes': 0, 'lines': 0, 'tokens': 0,
                    'shards': []} for split in prepare.SPLITS}
  for part in range(plan.tasks):
    stats = _read_json(plan.stats('inspect', part))
    loaded.add(corpus.LoadReport(**stats['read']))
    cleaned.add(clean.CleanReport.from_json(stats['cleaning']))
    for split, counts in _read_json(plan.stats('tokenize', part)).items():
      for name, n in counts.items():
        splits[split][name] += n
      if counts['tokens']:
        splits[split]['shards'].append({
            'file': f'{split}/{part:05d}.ds', 'start': 0, 'tokens': counts['tokens'],
            'documents': counts['documents'], 'dtype': dtype})
  cleaned.add(clean.CleanReport.from_json(
      _read_json(plan.stats('deduplicate', 0))['cleaning']))
  prepare.check_prepared(loaded, cleaned, plan.cleaning, splits,
                         ml_collections.ConfigDict(plan.data))
  lines = [loaded.summary(), cleaned.summary(plan.cleaning),
           f'prepared by {plan.tasks} datatrove tasks, de-duplicated across the whole corpus']
  lines += [f'{split}: {s["documents"]:,} documents, {s["tokens"]:,} tokens'
            for split, s in splits.items()]
  manifest = {**plan.settings, 'files': len(plan.paths), 'corpus': plan.corpus,
              'read': loaded.to_json(), 'cleaning': cleaned.summary(plan.cleaning),
              'cleaning_counts': cleaned.to_json(), 'log': lines,
              'tokenizer_sha256': tokenizer.sha256, 'vocab_size': tokenizer.vocab_size,
              'splits': splits}
  build = os.path.join(plan.work, 'build')
  shutil.rmtree(build, ignore_errors=True)
  # Hard links: the merge copies no token, and a merge killed midway leaves the tokens in place.
  shutil.copytree(os.path.join(plan.work, 'tokens'), build, copy_function=os.link,
                  ignore=shutil.ignore_patterns('*.metadata'))
  tokenizer.save(os.path.join(build, tokenizer.filename))
  files.write_json(os.path.join(build, 'manifest.json'), manifest)
  os.rename(build, plan.directory)
  for copy in ('docs', 'keys', 'tokens'):  # the corpus's text again, and links to the tokens
    shutil.rmtree(os.path.join(plan.work, copy), ignore_errors=True)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


@dataclasses.dataclass(frozen=True)
class _Stage:
  """A stage as a datatrove pipeline step: a callable of (data, rank, world_size)."""
  name: str
  plan: Plan

  def __call__(self, data, rank: int = 0, world_size: int = 1) -> None:
    # Looked up when called, in the task's process: the module's function as it is there.
    globals()[f'_{self.name}'](self.plan, data, rank, world_size)

  def __repr__(self) -> str:  # datatrove logs its pipeline's steps
    return f'gpt_jax {self.name}'


def _executor(cluster, stage: str, plan: Plan, tasks: int, depends=None):
  """The datatrove executor of `stage` over `tasks` tasks (data.cluster says which and how)."""
  pipeline = [_Stage(stage, plan)]
  logs = os.path.join(plan.work, 'logs', stage)
  if cluster.executor == 'local':
    from datatrove.executor import LocalPipelineExecutor
    mine = tasks if tasks == 1 else cluster.local_tasks if cluster.local_tasks > 0 else tasks
    offset = 0 if tasks == 1 else cluster.local_rank_offset
    # A one-task stage runs in this process: a pool of workers would only start for it.
    workers = min(cluster.workers or tasks, mine)
    return LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logs,
                                 local_tasks=mine, local_rank_offset=offset)
  if cluster.executor == 'slurm':
    from datatrove.executor import SlurmPipelineExecutor
    return SlurmPipelineExecutor(pipeline, tasks=tasks, time=cluster.slurm_time,
                                 partition=cluster.slurm_partition, logging_dir=logs,
                                 job_name=f'gpt_jax_{stage}', depends=depends)
  from datatrove.executor import RayPipelineExecutor
  _connect_ray()
  return RayPipelineExecutor(pipeline, tasks=tasks, workers=cluster.workers or -1,
                             logging_dir=logs, depends=depends)


def _connect_ray() -> None:
  """Joins the running Ray cluster ($RAY_ADDRESS, else the one `ray start` left on this
  machine); UserError when Ray is not installed or no cluster runs."""
  try:
    import ray
  except ImportError:
    raise UserError("data.cluster.executor=ray needs Ray: pip install 'ray>=2.40'") from None
  if ray.is_initialized():
    return
  try:
    ray.init(address=os.environ.get('RAY_ADDRESS', 'auto'), log_to_driver=False)
  except ConnectionError:
    raise UserError('data.cluster.executor=ray found no Ray cluster: start one (ray start --head '
                    'on this machine, or set RAY_ADDRESS) and run again') from None


def _run(executor, stage: str, cluster, work: str) -> None:
  """Runs this machine's tasks of `stage`; UserError naming the failed ones (a UserError of a
  task, such as a corpus file that is not JSON, as it is)."""
  retry = (f'see {work}/logs/{stage}/logs, then run the same command again: it redoes the '
           'failed tasks alone')
  try:
    executor.run()
  except UserError:
    raise
  except Exception as e:  # a task's own exception, re-raised by the executor after logging it
    raise UserError(f'{stage}: a task failed ({type(e).__name__}: {e}); {retry}') from None
  if executor.world_size == 1 or cluster.executor == 'ray' or cluster.local_tasks <= 0:
    mine = range(executor.world_size)
  else:
    mine = range(cluster.local_rank_offset, cluster.local_rank_offset + cluster.local_tasks)
  failed = sorted(set(executor.get_incomplete_ranks()) & set(mine))
  if failed:
    raise UserError(f'{stage}: task(s) {", ".join(map(str, failed))} did not finish; {retry}')


def _wait(executor, stage: str, log) -> None:
  """Returns when every task of `executor` has its completion marker (some may run elsewhere)."""
  said = False
  while incomplete := executor.get_incomplete_ranks():
    if not said:
      log(f'{stage}: waiting for task(s) {", ".join(map(str, incomplete[:8]))} of '
          f'{executor.world_size} on the other machines')
      said = True
    time.sleep(_POLL_S)


def check_cluster(cluster, paths: list[str], shard: str = '') -> None:
  """UserError for data.cluster settings out of range (`shard`: the data.shard they came from)."""
  if cluster.executor not in EXECUTORS:
    raise UserError(f'data.cluster.executor={cluster.executor!r}: pass one of '
                    f'{", ".join(EXECUTORS)} (or prepare on this machine: python -m '
                    'gpt_jax.prepare)')
  if shard and cluster.tasks > len(paths):
    raise UserError(f'data.shard={shard}: the corpus has {len(paths)} files, fewer than the '
                    f'{cluster.tasks} tasks of its machines (a task reads whole files); use at '
                    f'most {len(paths)} machines, or more files')
  if not 1 <= cluster.tasks <= len(paths):
    raise UserError(f'data.cluster.tasks={cluster.tasks}: the corpus has {len(paths)} files; '
                    f'pass 1 to {len(paths)} tasks (a task reads whole files)')
  if cluster.local_rank_offset < 0 or cluster.local_rank_offset + max(
      cluster.local_tasks, 0) > cluster.tasks:
    raise UserError(f'data.cluster.local_rank_offset={cluster.local_rank_offset} and '
                    f'local_tasks={cluster.local_tasks} go beyond the {cluster.tasks} tasks; '
                    'each machine runs tasks offset .. offset + local_tasks - 1')


def as_machine_of(data_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.data with data.shard='i/N' as its data.cluster: the local executor, this machine
  running the i-th N-th of data.cluster.tasks (raised to N if fewer).
  UserError unless it is 'i/N' with 0 <= i < N, or if N does not divide the tasks."""
  try:
    i, n = (int(x) for x in data_cfg.shard.split('/'))
  except ValueError:
    i = n = -1
  if not 0 <= i < n:
    raise UserError(f"data.shard={data_cfg.shard!r} is not 'i/N' with 0 <= i < N; pass e.g. "
                    '--config.data.shard=0/4 on the first of 4 machines')
  tasks = max(data_cfg.cluster.tasks, n)
  if tasks % n:
    raise UserError(f'data.shard={data_cfg.shard}: {n} machines cannot share '
                    f'data.cluster.tasks={tasks} tasks evenly; pass a multiple of {n}')
  machine = ml_collections.ConfigDict(data_cfg.to_dict())  # data.shard kept, for the messages
  machine.cluster.update(executor='local', tasks=tasks, local_tasks=tasks // n,
                         local_rank_offset=i * tasks // n)
  return machine


def prepare_on_cluster(data_cfg: ml_collections.ConfigDict, vocab_size: int,
                       log: Callable[[str], None] = print) -> str:
  """Prepares config.data's corpus on datatrove's executors (module docstring) into the
  directory `prepare` would use; returns it (at once when it is prepared already). With the
  slurm executor, returns once the jobs are queued."""
  _require_datatrove()
  cleaning, given, paths = prepare.inputs(data_cfg, vocab_size)
  cluster = data_cfg.cluster
  check_cluster(cluster, paths, data_cfg.shard)
  if given is None:
    raise UserError('preparing on several machines needs one tokenizer: pass '
                    '--config.data.tokenizer (e.g. one python -m gpt_jax.prepare trained on a '
                    'sample of the files)')
  settings, directory = prepare.keyed_settings(data_cfg, vocab_size, cleaning, given, paths)
  if os.path.exists(os.path.join(directory, 'manifest.json')):
    log(f'reusing prepared data at {directory}')
    return directory
  work = directory + '.work'
  os.makedirs(work, exist_ok=True)
  tokenizer_path = os.path.join(work, given.filename)
  if not os.path.exists(tokenizer_path):
    given.save(tokenizer_path)
  read = dict(text_field=data_cfg.text_field, url_field=data_cfg.url_field,
              bad_lines=data_cfg.bad_lines)
  plan = Plan(tuple(paths), data_cfg.corpus, read, data_cfg.max_document_chars,
              data_cfg.piece_chars, cleaning, data_cfg.val_fraction, tokenizer_path, work,
              directory, cluster.tasks, settings, data_cfg.to_dict())
  executors = []
  for stage in STAGES:
    tasks = cluster.tasks if stage in ('inspect', 'tokenize') else 1
    executors.append(_executor(cluster, stage, plan, tasks,
                               depends=executors[-1] if executors else None))
  if cluster.executor == 'slurm':
    executors[-1].run()  # queues the four jobs, each depending on the one before
    log(f'queued the four stages on SLURM; the prepared data will be {directory}')
    return directory
  for stage, executor in zip(STAGES, executors):
    if cluster.executor == 'ray' or executor.world_size > 1 or cluster.local_rank_offset == 0:
      _run(executor, stage, cluster, work)
    _wait(executor, stage, log)
  if not os.path.exists(os.path.join(directory, 'manifest.json')):
    raise UserError(f'the merge did not write {directory}: see its log under {work}/logs/merge')
  for line in prepare.read_manifest(directory)['log']:
    log(line)
  return directory


def main(argv=None) -> None:
  def run():
    config, _ = cli.parse_train_args(sys.argv if argv is None else argv)
    print(f'prepared data: {prepare_on_cluster(config.data, config.model.vocab_size)}')

  cli.run(run)


if __name__ == '__main__':
  main()
