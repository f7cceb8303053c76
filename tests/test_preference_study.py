"""The preference chain's evaluation: win rates, the KL estimate, the report, and the runs'
wiring (the training itself needs the reward, dpo and ppo objectives)."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import scipy.special

from conftest import ROOT, TINY
from gpt_jax import checkpoint, cli, files, model, network, preference_study as study, runs, scoring
from gpt_jax import sharding, tokenizer as tokenizer_lib
from gpt_jax.tasks import build, judge

PENTAMETER, SHORT = "Shall I compare thee to a summer's day?", 'My lord.'
SETTINGS = study.Settings(samples=2, max_new_tokens=8, temperature=1.0, seed=0, batch_size=4,
                          seq_len=32)


@pytest.fixture(scope='module')
def pair_rows():
  with open(os.path.join(build.TASKS_DIR, 'preference', 'val', 'pentameter.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def tiny_runs(pair_rows):
  """Two runs.Run of the tiny model, random parameters of seeds 0 and 1, one tokenizer."""
  tokenizer = tokenizer_lib.train([text for row in pair_rows for text in row.values()], 400)
  config = cli.load_experiment(TINY)
  gpt = network.build(config.model)
  made = lambda seed: runs.Run(gpt, model.init_params(gpt, jax.random.PRNGKey(seed), 32), config,
                               tokenizer, 0)
  return made(0), made(1)


def test_win_rate_counts_wins_ties_and_losses():
  assert study.win_rate([PENTAMETER, SHORT, SHORT], [SHORT, SHORT, PENTAMETER]) == (
      pytest.approx(0.5), pytest.approx(np.std([1, 0.5, 0], ddof=1) / np.sqrt(3)))
  assert study.win_rate([PENTAMETER, SHORT], [PENTAMETER, SHORT]) == (0.5, 0.0)
  assert study.win_rate([PENTAMETER] * 4, [SHORT] * 4) == (1.0, 0.0)


def test_kl_estimate_is_the_mean_log_ratio():
  mean, se = study.kl_estimate(np.array([-1.0, -2.0, -4.0]), np.array([-2.0, -2.0, -7.0]))
  assert mean == pytest.approx(4 / 3) and se == pytest.approx(np.std([1, 0, 3], ddof=1) / 3 ** .5)
  logp = np.array([-3.5, -0.25])
  assert study.kl_estimate(logp, logp) == (0.0, 0.0)


def test_best_of_n_keeps_the_highest_reward_of_growing_draws(tiny_runs, pair_rows):
  """The first N of one draw of samples: a larger N chooses among a superset, so the reward
  (here the judge's, minus the distance) can only rise and the distance only fall."""
  prompts = [row['prompt'] for row in pair_rows[:6]]
  score = lambda prompts, answers: -np.array([judge.distance(a) for a in answers], float)
  settings = dataclasses.replace(SETTINGS, best_of=(1, 2, 8), best_of_pool=16)
  rows = study.best_of_n(tiny_runs[0], prompts, settings, score)
  assert [r['n'] for r in rows] == [1, 2, 8]
  rewards, distances = [r['reward'] for r in rows], [r['distance'] for r in rows]
  assert rewards == sorted(rewards) and rewards[-1] > rewards[0]
  assert distances == [-r for r in rewards]
  assert rows[0]['kl'] == 0.0 and rows[0]['kl_closed_form'] == 0.0
  assert rows[2]['kl_closed_form'] == pytest.approx(np.log(8) - 7 / 8)
  assert all(0 <= r['win_rate'] <= 1 for r in rows) and rows[2]['win_rate'] > rows[0]['win_rate']


def test_answer_logprobs_sum_the_answer_and_its_eos(tiny_runs):
  run = tiny_runs[0]
  scorer = scoring.Scorer(run, sharding.data_parallel_mesh(), 4, 32)
  eos = run.tokenizer.eos_id
  rows, answers = [[eos, 5, 6, 7], [eos, 9]], [[11, 12], [13, 14, 15]]
  got = scoring.answer_logprobs(scorer, rows, answers, eos, max_new_tokens=3)
  for row, answer, continuation, value in zip(rows, answers, ([11, 12, eos], [13, 14, 15]), got):
    tokens = np.array(row + continuation)  # the second answer is max_new_tokens long: no EOS
    logits = np.asarray(run.gpt.apply({'params': run.params}, tokens[None, :-1]), np.float64)[0]
    logits = logits[:, :run.tokenizer.vocab_size]  # the ids beyond the tokenizer's are not tokens
    log_p = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    targets = np.arange(len(row) - 1, len(tokens) - 1)
    assert value == pytest.approx(log_p[targets, tokens[targets + 1]].sum(), rel=1e-5)


def test_sampled_answers_share_random_numbers_across_models(tiny_runs):
  prompts = ['To be, or not to be', 'Good night.']
  rows, answers = study.sample_answers(tiny_runs[0], prompts, SETTINGS)
  again_rows, again = study.sample_answers(tiny_runs[0], prompts, SETTINGS)
  assert (rows, answers) == (again_rows, again) and len(answers) == 4
  assert rows[0] == rows[1] and rows[0][0] == tiny_runs[0].tokenizer.eos_id
  assert all(len(row) + SETTINGS.max_new_tokens <= SETTINGS.seq_len + 1 for row in rows)
  assert all(len(a) <= SETTINGS.max_new_tokens for a in answers)


def test_a_model_against_itself_wins_half_at_zero_kl(tiny_runs, pair_rows):
  start, other = tiny_runs
  prompts = [row['prompt'] for row in pair_rows[:4]]
  val = np.arange(1, 200, dtype=np.int32) % 390
  results = study.evaluate_models({'sft': start, 'twin': start, 'other': other}, 'sft', prompts,
                                  SETTINGS, score=lambda p, a: np.array([len(t) for t in a]),
                                  val_tokens=val, log=lambda _: None)
  assert list(results) == ['sft', 'twin', 'other']
  for name in ('sft', 'twin'):
    m = results[name]
    assert (m['win_rate'], m['win_rate_se'], m['kl'], m['kl_se']) == (0.5, 0.0, 0.0, 0.0)
  assert results['twin'] == results['sft']
  assert results['other']['val_bpb'] != results['sft']['val_bpb']
  assert 0 <= results['other']['win_rate'] <= 1 and len(results['sft']['examples']) == 3
  assert results['sft']['examples'][0]['prompt'] == prompts[0]


def results_by_hand(dpo_rate, dpo_se):
  metrics = lambda rate, se, kl, bpb: {
      'win_rate': rate, 'win_rate_se': se, 'distance': 1.25, 'pentameter': 0.4, 'tokens': 12.5,
      'ended': 0.9, 'reward': None, 'kl': kl, 'kl_se': 0.5, 'val_bpb': bpb,
      'examples': [{'prompt': 'Who is it?', 'answer': 'Nay, answer me.'}]}
  return {'prompts': 200, 'start': 'sft',
          'settings': {'samples': 4, 'max_new_tokens': 32, 'temperature': 1.0, 'seed': 0},
          'models': {'sft': metrics(0.5, 0.0, 0.0, 2.5), 'dpo': metrics(dpo_rate, dpo_se, 3.25,
                                                                         2.5125)}}


def test_report_rows_and_verdicts():
  text = study.report_text(results_by_hand(0.625, 0.05))
  assert ('| sft (start) | 50.0% ± 0.0% | 1.25 | 40.0% | 12.5 | 90% | — | 0.00 ± 0.50 | 2.5000 |'
          in text)
  assert ('| dpo | 62.5% ± 5.0% | 1.25 | 40.0% | 12.5 | 90% | — | 3.25 ± 0.50 | 2.5125 (+0.0125) |'
          in text)
  assert ("dpo: the judge prefers its answers to sft's in 62.5% (± 5.0%) of pairs; its rate rose "
          "above sft's 50%, at a KL of 3.25 ± 0.50 nats per answer.") in text
  assert "its rate did not differ measurably from" in study.report_text(results_by_hand(0.55, 0.05))
  assert "its rate fell below" in study.report_text(results_by_hand(0.3, 0.05))


def test_write_report_writes_both_files(tmp_path):
  results = results_by_hand(0.625, 0.05)
  study.write_report(results, str(tmp_path))
  assert json.loads((tmp_path / 'preference_report.json').read_text()) == results
  assert (tmp_path / 'preference_report.md').read_text() == study.report_text(results)


# --- the runs of the chain -------------------------------------------------------------------


@pytest.fixture
def chain_config():
  return cli.load_experiment(os.path.join(ROOT, 'experiments', 'preference.py'))


def test_run_configs_wire_the_chain(chain_config, tmp_path):
  chain_config.chain.runs.dpo.update(steps=7, dpo={'beta': 0.25})
  found = study.run_configs(chain_config, str(tmp_path))
  assert list(found) == ['sft', 'reward', 'dpo', 'ppo']
  sft_dir, reward_dir = str(tmp_path / 'sft'), str(tmp_path / 'reward')
  for name, (run, run_dir) in found.items():
    assert run.objective == name and run_dir == str(tmp_path / name) and 'chain' not in run
    assert run.init_from == ('runs/shakespeare' if name == 'sft' else sft_dir)
    assert run.data.tasks == chain_config.data.tasks
  assert found['dpo'][0].steps == 7 and found['dpo'][0].dpo.beta == 0.25
  assert found['sft'][0].dpo.beta == 0.5 and found['sft'][0].optim.lr == 5e-4
  assert found['dpo'][0].dpo.reference == sft_dir
  assert (found['ppo'][0].ppo.reward_model, found['ppo'][0].ppo.reference) == (reward_dir, sft_dir)
  assert 'chain' in chain_config  # the caller's config is left as it was


def test_a_run_is_finished_at_its_last_step_with_its_settings(chain_config, tiny_runs, tmp_path):
  run, run_dir = study.run_configs(chain_config, str(tmp_path))['dpo']
  assert not study.finished(run, run_dir)
  os.makedirs(run_dir)
  files.write_json(os.path.join(run_dir, runs.CONFIG), run.to_dict())
  checkpoints = os.path.join(run_dir, runs.CHECKPOINTS)
  checkpoint.save_params(checkpoints, run.steps - 1, tiny_runs[0].params)
  assert not study.finished(run, run_dir)
  checkpoint.save_params(checkpoints, run.steps, tiny_runs[0].params)
  sft_checkpoints = os.path.join(run.init_from, runs.CHECKPOINTS)
  checkpoint.save_params(sft_checkpoints, 1, tiny_runs[0].params)
  assert not study.finished(run, run_dir)  # no record of the runs it read
  files.write_json(os.path.join(run_dir, study.CHAIN_SOURCES), study.sources(run))
  assert study.finished(run, run_dir)
  run.model.n_layer = 3  # the base's shape replaces the config's when a fine-tuning run starts
  assert study.finished(run, run_dir)
  run.dpo.beta = 0.2
  assert not study.finished(run, run_dir)
  run.dpo.beta = chain_config.dpo.beta
  checkpoint.save_params(sft_checkpoints, 2, tiny_runs[0].params)  # the SFT run trained on
  assert not study.finished(run, run_dir)


def test_the_chain_needs_a_base_and_held_out_prompts(chain_config, tmp_path):
  from gpt_jax.errors import UserError
  chain_config.data.held_out_tasks = ''
  with pytest.raises(UserError, match='held_out_tasks'):
    study.run_study(chain_config, str(tmp_path))
  chain_config.init_from = ''
  with pytest.raises(UserError, match='init_from'):
    study.run_study(chain_config, str(tmp_path))


def test_the_train_command_dispatches_a_chain(chain_config, tmp_path):
  from gpt_jax import train
  from gpt_jax.errors import UserError
  chain_config.init_from = ''
  with pytest.raises(UserError, match='the preference chain starts from a pretrained model'):
    train.run(chain_config, str(tmp_path))


@pytest.mark.slow
def test_a_tiny_chain_trains_evaluates_and_resumes(small_corpus, tiny_base, tmp_path):
  config = cli.load_experiment(os.path.join(ROOT, 'experiments', 'preference.py'))
  config.init_from, config.data.corpus = tiny_base, small_corpus  # the base: read only
  config.update(seq_len=64, batch_size=4, eval_every=4, checkpoint_every=4, eval_batches=1)
  config.ppo.update(max_new_tokens=8, minibatches=2)
  for name in study.RUNS:
    config.chain.runs[name].steps = 4
  config.chain.update(samples=1, prompts=4, max_new_tokens=8, batch_size=4, val_batches=2,
                      best_of=(1, 2), best_of_pool=4)
  logs = []
  results = study.run_study(config, str(tmp_path / 'chain'), log=logs.append)
  assert list(results['models']) == ['base', 'sft', 'dpo', 'ppo']
  assert results['models']['sft']['kl'] == 0.0 and results['prompts'] == 4
  assert (tmp_path / 'chain' / 'preference_report.md').exists()
  assert [r['n'] for r in results['best_of_n']] == [1, 2]
  assert (tmp_path / 'chain' / 'preference_win_rate_kl.png').stat().st_size > 1000
  assert '## Best-of-N' in (tmp_path / 'chain' / 'preference_report.md').read_text()
  again = study.run_study(config, str(tmp_path / 'chain'), log=logs.append)
  assert sum(': finished in ' in line for line in logs) == 4 and again == results
