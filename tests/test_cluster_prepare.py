"""Preparation on datatrove's executors (gpt_jax.cluster_prepare): duplicates planted in different
files are removed across the whole corpus, the kept documents and tokens are one machine's,
several machines without a scheduler give the same, and a rerun redoes only a failed task."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY
from gpt_jax import cluster_prepare, config, corpus, data, prepare, tokenizer as tokenizer_lib
from gpt_jax.errors import UserError

pytest.importorskip('datatrove', reason="needs datatrove: pip install -e '.[cluster]'")
pytest.importorskip('datasketch', reason="needs datasketch: pip install -e '.[data]'")
VOCAB = 512


@pytest.fixture(scope='module')
def planted(small_corpus, tmp_path_factory) -> tuple[str, str]:
  """(corpus, tokenizer): 32 documents in 4 .jsonl files, with an exact copy of a file-0
  document in file 3 and an edited copy of a file-1 document in file 2."""
  root = tmp_path_factory.mktemp('planted')
  texts = [d.text for d in corpus.load_documents(small_corpus)[0] if len(d.text) > 400][:32]
  files = [texts[i * 8:(i + 1) * 8] for i in range(4)]
  files[3].insert(4, files[0][2])
  words = files[1][5].split(' ')
  files[2].insert(3, ' '.join(words[:10] + ['indeed'] + words[10:]))
  os.makedirs(root / 'corpus')
  for i, part in enumerate(files):
    (root / 'corpus' / f'{i}.jsonl').write_text('\n'.join(json.dumps({'text': t}) for t in part))
  tokenizer = tokenizer_lib.train(texts, VOCAB)
  tokenizer.save(str(root / 'tokenizer.model'))
  return str(root / 'corpus'), str(root / 'tokenizer.model')


def data_config(planted, cache_dir, val_fraction=0.2, near_dedup=True, **cluster):
  cfg = config.base_config().data
  cfg.update(corpus=planted[0], tokenizer=planted[1], cache_dir=str(cache_dir),
             val_fraction=val_fraction, near_dedup=near_dedup)
  cfg.cluster.update(dict(tasks=4, workers=2) | cluster)
  return cfg


@pytest.fixture(scope='module')
def one_machine(planted, tmp_path_factory) -> data.Prepared:
  return data.prepare(data_config(planted, tmp_path_factory.mktemp('one')), VOCAB,
                      log=lambda _: None)


def assert_same_as_one_machine(directory: str, one_machine: data.Prepared) -> None:
  prepared = data.Prepared.open(directory)
  assert os.path.basename(directory) == os.path.basename(one_machine.directory)  # one key
  counts = prepared.manifest['cleaning_counts']
  assert counts == one_machine.manifest['cleaning_counts']
  assert counts['removed']['exact_dedup']['documents'] == 1
  assert counts['removed']['near_dedup']['documents'] == 1
  for split in data.SPLITS:
    np.testing.assert_array_equal(np.asarray(prepared.tokens(split)),
                                  np.asarray(one_machine.tokens(split)))
    for name in ('documents', 'tokens', 'bytes', 'chars', 'lines'):
      assert (prepared.manifest['splits'][split][name]
              == one_machine.manifest['splits'][split][name]), (split, name)


def test_four_tasks_on_two_workers_remove_duplicates_across_files(planted, one_machine, tmp_path):
  lines = []
  directory = cluster_prepare.prepare_on_cluster(data_config(planted, tmp_path), VOCAB,
                                                 log=lines.append)
  assert_same_as_one_machine(directory, one_machine)
  assert 'prepared by 4 datatrove tasks, de-duplicated across the whole corpus' in lines
  assert not os.path.exists(directory + '.work/docs')  # the text's copy is gone
  assert not os.path.exists(directory + '.work/tokens')
  again = []
  assert cluster_prepare.prepare_on_cluster(data_config(planted, tmp_path), VOCAB,
                                            log=again.append) == directory
  assert again == [f'reusing prepared data at {directory}']


def test_a_failed_task_is_redone_alone_on_the_rerun(planted, one_machine, tmp_path, monkeypatch):
  cfg = data_config(planted, tmp_path, workers=1)  # tasks in this process: the patch reaches
  tokenize = cluster_prepare._tokenize

  def fail_rank_3(plan, data_, rank, world_size):
    if rank == 3:
      raise RuntimeError('killed')
    tokenize(plan, data_, rank, world_size)

  monkeypatch.setattr(cluster_prepare, '_tokenize', fail_rank_3)
  with pytest.raises(UserError, match=r'^tokenize: a task failed \(RuntimeError: killed\); see '
                     r'.*/logs/tokenize/logs, then run the same command again: it redoes the '
                     'failed tasks alone'):
    cluster_prepare.prepare_on_cluster(cfg, VOCAB, log=lambda _: None)
  monkeypatch.setattr(cluster_prepare, '_tokenize', tokenize)
  work = cluster_prepare.prepare.keyed_settings(
      cfg, VOCAB, *cluster_prepare.prepare.inputs(cfg, VOCAB)[:2],
      corpus.input_files(cfg.corpus))[1] + '.work'
  outputs = [os.path.join(work, 'docs', f'{r:05d}.jsonl.gz') for r in range(4)] + [
      os.path.join(work, 'tokens', 'train', f'{r:05d}.ds') for r in (0, 1, 2)]
  before = [os.stat(path).st_mtime_ns for path in outputs]
  directory = cluster_prepare.prepare_on_cluster(cfg, VOCAB, log=lambda _: None)
  assert_same_as_one_machine(directory, one_machine)
  after = [os.path.join(directory, 'train', f'{r:05d}.ds') for r in range(4)]
  assert [os.stat(path).st_mtime_ns for path in after[:3]] == before[4:]  # not redone
  assert os.stat(after[3]).st_mtime_ns > max(before)


@pytest.mark.slow
def test_four_machines_without_a_scheduler_give_the_same(planted, one_machine, tmp_path):
  """Four processes, `python -m gpt_jax.prepare --config.data.shard=i/4` each: the local executor
  with one task per machine on a shared cache; the one at offset 0 deduplicates and merges."""
  args = [sys.executable, '-m', 'gpt_jax.prepare', f'--config={TINY}',
          f'--config.data.corpus={planted[0]}', f'--config.data.tokenizer={planted[1]}',
          f'--config.data.cache_dir={tmp_path}', '--config.data.val_fraction=0.2',
          '--config.data.near_dedup=True']
  machines = [subprocess.Popen(args + [f'--config.data.shard={i}/4'], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for i in range(4)]
  outputs = [machine.communicate(timeout=300) for machine in machines]
  assert all(machine.returncode == 0 for machine in machines), outputs
  directories = {out.strip().splitlines()[-1] for out, _ in outputs}
  assert len(directories) == 1
  assert_same_as_one_machine(directories.pop().removeprefix('prepared data: '), one_machine)


def test_a_shard_is_a_machine_of_the_local_executor():
  cfg = config.base_config().data
  cfg.update(shard='2/4')
  cfg.cluster.update(executor='slurm', tasks=8)
  machine = cluster_prepare.as_machine_of(cfg)
  assert (machine.cluster.executor, machine.cluster.tasks, machine.cluster.local_tasks,
          machine.cluster.local_rank_offset) == ('local', 8, 2, 4)
  cfg.cluster.tasks = 2  # fewer tasks than machines: one each
  assert cluster_prepare.as_machine_of(cfg).cluster.local_tasks == 1
  for shard, message in (('4/4', r"^data.shard='4/4' is not 'i/N' with 0 <= i < N"),
                         ('x', r"^data.shard='x' is not 'i/N'")):
    cfg.shard = shard
    with pytest.raises(UserError, match=message):
      cluster_prepare.as_machine_of(cfg)
  cfg.update(shard='0/4')
  cfg.cluster.tasks = 6
  with pytest.raises(UserError, match=r'^data.shard=0/4: 4 machines cannot share data.cluster.'
                     'tasks=6 tasks evenly; pass a multiple of 4'):
    cluster_prepare.as_machine_of(cfg)


def test_an_empty_task_and_tasks_without_validation_are_no_error(planted, small_corpus,
                                                                 tmp_path):
  """Tasks hold what their files give, an empty or train-only one included; only the whole
  corpus must have both splits, as on one machine."""
  docs = corpus.load_documents(small_corpus)[0]
  val = [d.text for d in docs if prepare.is_validation(d.text, 0.1)][:1]
  train = [d.text for d in docs if not prepare.is_validation(d.text, 0.1)][:30]
  rows = lambda texts: '\n'.join(json.dumps({'text': t}) for t in texts)
  for name, texts in (('a', val + train[:10]), ('b', train[10:20]), ('c', train[20:])):
    (tmp_path / f'{name}.jsonl').write_text(rows(texts))
  (tmp_path / 'd.txt').write_text('')
  spec = ','.join(str(tmp_path / name) for name in ('a.jsonl', 'b.jsonl', 'c.jsonl', 'd.txt'))
  cfg = lambda spec, cache, tasks=4: data_config((spec, planted[1]), tmp_path / cache,
                                                 val_fraction=0.1, near_dedup=False, tasks=tasks)
  whole = data.prepare(cfg(spec, 'one'), VOCAB, log=lambda _: None)
  # Tasks 1 and 2 have no validation document, task 3 no document at all.
  directory = cluster_prepare.prepare_on_cluster(cfg(spec, 'four'), VOCAB, log=lambda _: None)
  for split in data.SPLITS:
    np.testing.assert_array_equal(np.asarray(data.Prepared.open(directory).tokens(split)),
                                  np.asarray(whole.tokens(split)))
  assert data.Prepared.open(directory).manifest['splits']['val']['documents'] == 1
  spec = ','.join(str(tmp_path / name) for name in ('b.jsonl', 'c.jsonl'))
  with pytest.raises(UserError, match=r'^the val split is empty: 20 documents with val_fraction'):
    cluster_prepare.prepare_on_cluster(cfg(spec, 'two', tasks=2), VOCAB, log=lambda _: None)


@pytest.mark.parametrize('cluster, message', [
    (dict(executor='spark'), r"^data.cluster.executor='spark': pass one of local, slurm, ray"),
    (dict(tasks=5), r'^data.cluster.tasks=5: the corpus has 4 files; pass 1 to 4 tasks'),
    (dict(local_tasks=2, local_rank_offset=3), r'^data.cluster.local_rank_offset=3 and '
     r'local_tasks=2 go beyond the 4 tasks'),
])
def test_bad_cluster_settings_are_one_line(planted, tmp_path, cluster, message):
  with pytest.raises(UserError, match=message):
    cluster_prepare.prepare_on_cluster(data_config(planted, tmp_path, **cluster), VOCAB)
  cfg = data_config(planted, tmp_path)
  cfg.shard = '0/8'
  with pytest.raises(UserError, match=r'^data.shard=0/8: the corpus has 4 files, fewer than the 8 '
                     'tasks of its machines'):
    cluster_prepare.prepare_on_cluster(cluster_prepare.as_machine_of(cfg), VOCAB)
  cfg = data_config(planted, tmp_path)
  cfg.tokenizer = ''
  with pytest.raises(UserError, match=r'^preparing on several machines needs one tokenizer'):
    cluster_prepare.prepare_on_cluster(cfg, VOCAB)


@pytest.mark.slow
def test_the_ray_executor_on_a_local_ray_cluster_gives_the_same(planted, one_machine, tmp_path):
  pytest.importorskip('ray', reason="needs Ray: pip install 'ray>=2.40'")
  import ray
  port = 26379
  ray_cli = os.path.join(os.path.dirname(sys.executable), 'ray')
  start = subprocess.run([ray_cli, 'start', '--head', '--node-ip-address=127.0.0.1',
                          f'--port={port}', '--num-cpus=2', '--include-dashboard=false',
                          '--disable-usage-stats'], capture_output=True, text=True, timeout=120)
  assert start.returncode == 0, start.stderr
  try:
    ray.init(address=f'127.0.0.1:{port}', log_to_driver=False)
    directory = cluster_prepare.prepare_on_cluster(
        data_config(planted, tmp_path, executor='ray'), VOCAB, log=lambda _: None)
    assert_same_as_one_machine(directory, one_machine)
  finally:
    ray.shutdown()
    subprocess.run([ray_cli, 'stop', '--force'], capture_output=True, timeout=120)
