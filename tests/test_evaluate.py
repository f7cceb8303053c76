"""Evaluation: LM metrics against training and a hand computation, few-shot scoring and prompts,
and the CLI's bad-input errors (the shipped tasks: test_tasks.py)."""

import dataclasses
import gzip
import json
import math
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from conftest import ROOT, read_metrics
from gpt_jax import evaluate, instructions, runs, sample, scoring, sharding
TASK = instructions.parse_task({
    'Definition': ['Say which.'],
    'Positive Examples': [{'input': 'a b', 'output': 'yes', 'explanation': 'why'},
                          {'input': 'c', 'output': 'no'}],
    'Instances': [{'id': 't-1', 'input': 'd e', 'output': ['yes']},
                  {'id': 't-2', 'input': 'f', 'output': ['no', 'maybe']}],
}, 'say_which')
# issue 11's minimal input: the layout of many published NI tasks, "Definition" a string
MINIMAL = {'Definition': 'Add the numbers.', 'Positive Examples': [],
           'Instances': [{'input': '1 2', 'output': ['3']}, {'input': '2 2', 'output': ['4']}]}


@pytest.fixture(scope='module')
def trained(tiny_base):
  """(workdir, last logged metrics) of one tiny run on the small corpus: conftest's tiny_base,
  read only; its last metrics record is what trainer.train returned."""
  return tiny_base, read_metrics(tiny_base, timing=True)[-1]


@pytest.fixture(scope='module')
def loaded(trained):
  """(run, scorer of batch 8 and the run's seq_len 32)."""
  mesh = sharding.data_parallel_mesh()
  run = runs.load(trained[0], mesh=mesh)
  return run, scoring.Scorer(run, mesh, 8, run.config.seq_len)


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
  tokens = scoring.val_tokens(run)
  metrics = scoring.lm_metrics(scorer, tokens, run.tokenizer)
  assert metrics['tokens'] == len(tokens) - 1


def test_text_file_metrics_equal_a_hand_computation(loaded, tmp_path):
  run, scorer = loaded
  texts = ['Now is the winter of our discontent\nMade glorious summer by this sun of York.',
           'To be, or not to be: that is the question. Café ☃']
  path = tmp_path / 'eval.jsonl.gz'
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    f.writelines(json.dumps({'content': text}) + '\n' for text in texts)
  assert scoring.read_texts(str(path), 'content') == texts
  tokens = scoring.file_tokens(texts, run.tokenizer)
  metrics = scoring.lm_metrics(scorer, tokens, run.tokenizer)

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
  scorer = scoring.Scorer(run, sharding.data_parallel_mesh(), 2, 8)
  rows = [([5, 9, 39, 7, 2], 3), ([1, 2, 3], 2), ([0, 38], 1)]
  log_p = scipy.special.log_softmax(logits_VV[:, :num_tokens].astype(np.float64), axis=-1)
  expected = [-sum(log_p[t[i], t[i + 1]] for i in range(len(t) - 1 - n, len(t) - 1))
              for t, n in rows]
  np.testing.assert_allclose(scorer.score_rows(rows), expected, rtol=1e-5)


def test_max_batches_scores_a_prefix(loaded):
  run, scorer = loaded
  tokens = np.arange(3, 3 + 8 * 32 * 3, dtype=np.int32) % 500 + 3
  one = scoring.lm_metrics(scorer, tokens, run.tokenizer, max_batches=1)
  assert one['tokens'] == 8 * 32
  prefix = scoring.lm_metrics(scorer, tokens[:8 * 32 + 1], run.tokenizer)
  np.testing.assert_allclose(one['loss'], prefix['loss'], rtol=1e-6)


# --- prompted tasks --------------------------------------------------------------------------


def test_auto_scoring_tells_a_label_set_from_free_text():
  assert scoring.auto_scoring(evaluate.load_task('shakespeare_play')) == 'choice'  # its Options
  assert scoring.auto_scoring(instructions.parse_task(MINIMAL, 'minimal')) == 'generation'
  assert scoring.auto_scoring(TASK) == 'generation'  # three outputs, each of one instance
  labels = lambda *outputs: instructions.parse_task(
      {'Definition': 'd', 'Instances': [{'input': 'x', 'output': o} for o in outputs]}, 'labels')
  assert scoring.auto_scoring(labels(['yes'], ['no'], ['yes'], ['no', 'yes'], ['no'])) == 'choice'
  assert scoring.auto_scoring(labels(['yes'], ['no'], ['yes'], ['no'], ['yes'])) == 'generation'
  # 14 labels, each of 3 instances, are a label set; 15 are too many
  assert scoring.auto_scoring(labels(*[[str(n % 14)] for n in range(42)])) == 'choice'
  assert scoring.auto_scoring(labels(*[[str(n % 15)] for n in range(45)])) == 'generation'


def test_prompt_format():
  assert instructions.format_prompt(TASK, 0, 'q') == 'Say which.\n\nInput: q\nOutput:'
  assert instructions.format_prompt(TASK, 1, 'q') == (
      'Say which.\n\nInput: a b\nOutput: yes\n\nInput: q\nOutput:')
  assert instructions.format_prompt(TASK, 2, 'q') == (
      'Say which.\n\nInput: a b\nOutput: yes\n\nInput: c\nOutput: no\n\nInput: q\nOutput:')
  assert scoring.task_options(TASK) == ['maybe', 'no', 'yes']
  assert scoring.task_options(dataclasses.replace(TASK, options=('no', 'yes'))) == ['no', 'yes']


def test_option_logliks_equal_log_softmax_over_the_continuation(loaded):
  run, scorer = loaded
  tok = run.tokenizer
  prompts = ['Say which.\n\nInput: the king\nOutput:',
             ' '.join(['My lord, I will speak with you anon.'] * 6)]  # longer than the context
  options = ['Hamlet', 'A Midsummer Night\'s Dream']
  logliks, cut = scoring.option_logliks(scorer, tok, prompts, options)
  lengths = [1 + len(tok.encode(p)) + len(tok.encode(' ' + o)) for p in prompts for o in options]
  assert lengths[1] > 33 and cut == 2  # the long option overflows the first prompt's row, too
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
  one = scoring.Scorer(run, jax.tree.leaves(run.params)[0].sharding.mesh, 1, 32)
  np.testing.assert_allclose(scoring.option_logliks(one, tok, prompts, options)[0], logliks,
                             rtol=1e-5)


def test_accuracy_takes_the_argmax():
  loglik = np.array([[-1.0, -2.0, -3.0],
                     [-9.0, -4.0, -5.0],
                     [-2.0, -2.0, -8.0]])
  correct = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0]], bool)
  # acc picks options 0, 1, 0 (a tie keeps the first); per byte, -3/10 > -1/2 etc. pick 2, 2, 2
  result = scoring.accuracy(loglik, correct, np.array([2, 2, 10]))
  assert result == {'acc': 2 / 3, 'acc_norm': 1 / 3}


def test_choice_metrics_runs_every_shot(loaded):
  run, scorer = loaded
  metrics = scoring.choice_metrics(scorer, run.tokenizer, TASK, [0, 2])
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
  assert results['task']['scoring'] == 'choice'


def test_normalisation_exact_match_and_rouge_l_by_hand():
  assert scoring.normalize_answer('  The Cat,  sat!\n') == 'the cat sat'
  # the longest common subsequence is 'the cat on the mat': 5 of 6 words on each side
  assert scoring.rouge_l('the cat is on the mat', 'the cat sat on the mat') == pytest.approx(5 / 6)
  # stemmed: 'cats' -> 'cat', 'sitting' and 'sits' -> 'sit'; precision 2/2, recall 2/3
  assert scoring.rouge_l('Cats sitting.', 'a cat sits') == pytest.approx(0.8)
  scores = scoring.answer_scores(['The cat sat.', 'a big dog'],
                                 [['a cat', 'the cat sat'], ['the dog', 'big dog']])
  # exact: 1 (normalised), 0; ROUGE-L: the best reference of each, 1 and 2·(2/3·1)/(2/3 + 1) = 0.8
  assert scores == pytest.approx({'exact_match': 0.5, 'rouge_l': 0.9})


def test_generated_answers_are_the_samplers_greedy_continuations(loaded):
  trained_run, _ = loaded
  # the 20-step model answers every prompt with newlines; noise on its weights varies the answers
  rng = np.random.default_rng(1)
  run = dataclasses.replace(trained_run, params=jax.tree.map(
      lambda p: p + rng.normal(0, 0.2, p.shape).astype(p.dtype), trained_run.params))
  tok = run.tokenizer
  task = instructions.parse_task(MINIMAL, 'minimal')
  metrics = scoring.generation_metrics(run, task, [0], seq_len=32, batch_size=2)
  max_new_tokens = max(len(tok.encode(f' {a}')) for a in ('3', '4')) + scoring.GENERATION_MARGIN
  assert metrics['max_new_tokens'] == max_new_tokens and metrics['instances'] == 2

  # the task's two prompts, as generation_metrics batches them, then a short and a long one
  prompts = [instructions.format_prompt(task, 0, i.input) for i in task.instances]
  prompts += ['Q: 1\nA:', 'KING HENRY:\nMy lord, I will speak with you anon.' * 3]
  answers, cut = scoring.generate_answers(run, prompts, max_new_tokens=max_new_tokens,
                                          seq_len=32, batch_size=2)
  keep = 32 - max_new_tokens
  rows = [([tok.eos_id] + tok.encode(p))[-keep:] for p in prompts]
  assert rows[2][0] == tok.eos_id and len(rows[2]) < keep  # a document's start, left-padded
  assert all(len(rows[r]) == keep for r in (0, 1, 3))  # cut on the left
  assert cut == 3
  continuations = [c for chunk in (rows[:2], rows[2:])
                   for c in sample.generate(run.gpt, run.params, chunk,
                                            max_new_tokens=max_new_tokens, eos_id=tok.eos_id)]
  assert answers == [tok.decode(c).split('\n')[0].strip() for c in continuations]
  assert all(answers)
  assert metrics['shots'] == {'0': {**scoring.answer_scores(answers[:2], [['3'], ['4']]),
                                    'cut_prompts': 2}}


def test_a_free_text_task_is_scored_by_generation(trained, tmp_path, capsys):
  (tmp_path / 'minimal.json').write_text(json.dumps(MINIMAL))
  # no --shots: those of 0, 1, 5 it has positive examples for, so 0 only
  evaluate.main([f'--workdir={trained[0]}', f'--task={tmp_path}/minimal.json',
                 f'--json={tmp_path}/results.json'])
  task = json.loads((tmp_path / 'results.json').read_text())['task']
  assert task['scoring'] == 'generation' and task['instances'] == 2
  assert set(task['shots']) == {'0'}
  assert set(task['shots']['0']) == {'exact_match', 'rouge_l', 'cut_prompts'}
  printed = capsys.readouterr().out
  assert 'task minimal: 2 instances, greedy answers of up to' in printed
  assert '| shots | exact_match | rouge_l |\n|---:|---:|---:|\n| 0 | 0.0% | 0.0% |' in printed

  evaluate.main([f'--workdir={trained[0]}', f'--task={tmp_path}/minimal.json',
                 '--scoring=choice', f'--json={tmp_path}/results.json'])
  task = json.loads((tmp_path / 'results.json').read_text())['task']
  assert task['scoring'] == 'choice' and task['options'] == ['3', '4']
  assert '| shots | acc | acc_norm |' in capsys.readouterr().out


# --- bad inputs ------------------------------------------------------------------------------


def test_bad_inputs_give_one_error_line(trained, tmp_path, capsys):
  workdir = trained[0]
  (tmp_path / 'empty.txt').write_text('  \n')
  (tmp_path / 'broken.json').write_text('{"Definition": [')
  (tmp_path / 'no_instances.json').write_text(json.dumps({'Definition': ['d']}))
  (tmp_path / 'no_definition.json').write_text(json.dumps({'Instances': MINIMAL['Instances']}))
  (tmp_path / 'no_answers.json').write_text(json.dumps(
      {**MINIMAL, 'Instances': [{'input': '1 2', 'output': []}]}))
  (tmp_path / 'one_answer.json').write_text(json.dumps(
      {**MINIMAL, 'Instances': [{'input': '1 2', 'output': ['3']}]}))
  cases = {
      'no such file': [f'--workdir={workdir}', f'--data={tmp_path}/missing.txt'],
      'is empty': [f'--workdir={workdir}', f'--data={tmp_path}/empty.txt'],
      'is not a JSON task file': [f'--workdir={workdir}', f'--task={tmp_path}/broken.json'],
      'has no instances': [f'--workdir={workdir}', f'--task={tmp_path}/no_instances.json'],
      'no "Definition"': [f'--workdir={workdir}', f'--task={tmp_path}/no_definition.json'],
      'instance 1 needs an "input" string and an "output" list': [
          f'--workdir={workdir}', f'--task={tmp_path}/no_answers.json'],
      'fewer than two answer options': [f'--workdir={workdir}', '--scoring=choice',
                                        f'--task={tmp_path}/one_answer.json'],
      "argument --scoring: invalid choice: 'best'": [f'--workdir={workdir}', '--scoring=best'],
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
