"""GPT-1 task fine-tuning (objectives/classify): each kind's loss against a numpy reference, the
invariances of its inputs, L2 + λ·L1, the prompted baseline's task, a run through the command
line scored again by gpt_jax.evaluate, and the bad inputs."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from conftest import ROOT, TINY, run_cli
from gpt_jax import cli, network, runs, scoring, sharding, task_inputs, trainer
from gpt_jax.errors import UserError
from gpt_jax.objectives import classify

CLASSIFY = os.path.join(ROOT, 'experiments', 'classify.py')
LETTERS = ' abcdefghijklmnopqrstuvwxyz'
VOCAB = 32  # the model's; the tokenizer has 27 ids, so 27..31 are padding, 32..34 special

EXAMPLES = {
    'classification': [{'text': 'ab c', 'label': 'x'}, {'text': 'd', 'label': 'y'},
                       {'text': 'efg hi', 'label': 'z'}],
    'entailment': [{'premise': 'ab', 'hypothesis': 'c d', 'label': 'no'},
                   {'premise': 'efg', 'hypothesis': 'h', 'label': 'yes'}],
    'similarity': [{'text_a': 'ab', 'text_b': 'cde', 'label': 'same'},
                   {'text_a': 'f', 'text_b': 'gh', 'label': 'other'}],
    'multiple_choice': [{'context': 'ab', 'choices': ['c', 'de', 'f'], 'label': 1},
                        {'context': 'gh i', 'choices': ['jk', 'l'], 'label': 0}],
}


class CharTokenizer:
  """One token per character: ' ' is 0, 'a' 1, ..., 'z' 26."""
  vocab_size = len(LETTERS)
  eos_id = 0

  def encode_batch(self, texts):
    return [[LETTERS.index(ch) for ch in text] for text in texts]


def write_jsonl(path, examples) -> str:
  path.write_text(''.join(json.dumps(e) + '\n' for e in examples), encoding='utf-8')
  return str(path)


def objective_for(tmp_path, examples, lm_weight=0.5):
  """(objective, params, batch) of a one-layer model with random parameters on `examples`."""
  config = cli.load_experiment(TINY)
  config.objective, config.seq_len, config.finetune.lm_weight = 'classify', 12, lm_weight
  config.model.update(vocab_size=VOCAB, n_layer=1, n_head=2, n_kv_head=2, n_embd=16,
                      block_size=16)
  task = task_inputs.read_task_file(write_jsonl(tmp_path / 'task.jsonl', examples))
  config.task.kind, config.task.labels = task.kind, task.labels
  objective = classify.TaskFineTuning(config, CharTokenizer(), network.build(config.model),
                                      mesh=sharding.data_parallel_mesh())
  arrays = objective.encode(task)
  objective.num_sequences = arrays['tokens'].shape[1]
  params = objective.init_params(jax.random.PRNGKey(0))
  params['head']['bias'] = jnp.arange(objective.num_outputs, dtype=jnp.float32) / 10  # not 0
  return objective, params, {k: jnp.asarray(arrays[k]) for k in classify.BATCH_KEYS}


def loss_terms(objective, params, batch):
  weights = objective.weights(batch)
  return objective.loss(params, batch, rng=jax.random.PRNGKey(1), step=0, weights=weights,
                        frozen=None)


def reference_loss(objective, params, batch) -> tuple[float, float]:
  """(task CE, LM CE) in numpy from the model's hidden states and logits, with loops."""
  kind = objective.config.task.kind
  tokens = np.asarray(batch['tokens'])
  R, C, L = tokens.shape
  apply = lambda **kw: np.asarray(objective.gpt.apply(
      {'params': params['gpt']}, tokens.reshape(R * C, L),
      special_embeddings_SD=params['special'], **kw), np.float64)
  hidden = apply(hidden=True).reshape(R, C, L, -1)
  logits = apply().reshape(R, C, L, -1)
  W, b = (np.asarray(params['head'][k], np.float64) for k in ('kernel', 'bias'))
  task_nll, lm_nll, lm_count = [], 0.0, 0
  for r in range(R):
    real = [c for c in range(C) if batch['choice_mask'][r, c]]
    h = [hidden[r, c, batch['extract'][r, c]] for c in real]
    if kind == 'multiple_choice':
      scores = np.array([h_c @ W[:, 0] + b[0] for h_c in h])
    elif kind == 'similarity':
      scores = (h[0] + h[1]) @ W + b
    else:
      scores = h[0] @ W + b
    task_nll.append(scipy.special.logsumexp(scores) - scores[int(batch['label'][r])])
    for c in real:
      log_p = logits[r, c, :, :CharTokenizer.vocab_size]  # the tokenizer's ids only
      log_p = log_p - scipy.special.logsumexp(log_p, axis=-1, keepdims=True)
      for t in range(int(batch['extract'][r, c]) - 1):  # targets 1 .. extract - 1 are text
        if tokens[r, c, t + 1] < CharTokenizer.vocab_size:
          lm_nll -= log_p[t, tokens[r, c, t + 1]]
          lm_count += 1
  return float(np.mean(task_nll)), lm_nll / lm_count


# --- the loss --------------------------------------------------------------------------------


@pytest.mark.parametrize('kind', list(EXAMPLES))
def test_loss_of_each_kind_equals_a_numpy_reference(kind, tmp_path):
  objective, params, batch = objective_for(tmp_path, EXAMPLES[kind])
  loss, terms = loss_terms(objective, params, batch)
  task_loss, lm_loss = reference_loss(objective, params, batch)
  np.testing.assert_allclose(float(terms['train_loss']), task_loss, rtol=1e-5)
  np.testing.assert_allclose(float(terms['lm_loss']), lm_loss, rtol=1e-5)
  np.testing.assert_allclose(float(loss), task_loss + 0.5 * lm_loss, rtol=1e-5)
  sums = objective.eval_sums(params, batch, None)
  metrics = objective.eval_metrics(jax.device_get(sums))
  np.testing.assert_allclose(metrics['val_loss'], task_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['val_lm_loss'], lm_loss, rtol=1e-5)


def test_lm_weight_enters_as_task_plus_lambda_times_lm(tmp_path):
  losses = {}
  for lm_weight in (0.0, 0.7):
    objective, params, batch = objective_for(tmp_path, EXAMPLES['entailment'], lm_weight)
    losses[lm_weight] = loss_terms(objective, params, batch)
  (loss0, terms), (loss7, _) = losses[0.0], losses[0.7]
  assert float(loss0) == float(terms['train_loss'])
  np.testing.assert_allclose(float(loss7), float(terms['train_loss'] + 0.7 * terms['lm_loss']),
                             rtol=1e-6)
  assert float(terms['lm_loss']) > 1  # about log(27) for random parameters: a real term


def test_padding_rows_and_padding_after_the_extract_token_change_nothing(tmp_path):
  objective, params, batch = objective_for(tmp_path, EXAMPLES['multiple_choice'])
  loss, terms = loss_terms(objective, params, batch)
  logits, _ = objective.forward(params, batch)
  tokens = np.array(batch['tokens'])
  after = np.arange(tokens.shape[-1]) > np.asarray(batch['extract'])[..., None]
  tokens[after] = np.random.default_rng(0).integers(1, 27, after.sum())
  changed = {**batch, 'tokens': jnp.asarray(tokens)}
  np.testing.assert_array_equal(objective.forward(params, changed)[0], logits)
  np.testing.assert_allclose(loss_terms(objective, params, changed)[0], loss, rtol=1e-6)
  # split_batches(pad=True)'s rows of zeros: counted nowhere
  padded = {k: jnp.concatenate([v, jnp.zeros_like(v[:1])]) for k, v in batch.items()}
  padded_loss, padded_terms = loss_terms(objective, params, padded)
  np.testing.assert_allclose(padded_loss, loss, rtol=1e-6)
  np.testing.assert_allclose(padded_terms['train_acc'], terms['train_acc'])


def test_similarity_is_symmetric_in_its_two_texts(tmp_path):
  swapped = [{**e, 'text_a': e['text_b'], 'text_b': e['text_a']}
             for e in EXAMPLES['similarity']]
  objective, params, batch = objective_for(tmp_path, EXAMPLES['similarity'])
  _, _, swapped_batch = objective_for(tmp_path, swapped)
  assert not np.array_equal(batch['tokens'], swapped_batch['tokens'])
  np.testing.assert_allclose(objective.forward(params, swapped_batch)[0],
                             objective.forward(params, batch)[0], rtol=1e-6)


def test_permuting_the_choices_permutes_their_scores(tmp_path):
  order = [2, 0, 1]
  example = EXAMPLES['multiple_choice'][0]
  permuted = {**example, 'choices': [example['choices'][i] for i in order],
              'label': order.index(example['label'])}
  objective, params, batch = objective_for(tmp_path, [example])
  _, _, permuted_batch = objective_for(tmp_path, [permuted])
  scores = np.asarray(objective.forward(params, batch)[0][0])
  np.testing.assert_allclose(objective.forward(params, permuted_batch)[0][0], scores[order],
                             rtol=1e-6)
  assert len(set(scores.tolist())) == 3  # distinct, so the order is tested


def test_a_missing_choice_gets_no_probability(tmp_path):
  objective, params, batch = objective_for(tmp_path, EXAMPLES['multiple_choice'])
  logits = objective.forward(params, batch)[0]
  assert np.asarray(batch['choice_mask'][1]).tolist() == [1, 1, 0]
  assert float(jax.nn.softmax(logits[1])[2]) == 0


def test_language_modelling_targets_are_text_tokens_only(tmp_path):
  objective, params, batch = objective_for(tmp_path, EXAMPLES['entailment'])
  targets = np.asarray(classify.lm_targets(batch['tokens'], batch['lm_mask']))
  mask = np.asarray(batch['lm_mask']) > 0
  assert targets.max() < CharTokenizer.vocab_size
  np.testing.assert_array_equal(targets[mask], np.asarray(batch['tokens'])[..., 1:][mask[..., :-1]])
  # [start] a b [delim] c _ d [extract]: targets a, b, c, space, d; not delim nor extract
  assert np.asarray(batch['lm_mask'][0, 0]).tolist() == [1, 1, 0, 1, 1, 1, 0] + [0] * 5


def test_the_head_and_the_special_tokens_used_get_gradients(tmp_path):
  objective, params, batch = objective_for(tmp_path, EXAMPLES['classification'])
  grads = jax.grad(lambda p: loss_terms(objective, p, batch)[0])(params)
  assert float(jnp.abs(grads['head']['kernel']).sum()) > 0
  # classification sequences hold a start and an extract token, no delimiter
  assert (np.abs(np.asarray(grads['special'])).sum(-1) > 0).tolist() == [True, False, True]
  assert set(grads) == {'gpt', 'special', 'head'}


def test_start_from_puts_the_base_model_under_a_fresh_head(tmp_path):
  objective, params, _ = objective_for(tmp_path, EXAMPLES['classification'])
  base_params = objective.init_params(jax.random.PRNGKey(7))['gpt']
  objective.config.init_from = 'base'
  objective.base = types.SimpleNamespace(params=base_params)
  started = objective.start_from(params, None, print)
  jax.tree.map(np.testing.assert_array_equal, started["gpt"], base_params)
  assert started['head'] is params['head'] and started['special'] is params['special']


def test_prompted_task_takes_the_labels_in_turn(tmp_path):
  examples = [{'text': t, 'label': l} for t, l in
              [('a', 'x'), ('b', 'x'), ('c', 'y'), ('d', 'x'), ('e', 'y')]]
  train = task_inputs.read_task_file(write_jsonl(tmp_path / 't.jsonl', examples))
  task = classify.prompted_task(train, train, 3)
  assert [(e.input, e.output) for e in task.positive_examples] == [('a', 'x'), ('c', 'y'),
                                                                   ('b', 'x')]
  assert task.options == ('x', 'y') and task.instances[1].outputs == ('x',)
  assert task.definition == 'Label the text with one of: x, y.'
  pairs = task_inputs.read_task_file(write_jsonl(tmp_path / 'p.jsonl', EXAMPLES['entailment']))
  prompt_input = classify.prompted_task(pairs, pairs, 0).instances[0].input
  assert prompt_input == 'Premise: ab\nHypothesis: c d'
  mc = task_inputs.read_task_file(write_jsonl(tmp_path / 'm.jsonl', EXAMPLES['multiple_choice']))
  assert classify.prompted_task(mc, mc, 1).positive_examples[0].output == 'de'


def test_choice_logliks_score_each_prompts_own_choices(tmp_path):
  class Scorer:  # the NLL of a row: its length
    seq_len = 20

    def score_rows(self, rows):
      return np.array([len(tokens) + 0.5 * n for tokens, n in rows], float)

  logliks, cut = scoring.choice_logliks(Scorer(), types.SimpleNamespace(
      eos_id=0, encode_batch=CharTokenizer().encode_batch), ['ab', 'c'], [['x', 'yz'], ['w']])
  # rows: [eos, a, b, ' ', x] (5 tokens, 2 targets) ...
  assert [row.tolist() for row in logliks] == [[-6.0, -7.5], [-5.0]] and cut == 0


# --- a run ---------------------------------------------------------------------------------


def tiny_classify_flags(base: str, task: str = 'follows') -> list[str]:
  return [f'--config={CLASSIFY}:{task}', f'--config.init_from={base}', '--config.steps=6',
          '--config.batch_size=8', '--config.seq_len=32', '--config.eval_every=3',
          '--config.log_every=3', '--config.task.eval_instances=16', '--config.task.shots=(0,1)']


@pytest.mark.slow
def test_a_run_from_the_command_line_then_evaluate_scores_its_head(tiny_base, tmp_path):
  workdir = str(tmp_path / 'follows')
  result = run_cli(*tiny_classify_flags(tiny_base), f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  with open(os.path.join(workdir, 'finetune_report.json')) as f:
    report = json.load(f)
  assert report['labels'] == ['does not follow', 'follows'] and report['held_out_examples'] == 16
  assert set(report['prompted']) == {'0', '1'} and report['majority_rate'] > 0
  with open(os.path.join(workdir, 'finetune_report.md')) as f:
    assert '| fine-tuned task head (GPT-1) |' in f.read()
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert {'train_loss', 'lm_loss', 'train_acc', 'val_loss', 'val_acc', 'val_lm_loss'} <= set(
      records[-1])
  config = runs.read_config(workdir)
  assert (config.task.kind, list(config.task.labels)) == ('entailment', report['labels'])

  # evaluate scores the head on the same examples as the report
  held_out = os.path.join(task_inputs.SHIPPED_DIR, 'val', 'follows.jsonl')
  result = run_cli(f'--workdir={workdir}', f'--task={held_out}', '--max_instances=16',
                   f'--json={tmp_path / "eval.json"}', module='gpt_jax.evaluate')
  assert result.returncode == 0, result.stderr
  assert 'its task head: accuracy' in result.stdout
  with open(tmp_path / 'eval.json') as f:
    assert json.load(f)['task']['accuracy'] == report['head_accuracy']

  # the run's model part reads as a language model: sampling, evaluation and init_from
  run = runs.load(workdir)
  base = runs.load(tiny_base)
  assert jax.tree.structure(run.params) == jax.tree.structure(base.params)
  assert not np.array_equal(run.params['wte']['embedding'], base.params['wte']['embedding'])

  # a label training never saw is one line, before the model loads
  unseen = write_jsonl(tmp_path / 'unseen.jsonl', [{'premise': 'a', 'hypothesis': 'b',
                                                    'label': 'contradicts'}])
  result = run_cli(f'--workdir={workdir}', f'--task={unseen}', module='gpt_jax.evaluate')
  assert result.returncode == 2 and result.stderr.count('\n') == 1
  assert "label 'contradicts'" in result.stderr and 'never seen in training' in result.stderr


@pytest.mark.parametrize('overrides, message', [
    ({'finetune.lm_weight': -0.5}, 'finetune.lm_weight=-0.5 must be >= 0'),
    ({'init_from': ''}, 'fine-tunes a pretrained model; pass --config.init_from'),
    ({'data.tasks': ''}, 'needs a labelled task file'),
    ({'data.tasks': 'SCHEMALESS'}, 'is in no task schema'),
    ({'task.kind': 'similarity'}, 'is of kind classification, not similarity'),
    ({'task.labels': ('a', 'b')}, 'differ from the labels of'),
    ({'data.tasks': 'DIRECTORY'}, 'objective=classify trains one task; pass one'),
    ({'data.tasks': 'OTHER_LABELS'},
     r"never seen in training .* pass --config.data.held_out_tasks= "),
])
def test_bad_settings_are_one_line_before_training(overrides, message, tmp_path):
  config = cli.load_experiment(f'{CLASSIFY}:genre')
  config.init_from = str(tmp_path / 'base')  # never read: each mistake is found before
  for key, value in overrides.items():
    if value == 'SCHEMALESS':
      value = write_jsonl(tmp_path / 'bad.jsonl', [{'sentence': 'a', 'label': 'x'}])
    if value == 'DIRECTORY':
      value = str(tmp_path)
    if value == 'OTHER_LABELS':  # the genre task's held-out file stays: its labels are unseen
      value = write_jsonl(tmp_path / 'sent.jsonl', [{'text': 'good', 'label': 'pos'},
                                                    {'text': 'bad', 'label': 'neg'}])
    node, _, leaf = key.rpartition('.')
    (config[node] if node else config)[leaf] = value
  with pytest.raises(UserError, match=message) as error:
    trainer.train(config, str(tmp_path / 'run'), log=lambda *_: None)
  assert '\n' not in str(error.value)
  assert not os.path.exists(tmp_path / 'run')


def test_bad_lm_weight_through_the_command_line(tmp_path):
  result = run_cli(f'--config={CLASSIFY}', '--config.finetune.lm_weight=-1',
                   f'--workdir={tmp_path / "run"}')
  assert result.returncode == 2 and result.stderr.count('\n') == 1
  assert 'finetune.lm_weight=-1.0 must be >= 0' in result.stderr
