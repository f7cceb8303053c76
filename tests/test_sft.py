"""Instruction tuning (objective 'sft'): its loss, packing, and whole runs from a base model."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, read_metrics, run_cli
from gpt_jax import cli, instructions, model, network, trainer
from gpt_jax.errors import UserError
from gpt_jax.objectives import sft


def quiet(_):
  pass


# --- the loss, against a reference --------------------------------------------------------------


@pytest.fixture
def objective():
  config = cli.load_experiment(TINY)
  config.update(objective='sft', seq_len=24)
  config.model.update(vocab_size=64, n_embd=32, n_head=2, n_kv_head=2, position='rope')
  gpt = network.build(config.model)
  objective = sft.InstructionTuning(config, None, gpt)
  params = model.init_params(gpt, jax.random.PRNGKey(0), config.seq_len)
  rng = np.random.default_rng(0)
  examples = [instructions.TokenizedExample(rng.integers(3, 64, n).astype(np.int32), answer)
              for n, answer in ((9, 3), (7, 2), (6, 4))]
  return objective, params, examples


def summed_loss(objective, params, rows):
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  loss, _ = objective.loss(params, batch, rng=jax.random.PRNGKey(0), step=0,
                           weights={'targets': 1.0}, frozen=None)
  return loss


def test_a_packed_row_gives_each_example_its_loss_alone(objective):
  """The packed loss equals a numpy cross-entropy of each example's answer tokens computed from
  the example run alone, and its gradient the sum of the examples' gradients."""
  objective, params, examples = objective
  packed = instructions.pack(examples, objective.config.seq_len)
  assert len(packed['tokens']) == 1  # all three in one row
  expected = 0.0
  for e in examples:
    logits = np.asarray(objective.gpt.apply({'params': params}, e.tokens[None, :-1]),
                        np.float64)[0]
    log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                               keepdims=True)
                            ) - logits.max(-1, keepdims=True)
    nll = -log_p[np.arange(len(e.tokens) - 1), e.tokens[1:]]
    expected += nll[-e.answer_len:].sum()
  np.testing.assert_allclose(summed_loss(objective, params, packed), expected, rtol=2e-5)

  grad = jax.grad(summed_loss, argnums=1)
  packed_grads = grad(objective, params, packed)
  alone = [grad(objective, params, instructions.pack([e], objective.config.seq_len))
           for e in examples]
  for got, *parts in zip(jax.tree.leaves(packed_grads), *map(jax.tree.leaves, alone)):
    np.testing.assert_allclose(got, sum(parts), atol=2e-5)


def test_prompt_tokens_get_no_gradient(objective):
  """Targets outside the answer (mask 0) change neither the loss nor its gradient."""
  objective, params, examples = objective
  rows = instructions.pack(examples, objective.config.seq_len)
  other = dict(rows, targets=np.where(rows['mask'] > 0, rows['targets'],
                                      (rows['targets'] + 7) % 64).astype(np.int32))
  assert (other['targets'] != rows['targets']).any()
  grad = jax.value_and_grad(summed_loss, argnums=1)
  (a, ga), (b, gb) = grad(objective, params, rows), grad(objective, params, other)
  assert float(a) == float(b)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_array_equal(x, y)


# --- whole runs ---------------------------------------------------------------------------------


@pytest.fixture
def base_dir(tiny_base):
  """The base: conftest's tiny_base, which is tiny.py on the small corpus; read only."""
  return tiny_base


def write_tasks(directory) -> str:
  """Two tasks whose answers follow from their inputs: the first word, and whether the input
  holds an 'o' (a fixed label set)."""
  words = ['thou', 'art', 'king', 'sweet', 'night', 'love', 'sword', 'crown', 'moon', 'fair']
  rng = np.random.default_rng(0)
  lines = [' '.join(rng.choice(words, 3)) for _ in range(60)]
  tasks = {
      'first_word': ('Answer with the first word of the input.', lambda s: s.split()[0]),
      'has_o': ("Does the input hold the letter o? Answer yes or no.",
                lambda s: 'yes' if 'o' in s else 'no'),
  }
  os.makedirs(directory, exist_ok=True)
  for name, (definition, answer) in tasks.items():
    task = {'Definition': [definition], 'Contributors': ['test'],
            'Positive Examples': [{'input': s, 'output': answer(s), 'explanation': ''}
                                  for s in lines[:2]],
            'Instances': [{'id': f'{name}-{i}', 'input': s, 'output': [answer(s)]}
                          for i, s in enumerate(lines[2:])]}
    with open(os.path.join(directory, f'{name}.json'), 'w') as f:
      json.dump(task, f)
  return str(directory)


@pytest.fixture
def sft_config(base_dir, tmp_path):
  config = cli.load_experiment(TINY)
  config.update(objective='sft', init_from=base_dir, seq_len=64, steps=12, log_every=4,
                eval_every=4, checkpoint_every=4)
  config.data.update(tasks=write_tasks(tmp_path / 'tasks'), num_epochs=20)
  config.sft.update(shots=1, held_out=0.2, eval_instances=6)
  config.sample.num = 0
  return config


def test_sft_resumes_bit_for_bit(sft_config, tmp_path):
  sft_config.model.dropout = 0.1
  whole, resumed = str(tmp_path / 'whole'), str(tmp_path / 'resumed')
  trainer.train(sft_config, whole, log=quiet)
  trainer.train(sft_config, resumed, log=quiet)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '12'))
  messages = []
  trainer.train(sft_config, resumed, log=messages.append)
  assert any('resuming from step 8' in m for m in messages)
  assert read_metrics(resumed) == read_metrics(whole)
  report = open(os.path.join(whole, sft.REPORT)).read()
  assert '| first_word | 6 |' in report and '| has_o | 6 |' in report
  scores = json.load(open(os.path.join(whole, 'sft_scores.json')))
  assert 'choice' in scores['has_o']['tuned'] and 'choice' not in scores['first_word']['tuned']
  assert json.load(open(os.path.join(whole, 'config.json')))['model']['n_embd'] == 64


@pytest.mark.slow
def test_sft_through_the_command_line(sft_config, tmp_path):
  workdir = str(tmp_path / 'run')
  args = [f'--config={TINY}', '--config.objective=sft',
          f'--config.init_from={sft_config.init_from}',
          f'--config.data.tasks={sft_config.data.tasks}', '--config.seq_len=64',
          '--config.data.num_epochs=20', '--config.sft.shots=1', '--config.sft.eval_instances=4',
          '--config.sample.num=0', '--config.steps=8', f'--workdir={workdir}']
  result = run_cli(*args, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert os.path.exists(os.path.join(workdir, sft.REPORT))
  records = read_metrics(workdir)
  assert records[-1]['step'] == 8 and np.isfinite(records[-1]['val_loss'])


@pytest.mark.parametrize('change, message', [
    (dict(init_from=''), 'objective=sft fine-tunes a pretrained model; pass --config.init_from'),
    (dict(data=dict(tasks='')), 'objective=sft needs tasks'),
    (dict(sft=dict(shots=5)), 'sft.shots=5, but task first_word has 2 positive example'),
    (dict(data=dict(held_out_tasks='NOWHERE')), 'NOWHERE'),
    (dict(model=dict(vocab_size=1024)), r'model.vocab_size=1024, but init_from=.* has 512'),
    (dict(seq_len=128), r'seq_len=128 is beyond the 64-token context of init_from=.*; lower'),
])
def test_bad_sft_settings_are_one_line(sft_config, tmp_path, change, message):
  for key, value in change.items():
    if isinstance(value, dict):
      sft_config[key].update(value)
    else:
      sft_config[key] = value
  with pytest.raises(UserError, match=message) as e:
    trainer.train(sft_config, str(tmp_path / 'run'), log=quiet)
  assert '\n' not in str(e.value)
