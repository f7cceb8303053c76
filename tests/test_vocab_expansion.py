"""Vocabulary expansion (Swallow): the extended run keeps every old row bit for bit, gives the
base's logits on old pieces at step 0, starts new rows as the mean of their parts, and continues
pretraining through init_from."""

import glob
import os
import re
import sysconfig

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, TINY, run_main
from gpt_jax import cli, corpus, domain_study, expand_vocab, runs, tokenizer_extension, trainer
from gpt_jax.errors import UserError

PIECES = 40  # 512 + 40 ids: the model vocabulary rounds up to 576


@pytest.fixture(scope='module')
def code_corpus(tmp_path_factory) -> str:
  """Six of Python's standard library modules as .txt files: a domain Shakespeare lacks."""
  directory = tmp_path_factory.mktemp('code')
  paths = sorted(glob.glob(os.path.join(sysconfig.get_paths()['stdlib'], '*.py')))[:6]
  for path in paths:
    (directory / (os.path.basename(path) + '.txt')).write_text(
        open(path, encoding='utf-8').read(), encoding='utf-8')
  return str(directory)


@pytest.fixture(scope='module')
def expanded(tiny_base, code_corpus, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('expanded') / 'run')
  expand_vocab.expand(expand_vocab.parse_args([
      f'--base={tiny_base}', f'--corpus={code_corpus}', f'--pieces={PIECES}', f'--out={out}']),
      log=lambda _: None)
  return runs.load(tiny_base), runs.load(out), out


def test_old_rows_are_kept_and_new_rows_are_the_mean_of_their_parts(expanded, code_corpus):
  base, ext, _ = expanded
  old = np.asarray(base.params['wte']['embedding'])
  new = np.asarray(ext.params['wte']['embedding'])
  assert (ext.tokenizer.vocab_size, ext.config.model.vocab_size, new.shape[0]) == (
      512 + PIECES, 576, 576)
  np.testing.assert_array_equal(new[:512], old)
  texts = [doc.text for doc in corpus.load_documents(code_corpus)[0]]
  extension = tokenizer_extension.extend(base.tokenizer, texts, PIECES)  # deterministic
  assert extension.tokenizer.sha256 == ext.tokenizer.sha256
  parts = extension.parts
  for i, ids in enumerate(parts):
    assert len(ids) >= 1
    np.testing.assert_allclose(new[512 + i], old[ids].mean(0), rtol=1e-6, atol=1e-7)
  assert not new[512 + PIECES:].any()  # padding ids: never tokens


def test_step_0_gives_the_bases_logits_on_text_of_old_pieces(expanded):
  base, ext, _ = expanded
  tokens = jnp.asarray([[base.tokenizer.eos_id, *base.tokenizer.encode('KING HENRY. My lord.')]])
  old = np.asarray(base.gpt.apply({'params': base.params}, tokens))
  new = np.asarray(ext.gpt.apply({'params': ext.params}, tokens))
  assert new.shape[-1] == 576
  np.testing.assert_allclose(new[..., :512], old, rtol=1e-6, atol=1e-6)


def test_random_rows_are_the_models_init(tiny_base, code_corpus, tmp_path):
  out = str(tmp_path / 'random')
  expand_vocab.expand(expand_vocab.parse_args([
      f'--base={tiny_base}', f'--corpus={code_corpus}', '--pieces=32', f'--out={out}',
      '--init=random', '--vocab_size=600']), log=lambda _: None)
  ext = runs.load(out)
  rows = np.asarray(ext.params['wte']['embedding'])
  assert rows.shape[0] == 600
  assert np.std(rows[512:544]) == pytest.approx(ext.config.model.init_std, rel=0.15)


@pytest.mark.parametrize('args, message', [
    (['--pieces=0'], '--pieces=0: the pieces to add must be >= 1'),
    (['--pieces=40', '--vocab_size=520'], '--vocab_size=520 would overflow: the extended '
     'tokenizer has 552 ids'),
    (['--pieces=8', '--init=zero'], "argument --init: invalid choice: 'zero'"),
])
def test_bad_input_is_one_line(tiny_base, code_corpus, tmp_path, args, message):
  out = run_main(f'--base={tiny_base}', f'--corpus={code_corpus}', f'--out={tmp_path / "x"}',
                 *args, module='gpt_jax.expand_vocab')
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr
  assert not os.path.exists(tmp_path / 'x')


def continued(ext, out: str, code_corpus: str, steps: int):
  """The tiny config continuing the extended run `out` on the code for `steps` steps."""
  config = cli.load_experiment(TINY)
  config.update(init_from=out, steps=steps, eval_every=steps, checkpoint_every=steps,
                log_every=steps)
  config.data.update(corpus=code_corpus, tokenizer=os.path.join(out, 'tokenizer.model'),
                     val_fraction=0.34)
  config.model.vocab_size = ext.config.model.vocab_size
  config.sample.num = 0
  return config


def test_corpus_errors_name_this_commands_flags(tiny_base, tmp_path):
  (tmp_path / 'short').mkdir()
  (tmp_path / 'short' / 'a.txt').write_text('def f(): pass\n')
  (tmp_path / 'blank').mkdir()
  (tmp_path / 'blank' / 'a.txt').write_text('\n')
  cases = (('short', 'cleaning removed every one of its 1 documents (quality 1); pass other text, '
                     'or pass --no-clean to learn from it as it is'),
           ('blank', 'point --corpus at files with text'))
  for corpus_dir, message in cases:
    with pytest.raises(UserError, match=re.escape(message)):
      expand_vocab.expand(expand_vocab.parse_args([
          f'--base={tiny_base}', f'--corpus={tmp_path / corpus_dir}', '--pieces=8',
          f'--out={tmp_path / "x"}']), log=lambda _: None)


@pytest.mark.slow
def test_continued_pretraining_starts_from_the_extended_run(expanded, code_corpus, tmp_path):
  _, ext, out = expanded
  config = continued(ext, out, code_corpus, steps=4)
  final = trainer.train(config, str(tmp_path / 'continued'), log=lambda _: None)
  assert np.isfinite(final['val_loss'])
  trained = runs.load(str(tmp_path / 'continued'))
  assert not np.array_equal(np.asarray(trained.params['wte']['embedding'])[512:512 + PIECES],
                            np.asarray(ext.params['wte']['embedding'])[512:512 + PIECES])


@pytest.mark.slow
def test_the_domain_study_trains_and_measures_every_run(tiny_base, code_corpus, tmp_path):
  config = cli.load_experiment(os.path.join(ROOT, 'experiments', 'swallow.py'))
  config.update(init_from=tiny_base, steps=2, batch_size=8, seq_len=32, eval_every=2,
                checkpoint_every=2, log_every=2, eval_batches=1)
  config.data.update(corpus=code_corpus, val_fraction=0.34)
  config.domain.update(pieces=32, time_budget_s=1.0)
  results = domain_study.run_study(config, str(tmp_path / 'study'), log=lambda _: None)
  measured = results['runs']
  assert len(measured) == 8 and all(m['steps'] >= 1 for m in measured.values())
  assert all(m['steps'] == 2 for k, m in measured.items() if k.endswith('| steps'))
  base, mean = measured['base tokenizer | steps'], measured['extended, mean | steps']
  assert mean['tokens_per_byte'] < base['tokens_per_byte']
  assert all(0 < m['domain_bpb'] < 10 and 0 < m['base_bpb'] < 10 for m in measured.values())
  report = (tmp_path / 'study' / 'domain_report.md').read_text()
  assert '| extended, random | equal time |' in report


@pytest.mark.slow
def test_lora_on_the_extended_run_trains_its_new_rows_and_freezes_the_old(expanded, code_corpus,
                                                                          tmp_path):
  _, ext, out = expanded
  config = continued(ext, out, code_corpus, steps=3)
  config.lora.update(rank=2, targets='query')
  lines = []
  trainer.train(config, str(tmp_path / 'lora'), log=lines.append)
  assert any('token ids 512..575 train in full' in line for line in lines), lines
  assert runs.read_config(str(tmp_path / 'lora')).lora.trainable_tokens_from == 512
  merged = np.asarray(runs.load(str(tmp_path / 'lora')).params['wte']['embedding'])
  before = np.asarray(ext.params['wte']['embedding'])
  np.testing.assert_array_equal(merged[:512], before[:512])
  assert not np.array_equal(merged[512:512 + PIECES], before[512:512 + PIECES])
