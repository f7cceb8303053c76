"""The lm-evaluation-harness model: its numbers equal gpt_jax.evaluate's on the same data, offline
(task YAML files of the harness's own format over local JSON files)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from gpt_jax import instructions, sample, scoring
from gpt_jax.errors import UserError

lm_eval = pytest.importorskip('lm_eval', reason='the eval extra: pip install -e .[eval]')
from lm_eval.tasks import TaskManager  # noqa: E402

from gpt_jax import harness  # noqa: E402

TASK = instructions.parse_task({
    'Definition': ['Is the line spoken by a king?'],
    'Positive Examples': [{'input': 'My lord, the queen is dead.', 'output': 'no'}],
    'Instances': [{'id': f'k-{i}', 'input': text, 'output': [answer]} for i, (text, answer) in
                  enumerate([('Now is the winter of our discontent', 'yes'),
                             ('Good morrow, cousin.', 'no'), ('Uneasy lies the head', 'yes'),
                             ('What light through yonder window breaks?', 'no'),
                             ('A horse! a horse!', 'yes')])],
}, 'king')
OPTIONS = ['yes', 'no', 'perhaps']


def write_task(directory, name: str, rows: list[dict], **settings) -> None:
  """A harness task NAME over a JSON-lines file of `rows`: the YAML layout of the harness's own
  tasks, its dataset a local file (and its cache beside it, so nothing reaches the Hub)."""
  data = os.path.join(directory, f'{name}.jsonl')
  with open(data, 'w') as f:
    f.writelines(json.dumps(row) + '\n' for row in rows)
  config = {'task': name, 'dataset_path': 'json',
            'dataset_kwargs': {'data_files': {'test': data},
                               'cache_dir': os.path.join(directory, 'hf_cache')},
            'test_split': 'test', **settings}
  with open(os.path.join(directory, f'{name}.yaml'), 'w') as f:
    json.dump(config, f)  # JSON is YAML


@pytest.fixture(scope='module')
def tasks(tmp_path_factory, small_corpus):
  directory = str(tmp_path_factory.mktemp('harness_tasks'))
  prompts = [instructions.format_prompt(TASK, 1, i.input) for i in TASK.instances]
  write_task(directory, 'king_choice', [
      {'prompt': p, 'choices': OPTIONS, 'label': OPTIONS.index(i.outputs[0])}
      for p, i in zip(prompts, TASK.instances)],
      output_type='multiple_choice', doc_to_text='{{prompt}}', doc_to_choice='{{choices}}',
      doc_to_target='label', metric_list=[{'metric': 'acc'}, {'metric': 'acc_norm'}])
  write_task(directory, 'king_generate', [
      {'prompt': p, 'answer': i.outputs[0]} for p, i in zip(prompts, TASK.instances)],
      output_type='generate_until', doc_to_text='{{prompt}}', doc_to_target='{{answer}}',
      generation_kwargs={'until': ['\n'], 'max_gen_toks': 12, 'do_sample': False},
      metric_list=[{'metric': 'exact_match'}])
  scenes = [open(os.path.join(small_corpus, play, scene), encoding='utf-8').read()[:700]
            for play in sorted(os.listdir(small_corpus))[:2]
            for scene in sorted(os.listdir(os.path.join(small_corpus, play)))[:2]]
  write_task(directory, 'scenes_rolling', [{'text': s} for s in scenes],
             output_type='loglikelihood_rolling', doc_to_text='', doc_to_target='{{text}}',
             metric_list=[{'metric': m} for m in ('word_perplexity', 'byte_perplexity',
                                                  'bits_per_byte')])
  return directory, prompts, scenes


@pytest.fixture(scope='module')
def model(tiny_base):
  return harness.GptJaxLM(workdir=tiny_base, batch_size=4)


def evaluate(model, tasks, name):
  results = lm_eval.simple_evaluate(model=model, tasks=[name], log_samples=True,
                                    task_manager=TaskManager(include_path=tasks[0]))
  return results['results'][name], results['samples'][name]


def test_multiple_choice_equals_gpt_jax_evaluate(model, tasks):
  metrics, samples = evaluate(model, tasks, 'king_choice')
  run, scorer = model.run, scoring.Scorer(model.run, model.mesh, 4, model.seq_len)
  loglik_NO, _ = scoring.option_logliks(scorer, run.tokenizer, tasks[1], OPTIONS)
  correct_NO = np.array([[o in i.outputs for o in OPTIONS] for i in TASK.instances])
  ours = scoring.accuracy(loglik_NO, correct_NO, np.ones(len(OPTIONS)))
  assert metrics['acc,none'] == ours['acc']
  by_doc = sorted(samples, key=lambda s: s['doc_id'])
  harness_NO = np.array([[r[0][0] for r in s['resps']] for s in by_doc])
  np.testing.assert_allclose(harness_NO, loglik_NO, rtol=1e-5)
  # lm-eval's acc_norm divides by the option's characters (without the space before it)
  lengths = np.array([len(o) for o in OPTIONS], float)
  assert metrics['acc_norm,none'] == scoring.accuracy(loglik_NO / lengths, correct_NO,
                                                      np.ones(len(OPTIONS)))['acc']


def test_is_greedy_says_whether_every_token_is_the_argmax(model):
  run = model.run
  prompt = [run.tokenizer.eos_id, *run.tokenizer.encode('To be, or not')]
  greedy = sample.generate(run.gpt, run.params, [prompt], max_new_tokens=3,
                           num_tokens=run.tokenizer.vocab_size)[0]
  other = [greedy[0], (greedy[1] + 1) % run.tokenizer.vocab_size, greedy[2]]
  results = model._loglikelihood_tokens([(('', ''), prompt, greedy), (('', ''), prompt, other),
                                         (('', ''), prompt, greedy[:1])])
  assert [g for _, g in results] == [True, False, True]
  assert results[1][0] < results[0][0] < results[2][0] < 0


def test_rolling_perplexity_equals_gpt_jax_evaluate(model, tasks):
  metrics, _ = evaluate(model, tasks, 'scenes_rolling')
  run = model.run
  scorer = scoring.Scorer(run, model.mesh, 4, model.seq_len)
  nll = num_bytes = 0
  for text in tasks[2]:
    m = scoring.lm_metrics(scorer, np.array([run.tokenizer.eos_id, *run.tokenizer.encode(text)]),
                           run.tokenizer)
    nll, num_bytes = nll + m['loss'] * m['tokens'], num_bytes + m['bytes']
  assert num_bytes == sum(len(t.encode()) for t in tasks[2])  # the tokenizer round-trips
  assert metrics['bits_per_byte,none'] == pytest.approx(nll / math.log(2) / num_bytes, rel=1e-5)
  assert metrics['byte_perplexity,none'] == pytest.approx(math.exp(nll / num_bytes), rel=1e-5)


def test_generation_equals_gpt_jax_evaluates_greedy_answers(model, tasks):
  metrics, samples = evaluate(model, tasks, 'king_generate')
  answers, _ = scoring.generate_answers(model.run, tasks[1], max_new_tokens=12,
                                        seq_len=model.seq_len, batch_size=4)
  responses = [s['resps'][0][0] for s in sorted(samples, key=lambda s: s['doc_id'])]
  assert [r.strip() for r in responses] == answers
  assert all('\n' not in r for r in responses)
  exact = np.mean([a == i.outputs[0] for a, i in zip(answers, TASK.instances)])
  assert metrics['exact_match,none'] == pytest.approx(exact)


def test_rows_of_many_lengths_compile_one_scorer_per_bucket(model):
  assert [harness.bucket(n, 64) for n in (1, 16, 17, 32, 33, 63, 64, 200)] == [
      16, 16, 32, 32, 64, 64, 64, 64]
  model._scorers.clear()
  rows = [([model.eot_token_id, *range(5, 5 + n)], 2) for n in (3, 9, 20, 30, 40, 50)]
  nll, _ = model._score(rows)
  assert sorted(model._scorers) == [16, 32, 64]
  one = scoring.Scorer(model.run, model.mesh, 4, 64)
  np.testing.assert_allclose(nll, one.score_rows(rows), rtol=1e-5)


def test_cut_at_stop():
  assert harness.cut_at_stop('yes\nno', ['\n']) == 'yes'
  assert harness.cut_at_stop('a. b.', ['.', 'b']) == 'a'
  assert harness.cut_at_stop('abc', ['', 'x']) == 'abc'


def test_bad_model_arguments_and_generation_settings(tiny_base, model):
  with pytest.raises(UserError, match=r"^batch_size='many' is not a whole number"):
    harness.GptJaxLM(workdir=tiny_base, batch_size='many')
  with pytest.raises(UserError, match='^generate_until got num_beams, which'):
    model._settings({'until': ['\n'], 'num_beams': 4})
  with pytest.raises(UserError, match='^max_gen_toks=64 leaves no room for a prompt'):
    model._settings({'max_gen_toks': 64})
  with pytest.raises(UserError, match='is not a run of this project'):
    harness.GptJaxLM(workdir=os.path.dirname(tiny_base))


@pytest.mark.slow
def test_command_runs_the_harness_and_names_missing_task_data(tiny_base, tasks, tmp_path):
  env = {**os.environ, 'HF_DATASETS_OFFLINE': '1', 'HF_HUB_OFFLINE': '1'}
  command = [sys.executable, '-m', 'gpt_jax.harness', '--model_args',
             f'workdir={tiny_base},batch_size=4', '--include_path', tasks[0]]
  ok = subprocess.run([*command, '--tasks', 'king_choice', '--output_path', str(tmp_path)],
                      capture_output=True, text=True, cwd=ROOT, env=env)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert 'king_choice' in ok.stdout and '|acc' in ok.stdout
  gone = str(tmp_path / 'gone')
  os.makedirs(gone)
  write_task(gone, 'gone', [{'text': 'a'}], output_type='loglikelihood_rolling', doc_to_text='',
             doc_to_target='{{text}}', metric_list=[{'metric': 'bits_per_byte'}])
  os.remove(os.path.join(gone, 'gone.jsonl'))
  missing = subprocess.run([*command[:-1], gone, '--tasks', 'gone'], capture_output=True,
                           text=True, cwd=ROOT, env=env)
  assert missing.returncode == 2 and 'Traceback' not in missing.stderr
  assert missing.stderr.strip().splitlines()[-1].startswith('error: the data of task ')


TWO_PROCESSES = '''
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
from gpt_jax import harness
rank, port, workdir, tasks, out = sys.argv[1:]
lm = harness.GptJaxLM(workdir=workdir, batch_size=4, coordinator_address=f'localhost:{port}',
                      num_processes=2, process_id=rank)
assert (lm.rank, lm.world_size) == (int(rank), 2)
results = lm_eval.simple_evaluate(model=lm, tasks=json.loads(out)['tasks'],
                                  task_manager=TaskManager(include_path=tasks))
if lm.rank == 0:
  json.dump(results['results'], open(json.loads(out)['path'], 'w'))
'''


@pytest.mark.slow
def test_two_processes_split_the_requests_and_give_one_process_numbers(model, tasks, tiny_base,
                                                                       tmp_path):
  """lm-eval gives each rank its share of the documents; every process runs all rows over the
  mesh of both (SPMD), and rank 0 reports what one process does."""
  from test_sharding import free_port
  names = ['king_choice', 'scenes_rolling', 'king_generate']
  one = lm_eval.simple_evaluate(model=model, tasks=names,
                                task_manager=TaskManager(include_path=tasks[0]))['results']
  out = json.dumps({'tasks': names, 'path': str(tmp_path / 'two.json')})
  port = free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  procs = [subprocess.Popen([sys.executable, '-c', TWO_PROCESSES, str(i), str(port), tiny_base,
                             tasks[0], out], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  two = json.load(open(tmp_path / 'two.json'))
  for name in names:
    for key, value in one[name].items():
      if isinstance(value, float):
        assert two[name][key] == pytest.approx(value, rel=1e-5), (name, key)
