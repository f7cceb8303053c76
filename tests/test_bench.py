"""The benchmark: its report on the tiny model is complete and its figures add up."""

import json

import pytest

from gpt_jax import bench


def test_bench_tiny_report_is_consistent(tmp_path, capsys):
  path = tmp_path / 'bench.json'
  bench.main(['bench', '--config=experiments/tiny.py', '--config.model.n_layer=1', '--steps=2',
              '--warmup=1', f'--json={path}'])
  report = json.loads(path.read_text())
  assert 'tokens/s' in capsys.readouterr().out
  (result,) = report['results']
  assert result['n_layer'] == 1 and report['tokens_per_step'] == 8 * 32
  j = result['jax']
  assert len(j['step_s']) == 2 and j['step_s_min'] <= j['step_s_median'] <= j['step_s_max']
  assert j['compile_s'] > 0 and j['compiled_bytes'] > 0 and j['peak_rss_bytes'] > 0
  assert j['tokens_per_sec'] == pytest.approx(report['tokens_per_step'] / j['step_s_median'])
  assert j['model_flops_per_sec'] == pytest.approx(result['flops_per_token'] * j['tokens_per_sec'])
  assert j['mfu'] == pytest.approx(j['model_flops_per_sec'] / report['peak_flops'])


def test_sizes_sweep_sets_heads():
  assert bench.parse_sizes('4x256,6x384') == [(4, 256), (6, 384)]


@pytest.mark.parametrize('args, message', [
    (['--sizes=4by256'], "'4by256' is not N_LAYERxN_EMBD"),
    (['--sizes=2x100'], 'multiple of 64'),
    (['--steps=0'], '--steps=0 must be >= 1'),
])
def test_bad_input_is_one_line(args, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    bench.main(['bench', '--config=experiments/tiny.py', *args])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and message in err and '\n' not in err
