"""Evaluation: LM metrics against training and a hand computation, few-shot scoring and prompts,
the shipped task (reproducible, held out, balanced), and the CLI's bad-input errors."""

import gzip
import json
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from gpt_jax import cli, config as config_lib, corpus, data, evaluate, runs, sharding, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'experiments', 'tiny.py')
TASK = {
    'Definition': ['Say which.'],
    'Positive Examples': [{'input': 'a b', 'output': 'yes', 'explanation': 'why'},
                          {'input': 'c', 'output': 'no'}],
    'Instances': [{'id': 't-1', 'input': 'd e', 'output': ['yes']},
                  {'id': 't-2', 'input': 'f', 'output': ['no', 'maybe']}],
}


@pytest.fixture(scope='module')
def trained(small_corpus, tmp_path_factory):
  """(workdir, last logged metrics) of one tiny run on the small corpus."""
  config = cli.load_experiment(TINY)
  config.data.corpus = small_corpus
  config.sample.num = 0
  workdir = str(tmp_path_factory.mktemp('run'))
  return workdir, train.train(config, workdir, log=lambda *_: None)


@pytest.fixture(scope='module')
def loaded(trained):
  """(run, scorer of batch 8 and the run's seq_len 32)."""
  mesh = sharding.data_parallel_mesh()
  run = runs.load(trained[0], mesh=mesh)
  return run, evaluate.Scorer(run, mesh, 8, run.config.seq_len)


def log_probs(run, tokens):
  """log-softmax of the model's logits at each position of one unpadded sequence, float64."""
  logits = jax.jit(run.gpt.apply)({'params': run.params}, jnp.asarray([tokens[:-1]], jnp.int32))[0]
  logits = np.asarray(logits, np.float64)
  return logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)


# --- language-model metrics ------------------------------------------------------------------


def test_val_loss_equals_the_training_runs_last_val_loss(trained):
  workdir, record = trained
  results = evaluate.run(evaluate.parse_args([f'--workdir={workdir}', '--max_batches=2']),
                         log=lambda *_: None)  # tiny.py: eval_batches = 2 of batch_size 8
  assert results['lm']['tokens'] == 2 * 8 * 32
  np.testing.assert_allclose(results['lm']['loss'], record['val_loss'], rtol=1e-5)
  np.testing.assert_allclose(results['lm']['ppl'], record['val_ppl'], rtol=1e-4)


def test_the_whole_val_split_scores_every_token_after_the_first_once(loaded, trained):
  run, scorer = loaded
  tokens = evaluate.val_tokens(run)
  metrics = evaluate.lm_metrics(scorer, tokens, run.tokenizer)
  assert metrics['tokens'] == len(tokens) - 1


def test_text_file_metrics_equal_a_hand_computation(loaded, tmp_path):
  run, scorer = loaded
  texts = ['Now is the winter of our discontent\nMade glorious summer by this sun of York.',
           'To be, or not to be: that is the question. Café ☃']
  path = tmp_path / 'eval.jsonl.gz'
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    f.writelines(json.dumps({'content': text}) + '\n' for text in texts)
  assert evaluate.read_texts(str(path), 'content') == texts
  tokens = evaluate.file_tokens(texts, run.tokenizer)
  metrics = evaluate.lm_metrics(scorer, tokens, run.tokenizer)

  eos = run.tokenizer.eos_id
  expected = [eos] + run.tokenizer.encode(texts[0]) + [eos] + run.tokenizer.encode(texts[1]) + [eos]
  assert tokens.tolist() == expected and len(expected) > 2 * 32 + 1  # three windows, one short
  nll, targets = 0.0, 0
  for start in range(0, len(expected) - 1, 32):
    window = expected[start:start + 33]
    logp = log_probs(run, window)
    nll -= sum(logp[t, window[t + 1]] for t in range(len(window) - 1))
    targets += len(window) - 1
  assert metrics['tokens'] == targets == len(expected) - 1
  np.testing.assert_allclose(metrics['loss'], nll / targets, rtol=1e-5)
  # bits per byte: all the text's nats over all its UTF-8 bytes (the EOS tokens have none)
  assert metrics['bytes'] == sum(len(text.encode()) for text in texts)
  np.testing.assert_allclose(metrics['bpb'], nll / math.log(2) / metrics['bytes'], rtol=1e-5)
  np.testing.assert_allclose(metrics['ppl'], math.exp(nll / targets), rtol=1e-5)


class BigramLogits:
  """A stand-in model: the logits after token t are row t of its parameter logits_VV."""

  def apply(self, variables, tokens_BL):
    return variables['params']['logits_VV'][tokens_BL]


def test_ids_beyond_the_tokenizers_vocabulary_are_not_scored():
  num_tokens, V = 40, 64  # a model vocabulary padded to a multiple of 64
  logits_VV = np.random.default_rng(0).normal(size=(V, V)).astype(np.float32)
  logits_VV[:, num_tokens:] = 30.0  # unmasked, the padded ids would take nearly all the mass
  run = runs.Run(BigramLogits(), {'logits_VV': jnp.asarray(logits_VV)}, config=None,
                 tokenizer=types.SimpleNamespace(vocab_size=num_tokens), step=0)
  scorer = evaluate.Scorer(run, sharding.data_parallel_mesh(), 2, 8)
  rows = [([5, 9, 39, 7, 2], 3), ([1, 2, 3], 2), ([0, 38], 1)]
  log_p = scipy.special.log_softmax(logits_VV[:, :num_tokens].astype(np.float64), axis=-1)
  expected = [-sum(log_p[t[i], t[i + 1]] for i in range(len(t) - 1 - n, len(t) - 1))
              for t, n in rows]
  np.testing.assert_allclose(scorer.score_rows(rows), expected, rtol=1e-5)


def test_max_batches_scores_a_prefix(loaded):
  run, scorer = loaded
  tokens = np.arange(3, 3 + 8 * 32 * 3, dtype=np.int32) % 500 + 3
  one = evaluate.lm_metrics(scorer, tokens, run.tokenizer, max_batches=1)
  assert one['tokens'] == 8 * 32
  prefix = evaluate.lm_metrics(scorer, tokens[:8 * 32 + 1], run.tokenizer)
  np.testing.assert_allclose(one['loss'], prefix['loss'], rtol=1e-6)


# --- prompted tasks --------------------------------------------------------------------------


def test_prompt_format():
  assert evaluate.format_prompt(TASK, 0, 'q') == 'Say which.\n\nInput: q\nOutput:'
  assert evaluate.format_prompt(TASK, 1, 'q') == (
      'Say which.\n\nInput: a b\nOutput: yes\n\nInput: q\nOutput:')
  assert evaluate.format_prompt(TASK, 2, 'q') == (
      'Say which.\n\nInput: a b\nOutput: yes\n\nInput: c\nOutput: no\n\nInput: q\nOutput:')
  assert evaluate.task_options(TASK) == ['maybe', 'no', 'yes']
  assert evaluate.task_options({**TASK, 'Options': ['no', 'yes']}) == ['no', 'yes']


def test_option_logliks_equal_log_softmax_over_the_continuation(loaded):
  run, scorer = loaded
  tok = run.tokenizer
  prompts = ['Say which.\n\nInput: the king\nOutput:',
             ' '.join(['My lord, I will speak with you anon.'] * 6)]  # longer than the context
  options = ['Hamlet', 'A Midsummer Night\'s Dream']
  logliks = evaluate.option_logliks(scorer, tok, prompts, options)
  for p, prompt in enumerate(prompts):
    for o, option in enumerate(options):
      continuation = tok.encode(' ' + option)
      context = [tok.eos_id] + tok.encode(prompt)
      row = context[-(33 - len(continuation)):] + continuation
      logp = log_probs(run, row)
      n = len(row) - 1
      expected = sum(logp[t, row[t + 1]] for t in range(n - len(continuation), n))
      np.testing.assert_allclose(logliks[p, o], expected, rtol=1e-5)
  # one row per call, in a batch of one, gives the same scores as eight rows padded together
  one = evaluate.Scorer(run, jax.tree.leaves(run.params)[0].sharding.mesh, 1, 32)
  np.testing.assert_allclose(evaluate.option_logliks(one, tok, prompts, options), logliks,
                             rtol=1e-5)


def test_accuracy_takes_the_argmax():
  loglik = np.array([[-1.0, -2.0, -3.0],
                     [-9.0, -4.0, -5.0],
                     [-2.0, -2.0, -8.0]])
  correct = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0]], bool)
  # acc picks options 0, 1, 0 (a tie keeps the first); per byte, -3/10 > -1/2 etc. pick 2, 2, 2
  result = evaluate.accuracy(loglik, correct, np.array([2, 2, 10]))
  assert result == {'acc': 2 / 3, 'acc_norm': 1 / 3}


def test_task_metrics_runs_every_shot(loaded):
  run, scorer = loaded
  metrics = evaluate.task_metrics(scorer, run.tokenizer, TASK, [0, 2])
  assert metrics['instances'] == 2 and metrics['chance'] == 1 / 3
  assert set(metrics['shots']) == {'0', '2'}
  assert all(0 <= m['acc'] <= 1 and 0 <= m['acc_norm'] <= 1 for m in metrics['shots'].values())


def test_cli_task_table_and_json(trained, tmp_path, capsys):
  out = tmp_path / 'results.json'
  evaluate.main([f'--workdir={trained[0]}', '--task=shakespeare_play', '--shots=0,1',
                 '--max_instances=8', '--seq_len=1000', f'--json={out}'])
  printed = capsys.readouterr().out
  assert 'task shakespeare_play: 8 instances, 4 options (chance 25.0%)' in printed
  assert '| 1 |' in printed and 'using 64' in printed  # capped by the position table
  results = json.loads(out.read_text())
  assert results['seq_len'] == 64 and set(results['task']['shots']) == {'0', '1'}


# --- the shipped task ------------------------------------------------------------------------


def test_the_shipped_task_is_what_the_generator_builds():
  with open(evaluate.PLAY_TASK, encoding='utf-8') as f:
    shipped = f.read()
  assert json.dumps(evaluate.build_play_task(), indent=2, sort_keys=True) + '\n' == shipped


def test_the_shipped_task_is_valid_balanced_and_held_out(shakespeare):
  name, task = evaluate.load_task('shakespeare_play')
  assert name == 'shakespeare_play'
  options = evaluate.task_options(task)
  assert len(options) == 4 and len(task['Positive Examples']) >= 5
  outputs = [i['output'] for i in task['Instances']]
  assert all(len(o) == 1 and o[0] in options for o in outputs)
  assert all(sum(o == [title] for o in outputs) == 50 for title in options)
  inputs = [i['input'] for i in task['Instances']]
  assert len(set(inputs)) == len(inputs)
  assert not {e['input'] for e in task['Positive Examples']} & set(inputs)
  d = config_lib.base_config().data
  docs = {doc.source: doc.text for doc in corpus.clean(shakespeare, d.min_chars,
                                                       d.min_letter_fraction)[0]}
  training = [text for text in docs.values() if not data.is_validation(text, d.val_fraction)]
  for instance in task['Instances']:
    source, line = instance['id'].removeprefix('shakespeare_play-').rsplit(':', 1)
    assert data.is_validation(docs[source], d.val_fraction)
    assert docs[source].split('\n')[int(line) - 1] == instance['input']
    assert 25 <= len(instance['input']) <= 120
    assert not any(instance['input'] in text for text in training)


# --- bad inputs ------------------------------------------------------------------------------


def test_bad_inputs_give_one_error_line(trained, tmp_path, capsys):
  workdir = trained[0]
  (tmp_path / 'empty.txt').write_text('  \n')
  (tmp_path / 'broken.json').write_text('{"Definition": [')
  (tmp_path / 'no_instances.json').write_text(json.dumps({'Definition': ['d']}))
  (tmp_path / 'no_definition.json').write_text(json.dumps({'Instances': TASK['Instances']}))
  cases = {
      'no such file': [f'--workdir={workdir}', f'--data={tmp_path}/missing.txt'],
      'is empty': [f'--workdir={workdir}', f'--data={tmp_path}/empty.txt'],
      'is not a JSON task file': [f'--workdir={workdir}', f'--task={tmp_path}/broken.json'],
      'no "Instances"': [f'--workdir={workdir}', f'--task={tmp_path}/no_instances.json'],
      'no "Definition"': [f'--workdir={workdir}', f'--task={tmp_path}/no_definition.json'],
      'task shakespeare_play has 5': [f'--workdir={workdir}', '--task=shakespeare_play',
                                      '--shots=0,9'],
      '--batch_size=-8 is negative': [f'--workdir={workdir}', '--batch_size=-8'],
      'negative number of shots': [f'--workdir={workdir}', '--shots=0,-1'],
      'not a comma-separated list': [f'--workdir={workdir}', '--shots=one'],
  }
  for expected, argv in cases.items():
    with pytest.raises(SystemExit) as exit_info:
      evaluate.main(argv)  # the CLI's own entry point, in this process: no import per case
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, (expected, stderr)
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith('error: '), stderr
    assert expected in stderr, stderr


def test_bad_inputs_through_python_m(tmp_path):
  cases = {'not a run of this project': [f'--workdir={tmp_path}'],
           '--max_batches=-1 is negative': [f'--workdir={tmp_path}', '--max_batches=-1']}
  procs = {expected: subprocess.Popen([sys.executable, '-m', 'gpt_jax.evaluate', *args],
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
           for expected, args in cases.items()}
  for expected, proc in procs.items():
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, (expected, stderr)
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith('error: '), stderr
    assert expected in stderr, stderr
