"""The ablation study at equal wall time and the speedrun experiment it runs on."""

import os

import pytest

from conftest import ROOT, TINY, read_metrics
from gpt_jax import ablation_study, cli, runs, trainer
from gpt_jax.errors import UserError

SPEEDRUN = os.path.join(ROOT, 'experiments', 'speedrun.py')


def test_speedrun_is_the_demo_with_the_recipe_and_a_budget():
  recipe, baseline = (cli.load_experiment(SPEEDRUN + suffix) for suffix in ('', ':baseline'))
  demo = cli.load_experiment(os.path.join(ROOT, 'experiments', 'shakespeare.py'))
  assert baseline.model == demo.model and baseline.optim == demo.optim
  assert baseline.time_budget_s == recipe.time_budget_s == 300
  assert (recipe.optim.name, recipe.model.mlp, recipe.model.qk_norm) == ('muon', 'relu2', True)
  study = cli.load_experiment(SPEEDRUN + ':ablation')
  variants = ablation_study.variants(study)
  assert variants['baseline'].to_dict() == baseline.to_dict()
  assert variants['all'].to_dict() == recipe.to_dict()
  assert list(variants)[1] == '+ Muon' and variants['+ Muon'].optim.name == 'muon'
  with pytest.raises(UserError, match='unknown; use no suffix, :baseline or :ablation'):
    cli.load_experiment(SPEEDRUN + ':fast')


def test_the_study_trains_each_variant_for_its_budget_and_reports_it(small_corpus, tmp_path,
                                                                     monkeypatch):
  config = cli.load_experiment(TINY)
  config.data.corpus = small_corpus
  config.sample.num = 0
  config.ablation = {'budgets': (2.0,), 'changes': (('lr 3e-3', {'optim': {'lr': 3e-3}}),
                                                    ('ReLU²', {'model': {'mlp': 'relu2'}}))}
  # 4 steps/s, so 8 steps each: the rate is the machine's, the study's arithmetic is tested here.
  monkeypatch.setattr(trainer, 'measure_step_seconds', lambda *args: 0.25)
  logs = []
  results = ablation_study.run_study(config, str(tmp_path), log=logs.append)[2.0]
  assert list(results) == ['baseline', '+ lr 3e-3', '+ ReLU²', 'all']
  for name, slug in [('baseline', 'baseline'), ('+ ReLU²', 'relu'), ('all', 'all')]:
    workdir = str(tmp_path / '2s' / slug)
    assert read_metrics(workdir)[-1]['val_bpb'] == results[name]['val_bpb']
    assert runs.read_config(workdir).steps == 8
  assert (runs.read_config(str(tmp_path / '2s' / 'all')).optim.lr,
          runs.read_config(str(tmp_path / '2s' / 'all')).model.mlp) == (3e-3, 'relu2')
  report = (tmp_path / 'ablation_report.md').read_text()
  base = results['baseline']['val_bpb']
  row = (f"| + ReLU² | {results['+ ReLU²']['val_bpb']:.4f} (8) | "
         f"{100 * (results['+ ReLU²']['val_bpb'] / base - 1):+.1f}% |")
  assert row in report and f'| baseline | {base:.4f} (8) | +0.0% |' in report
  assert results['+ ReLU²']['val_bpb'] != base
  # Run again: every run is finished, so nothing trains and the figures are the same.
  monkeypatch.setattr(trainer, 'measure_step_seconds', lambda *args: 1 / 0)
  assert ablation_study.run_study(config, str(tmp_path), log=logs.append)[2.0] == results


def test_a_change_of_a_key_the_config_lacks_is_one_line():
  config = cli.load_experiment(SPEEDRUN + ':ablation')
  config.ablation.changes = (('typo', {'optim': {'nmae': 'muon'}}),)
  with pytest.raises(UserError, match="ablation change 'typo' sets 'optim.nmae', which is not a "
                                      'config key'):
    ablation_study.variants(config)
