"""FLOP counts: Chinchilla's Appendix F reproduces the paper's Table A4; MFU peaks."""

import io

import jax
import pytest

from gpt_jax import config, flops


@pytest.mark.parametrize('n_layer, d_model, ffw, n_head, head_size, ratio', [
    (10, 640, 2560, 10, 64, 1.03),  # 73M
    (20, 1024, 4096, 16, 64, 1.10),  # 305M
    (24, 1280, 5120, 10, 128, 1.08),  # 552M
    (26, 1792, 7168, 14, 128, 1.04),  # 1.1B
    (28, 2048, 8192, 16, 128, 1.03),  # 1.6B
    (40, 3584, 14336, 28, 128, 0.99),  # 6.8B
])
def test_chinchilla_table_a4_ratios(n_layer, d_model, ffw, n_head, head_size, ratio):
  """Table A4: the Appendix F count over 6ND at seq 2048, vocab 32000, where N counts the
  attention and MLP weights, Gopher's relative-position matrix (d × heads·head size) per layer
  and one vocab × d matrix, and the count leaves out embeddings and final logits."""
  model = config.base_config().model
  model.update(n_layer=n_layer, n_embd=d_model, d_ff=ffw, n_head=n_head, n_kv_head=n_head,
               head_dim=head_size, vocab_size=32000, mlp='gelu')
  inner = n_head * head_size
  n = n_layer * (4 * d_model * inner + 2 * d_model * ffw + d_model * inner) + 32000 * d_model
  counted = flops.chinchilla_flops_per_sequence(model, 2048, embeddings=False)
  assert round(counted / (6 * n * 2048), 2) == ratio


def test_chinchilla_count_adds_embeddings_and_logits():
  model = config.base_config().model
  without = flops.chinchilla_flops_per_sequence(model, 256, embeddings=False)
  with_all = flops.chinchilla_flops_per_sequence(model, 256)
  assert with_all - without == 3 * 4 * 256 * model.vocab_size * model.n_embd


def test_six_n_d_is_close_to_the_exact_count_for_a_large_model():
  """At GPT-3 XL's shape, the terms 6N leaves out are a few percent of the exact count."""
  model = config.base_config().model
  model.update(n_layer=24, n_embd=2048, n_head=16, n_kv_head=16, vocab_size=50304,
               block_size=2048)
  exact = flops.chinchilla_flops_per_sequence(model, 2048)
  approx = 2048 * flops.flops_per_token(model, 2048)
  assert 0.9 < approx / exact < 1.1


def test_accelerator_peaks_are_looked_up_by_device_kind():
  class Device:
    platform = 'gpu'
    device_kind = 'NVIDIA H100 80GB HBM3'
  assert flops.device_peak_flops(Device()) == 989e12
  Device.platform, Device.device_kind = 'tpu', 'TPU v5 lite'
  assert flops.device_peak_flops(Device()) == 197e12
  Device.device_kind = 'TPU v5p'
  assert flops.device_peak_flops(Device()) == 459e12


ZEN3 = '''processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse2 avx avx2 fma
'''
ZEN5 = ZEN3.replace('cpu family\t: 25', 'cpu family\t: 26').replace(
    'avx2 fma', 'avx2 fma avx512f avx512_bf16')


def test_the_cached_cpu_peak_is_keyed_on_the_cpu_not_its_marketing_name(tmp_path, monkeypatch):
  """Zen 3 and Zen 5 both call themselves 'AMD EPYC' (~180 vs ~420 GFLOP/s float32): a home
  directory shared between them must not reuse one's peak for the other."""
  real_open = open
  cpuinfo = {}
  monkeypatch.setattr('builtins.open', lambda path, *a, **k: io.StringIO(cpuinfo['text'])
                      if path == '/proc/cpuinfo' else real_open(path, *a, **k))
  monkeypatch.setenv('GPT_JAX_CACHE', str(tmp_path))
  measured = iter([180e9, 420e9])
  monkeypatch.setattr(flops, 'measure_cpu_peak', lambda: next(measured))
  peaks = []
  for text in (ZEN3, ZEN5, ZEN3):
    cpuinfo['text'] = text
    flops.device_peak_flops.cache_clear()
    peaks.append(flops.device_peak_flops(jax.devices('cpu')[0]))
  assert peaks == [180e9, 420e9, 180e9]  # each measured once, then read from the shared cache
  assert 'cpu family 25' in flops.cpu_key() and 'avx512f' not in flops.cpu_key()
  flops.device_peak_flops.cache_clear()
