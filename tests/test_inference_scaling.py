"""Inference-time scaling: best-of-N against its exact distribution and KL, majority voting, the
scorers, and the sample command's choices."""

import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_main
from gpt_jax import cli, inference_scaling as scaling, losses, runs, sample, scoring, sharding
from gpt_jax import task_inputs, trainer
from gpt_jax.errors import UserError
from gpt_jax.objectives import classify, reward
from gpt_jax.tasks import judge

sample_command = importlib.import_module('gpt_jax.sample.__main__')


@pytest.fixture(scope='module')
def run(tiny_base):
  return runs.load(tiny_base, mesh=sharding.data_parallel_mesh())


def test_majority_vote_counts_normalised_answers_and_breaks_ties_by_order():
  assert scaling.majority_vote([['Yes.', 'no', 'yes', 'NO!', 'maybe'],
                                ['b', 'a', 'a', 'b'], ['x']]) == [(0, 2), (0, 2), (0, 1)]
  assert scaling.majority_vote([['no', 'Yes', ' yes ']]) == [(1, 2)]


def test_best_of_n_takes_the_first_of_the_highest():
  assert scaling.best_of_n(np.array([[1.0, 3.0, 3.0], [-1.0, -2.0, -5.0]])).tolist() == [1, 0]


def test_the_closed_form_kl_is_the_exact_one_for_many_unlikely_answers():
  np.testing.assert_allclose(scaling.best_of_n_kl([1, 2, 64]),
                             [0.0, np.log(2) - 0.5, np.log(64) - 63 / 64])
  rng = np.random.default_rng(0)
  p = rng.dirichlet(np.ones(20_000))
  rewards = rng.permutation(len(p))
  for n in (1, 2, 4, 16, 64):
    pi_n, kl = scaling.exact_best_of_n(p, rewards, n)
    assert pi_n.sum() == pytest.approx(1.0)
    assert kl == pytest.approx(scaling.best_of_n_kl(n), abs=2e-3)
  # a likely answer or tied rewards keep it below the closed form (Beirami et al. 2024)
  p = np.array([0.5, 0.2, 0.2, 0.1])
  pi_n, kl = scaling.exact_best_of_n(p, np.array([3.0, 1.0, 1.0, 0.0]), 4)
  np.testing.assert_allclose(pi_n, [1 - 0.5 ** 4, (0.5 ** 4 - 0.1 ** 4) / 2,
                                    (0.5 ** 4 - 0.1 ** 4) / 2, 0.1 ** 4])
  assert 0 < kl < scaling.best_of_n_kl(4)


def test_best_of_n_samples_the_exact_best_of_n_distribution(run):
  """One-token answers of the tiny model: their distribution is the model's next-token softmax,
  so best-of-N's is exact_best_of_n's, and the Monte Carlo KL of the chosen answers must match
  the exact KL."""
  tokenizer, n, draws = run.tokenizer, 4, 3000
  row = [tokenizer.eos_id, *tokenizer.encode('KING')]
  logits = run.gpt.apply({'params': run.params}, jnp.asarray([row], jnp.int32))[0, -1]
  p = np.asarray(jax.nn.softmax(losses.mask_padded_vocab(logits, tokenizer.vocab_size)),
                 np.float64)[:tokenizer.vocab_size]
  p /= p.sum()
  preference = np.random.default_rng(1).permutation(tokenizer.vocab_size).astype(float)
  candidates = scaling.sample_candidates(run, ['KING'] * draws, [row] * draws, n,
                                         max_new_tokens=1, temperature=1.0, seed=3)
  tokens = np.array([a[0] if a else tokenizer.eos_id for a in candidates.answers])
  chosen = np.array(candidates.by_prompt(tokens))[
      np.arange(draws), scaling.best_of_n(np.array(candidates.by_prompt(preference[tokens])))]
  pi_n, exact = scaling.exact_best_of_n(p, preference, n)
  log_ratio = np.log(pi_n[chosen] / p[chosen])
  assert log_ratio.mean() == pytest.approx(exact, abs=3 * log_ratio.std() / np.sqrt(draws))
  assert exact <= scaling.best_of_n_kl(n)


def test_scorers_rate_what_they_say(run, tiny_reward):
  rows = [[run.tokenizer.eos_id, *run.tokenizer.encode(t)] for t in ('Thou art', 'My lord')]
  c = scaling.sample_candidates(run, ['Thou art', 'My lord'], rows, 3, max_new_tokens=6,
                                seed=0, batch_size=4)
  assert len(c.answers) == 6 and c.by_prompt(c.texts)[1] == c.texts[3:]
  mesh = sharding.data_parallel_mesh()
  logp = scaling.make_scorer('logprob', run, mesh=mesh, batch_size=4, seq_len=32)(c)
  scorer = scoring.Scorer(run, mesh, 4, 32)
  np.testing.assert_allclose(logp, scoring.answer_logprobs(
      scorer, [r for r in rows for _ in range(3)], c.answers, run.tokenizer.eos_id, 6))
  np.testing.assert_array_equal(scaling.judge_scorer(c), [-judge.distance(t) for t in c.texts])
  rewards = scaling.make_scorer(f'reward:{tiny_reward}', run, mesh=mesh, batch_size=4,
                                seq_len=32)(c)
  model = reward.load_reward_model(tiny_reward, 'r', run.config, run.tokenizer, mesh=mesh)
  np.testing.assert_allclose(rewards, model.score_answers(
      [p for p in c.prompts for _ in range(3)], c.texts, run.tokenizer, 32, 4))


def test_bad_scorers_and_counts_are_one_line(run, tiny_base):
  mesh = sharding.data_parallel_mesh()
  with pytest.raises(UserError, match=r"^--scorer='length' is not a scorer; pass one of logprob"):
    scaling.make_scorer('length', run, mesh=mesh, batch_size=4, seq_len=32)
  with pytest.raises(UserError, match='is an objective=.* run, not a reward model'):
    scaling.make_scorer(f'reward:{tiny_base}', run, mesh=mesh, batch_size=4, seq_len=32)
  with pytest.raises(UserError, match='^N=0: the answers sampled per prompt must be >= 1'):
    scaling.sample_candidates(run, ['a'], [[1]], 0, max_new_tokens=2)
  with pytest.raises(UserError, match='^--choose=best chooses among samples; beam search'):
    sample_command.parse_args(['--workdir=x', '--prompt=a', '--choose=best', '--beam_width=2'])
  with pytest.raises(UserError, match='^--scorer rates samples for --choose=best'):
    sample_command.parse_args(['--workdir=x', '--prompt=a', '--choose=majority', '--scorer=judge'])


def test_the_sample_command_keeps_the_judges_best_of_the_samples_it_prints(tiny_base, run,
                                                                          capsys):
  args = ['--workdir=' + tiny_base, '--prompt=KING', '--prompt=My lord', '--num_samples=6',
          '--max_tokens=10', '--temperature=1', '--seed=4']
  sample_command.main(args)
  printed = capsys.readouterr().out.split('--- sample ')[1:]
  samples = [s.split('---\n', 1)[1].rstrip('\n') for s in printed]
  sample_command.main([*args, '--choose=best', '--scorer=judge'])
  best = capsys.readouterr().out.split('---\n')[1:]
  assert len(samples) == 12 and len(best) == 2
  for p, prompt in enumerate(['KING', 'My lord']):
    mine = samples[p * 6:(p + 1) * 6]
    distances = [judge.distance(s[len(prompt):]) for s in mine]
    assert best[p].split('\n--- ')[0].rstrip('\n') == mine[int(np.argmin(distances))]
  assert sample.context_length(run.config.model) == 64


def test_a_vote_over_near_greedy_samples_gives_the_greedy_answers(run):
  prompts = ['KING', 'My lord, the', 'Good morrow']
  greedy, cut = scoring.generate_answers(run, prompts, max_new_tokens=8, seq_len=32, batch_size=2)
  for vote in ('majority', 'best'):
    answer = scaling.voting_answerer(3, vote, temperature=1e-6, seed=5,
                                     mesh=sharding.data_parallel_mesh())
    assert answer(run, prompts, 8, 32, 2) == (greedy, cut)


@pytest.mark.parametrize('args, message', [
    (['--samples=4'], '--samples=4 needs --vote=majority or --vote=best'),
    (['--vote=majority'], '--vote=majority chooses among sampled answers; pass --samples=N'),
    (['--samples=-1', '--vote=majority'], '--samples=-1: the answers sampled per prompt'),
    (['--samples=2', '--vote=majority', '--scorer=judge'],
     '--scorer rates answers for --vote=best'),
    (['--samples=2', '--vote=majority', '--temperature=0'], '--temperature=0.0 must be > 0'),
    (['--samples=2', '--vote=majority', '--task=shakespeare_play'], 'is scored as multiple choice'),
    (['--samples=2', '--vote=best', '--scorer=length', '--task=shakespeare_play',
      '--scoring=generation', '--max_instances=1', '--shots=0'],
     "--scorer='length' is not a scorer"),
])
def test_evaluate_refuses_votes_it_cannot_take(tiny_base, args, message):
  out = run_main(f'--workdir={tiny_base}', *args, module='gpt_jax.evaluate')
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr


@pytest.mark.slow
def test_a_classifier_head_scores_the_log_probability_of_its_label(run, tiny_base, tmp_path):
  """A GPT-1 entailment head (the shipped 'follows' task) rates each (prompt, answer); best-of-N
  keeps the answer it finds likeliest to follow."""
  config = cli.load_experiment(os.path.join(ROOT, 'experiments', 'classify.py:follows'))
  config.update(init_from=tiny_base, steps=4, batch_size=8, seq_len=32, eval_every=4,
                log_every=4)
  config.task.update(eval_instances=8, shots=(0,))
  workdir = str(tmp_path / 'follows')
  trainer.train(config, workdir, log=lambda _: None)
  prompts = ['Now is the winter of our discontent', 'My lord']
  rows = [[run.tokenizer.eos_id, *run.tokenizer.encode(p)] for p in prompts]
  c = scaling.sample_candidates(run, prompts, rows, 4, max_new_tokens=8, seed=1)
  mesh = sharding.data_parallel_mesh()
  scores = scaling.make_scorer(f'classifier:{workdir}:follows', run, mesh=mesh, batch_size=8,
                               seq_len=32)(c)
  objective, params, _ = classify.load_classifier(workdir, mesh=mesh, log=lambda _: None)
  task = task_inputs.LabelledTask('t', 'entailment', tuple(config.task.labels), tuple(
      task_inputs.LabelledExample((p, t), (), 0)
      for p, t in zip([p for p in prompts for _ in range(4)], c.texts)), 'test')
  logits = objective.logits(params, objective.encode(task), 8).astype(np.float64)
  follows = list(config.task.labels).index('follows')
  expected = logits[:, follows] - np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(scores, expected, rtol=1e-6)
  with pytest.raises(UserError, match="the classifier has no label 'maybe'; its labels are"):
    scaling.make_scorer(f'classifier:{workdir}:maybe', run, mesh=mesh, batch_size=8, seq_len=32)
  with pytest.raises(UserError, match='is not a classify run'):
    scaling.make_scorer(f'classifier:{tiny_base}:follows', run, mesh=mesh, batch_size=8,
                        seq_len=32)
