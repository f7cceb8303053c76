"""Training a student against a frozen teacher run (config.distill)."""

import os

import jax
import numpy as np
import pytest

from conftest import ROOT, TINY, directory_digest, read_metrics, run_main
from gpt_jax import cli, network, optim, runs, sharding, trainer
from gpt_jax.objectives import distill
from gpt_jax.tokenizer import Tokenizer


def quiet(_):
  pass


@pytest.fixture
def teacher_dir(tiny_base):
  """The teacher: conftest's tiny_base, which is tiny.py on the small corpus; read only."""
  return tiny_base


@pytest.fixture
def student(small_corpus, teacher_dir):
  config = cli.load_experiment(TINY)
  config.data.corpus, config.sample.num = small_corpus, 0
  config.distill.teacher = teacher_dir
  return config


def test_alpha_zero_trains_exactly_like_no_teacher(student, tmp_path):
  student.distill.alpha = 0.0
  trainer.train(student, str(tmp_path / 'distilled'), log=quiet)
  student.distill.teacher = ''
  trainer.train(student, str(tmp_path / 'plain'), log=quiet)
  distilled = read_metrics(tmp_path / 'distilled', timing=True)
  plain = read_metrics(tmp_path / 'plain', timing=True)
  assert [d['step'] for d in distilled] == [p['step'] for p in plain]
  for d, p in zip(distilled, plain):
    for key in ('train_loss', 'grad_norm', 'val_loss'):
      if key in p:
        assert d[key] == pytest.approx(p[key], rel=1e-6), (p['step'], key)
  assert all(d['kl'] > 0 for d in distilled) and all('kl' not in p for p in plain)


def test_a_smaller_student_learns_from_the_teacher_which_stays_untouched(student, teacher_dir,
                                                                          tmp_path):
  before = directory_digest(teacher_dir)
  student.model.update(n_embd=32, n_head=2, n_kv_head=2)
  student.distill.update(alpha=0.5, temperature=2.0)
  final = trainer.train(student, str(tmp_path / 'student'), log=quiet)
  records = read_metrics(tmp_path / 'student', timing=True)
  assert records[-1]['kl'] < records[0]['kl']  # the student moves towards the teacher
  assert final['val_loss'] < np.log(512)
  assert directory_digest(teacher_dir) == before


def test_student_equal_to_teacher_starts_with_zero_kl(student):
  """Same config and seed: the student's initial parameters are the teacher's at init, so the
  first step's KL against a teacher holding those parameters is zero."""
  gpt, tx = network.build(student.model), optim.optimizer(student.optim, student.steps)
  objective = distill.Distillation(student, None, gpt, teacher=gpt)
  state = jax.jit(lambda: trainer.new_state(objective, tx, student))()
  teacher_params = jax.tree.map(jax.numpy.copy, state.params)
  saved = jax.tree.map(np.array, teacher_params)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (8, 33), 0, 512)
  step = jax.jit(trainer.make_train_step(objective, tx, student), donate_argnums=0)
  _, metrics = step(state, {'tokens': tokens}, teacher_params)
  assert abs(float(metrics['kl'])) < 1e-6 and float(metrics['train_loss']) > 5
  assert float(metrics['grad_norm']) > 0  # the student got a gradient (from its CE term)
  for before, after in zip(jax.tree.leaves(saved), jax.tree.leaves(teacher_params)):
    np.testing.assert_array_equal(before, after)  # the teacher's parameters stayed as they were


def test_teacher_is_loaded_sharded_like_the_student(student):
  mesh = sharding.make_mesh(student.mesh)
  tokenizer = Tokenizer.load(os.path.join(student.distill.teacher, 'tokenizer.model'))
  teacher = runs.load_compatible(student.distill.teacher, 'distill.teacher', student, tokenizer,
                                 mesh=mesh)
  leaf = teacher.params['h_0']['mlp']['fc']['kernel']
  assert leaf.shape == (64, 256) and leaf.sharding.mesh.shape == mesh.shape


@pytest.mark.parametrize('make_args, message', [
    (lambda teacher, corpus: [f'--config.distill.teacher={teacher}_missing'],
     'is not a run of this project (no config.json)'),
    (lambda teacher, corpus: [f'--config.distill.teacher={teacher}',
                              '--config.model.vocab_size=600'],
     'used another tokenizer than this run'),
    (lambda teacher, corpus: [f'--config.distill.teacher={teacher}', '--config.distill.alpha=1.5'],
     'distill.alpha=1.5'),
])
def test_bad_teacher_is_one_line(make_args, message, teacher_dir, small_corpus, tmp_path):
  result = run_main(f'--config={TINY}', f'--config.data.corpus={small_corpus}',
                   *make_args(teacher_dir, small_corpus), f'--workdir={tmp_path / "student"}')
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
  assert not os.path.exists(tmp_path / 'student')


@pytest.mark.slow
def test_study_trains_three_runs_and_reports_them(small_corpus, tmp_path):
  from gpt_jax import distill_study
  config = cli.load_experiment(os.path.join(ROOT, 'experiments', 'distill.py'))
  config.data.corpus = small_corpus
  config.update(steps=20, batch_size=8, seq_len=32, eval_every=10, log_every=10, eval_batches=2,
                checkpoint_every=10)
  config.model.update(vocab_size=512, n_embd=32, block_size=32)
  config.study.update(teacher_steps=30)
  config.study.teacher_model.update(n_layer=2, n_embd=64)
  logs = []
  final = distill_study.run_study(config, str(tmp_path), log=logs.append)
  assert list(final) == ['teacher', 'student from scratch', 'distilled student']
  assert 'kl' in final['distilled student'] and 'kl' not in final['student from scratch']
  report = (tmp_path / 'distill_report.md').read_text()
  assert report.count('| student from scratch |') == report.count('| distilled student |') == 1
  assert f"{final['distilled student']['val_loss']:.4f}" in report
  assert os.path.getsize(tmp_path / 'distill_curves.png') > 1000
  # The same students against the teacher just trained, reused by path.
  config.distill.teacher = str(tmp_path / 'teacher')
  again = distill_study.run_study(config, str(tmp_path), log=logs.append)
  assert any('[1/3] teacher: reusing' in line for line in logs)
  assert again == final
