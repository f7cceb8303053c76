"""Quantization: round-trip error bounds, NF4's code points, int4 packing, the quantized matmul
against the dequantized weight, quantized models against float ones, and the quantize command."""

import functools
import importlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import config as config_lib, evaluate, hf, model, network, objectives, quant, quantize
from gpt_jax import runs, scoring, trainer
from gpt_jax.errors import UserError

# QLoRA (Dettmers et al. 2023), App. E: the NormalFloat4 data type.
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def spec(format, group_size=0, zero_point=False, activations='none', embeddings=False):
  return quant.QuantSpec(format, group_size, zero_point, activations, embeddings)


def kernel(shape=(64, 4, 8), seed=0):
  """A weight with outliers, so scales differ from group to group."""
  w = jax.random.normal(jax.random.key(seed), shape) * 0.05
  return w.at[3, 1, 2].set(0.9).at[40, 0, 5].set(-0.7)


QUANTS = {'int8': spec('int8'), 'int8_g16': spec('int8', 16), 'int4': spec('int4', 16),
          'int4_zero_point': spec('int4', 16, zero_point=True), 'nf4': spec('nf4', 16)}


@pytest.mark.parametrize('name', ['int8', 'int8_g16', 'int4', 'int4_zero_point'])
def test_integer_formats_round_to_within_half_a_step(name):
  w = kernel()
  parts = quant.quantize(w, 1, QUANTS[name])
  s = np.asarray(quant.scales(parts))
  G = s.shape[0]
  error = np.abs(np.asarray(quant.dequantize(parts, QUANTS[name]) - w)).reshape(G, -1, 32)
  assert np.all(error <= 0.5 * s.reshape(G, 1, 32) * (1 + 1e-4))
  w_GgO = np.asarray(w).reshape(G, -1, 32)
  if name.startswith('int8'):
    assert parts['q'].dtype == jnp.int8 and parts['q'].shape == w.shape
    np.testing.assert_allclose(s.reshape(G, 32), np.abs(w_GgO).max(1) / 127.5, rtol=1e-6)
  elif name == 'int4':  # [-8, 7] stored as [0, 15]; the largest |w| is at an end
    np.testing.assert_allclose(s.reshape(G, 32), np.abs(w_GgO).max(1) / 7.5, rtol=1e-6)
    codes = np.asarray(quant.codes(parts))
    assert codes.min() == 0 and codes.max() == 15
  else:  # the group's range, 15 steps wide, holds 0 and is met at both ends
    lo, hi = np.minimum(w_GgO.min(1), 0), np.maximum(w_GgO.max(1), 0)
    np.testing.assert_allclose(s.reshape(G, 32), (hi - lo) / 15, rtol=1e-6)
    assert parts['zero'].dtype == jnp.uint8 and parts['zero'].shape == (4, 4, 8)


def test_nf4_values_are_the_published_code_points_times_the_scales():
  np.testing.assert_array_equal(quant.nf4_code_points(), np.float32(NF4))
  w = kernel()
  parts = quant.quantize(w, 1, QUANTS['nf4'])
  s = np.asarray(quant.scales(parts)).reshape(4, 1, 32)
  codes = np.asarray(quant.codes(parts)).reshape(4, 16, 32)
  dequantized = np.asarray(quant.dequantize(parts, QUANTS['nf4'])).reshape(4, 16, 32)
  np.testing.assert_array_equal(dequantized, np.float32(NF4)[codes] * s)
  # each weight took the code point nearest to it, in units of its group's absmax
  absmax = np.abs(np.asarray(w).reshape(4, 16, 32)).max(1, keepdims=True)
  distances = np.abs(np.asarray(w).reshape(4, 16, 32, 1) / absmax[..., None] - np.float32(NF4))
  assert np.all(np.take_along_axis(distances, codes[..., None], -1)[..., 0]
                <= distances.min(-1) + 1e-6)
  # double quantization: FP8 scales (3 mantissa bits) of the deviations from their mean
  assert parts['scale'].dtype == jnp.float8_e4m3fn and parts['scale_scale'].shape == (1,)
  deviation = np.abs(absmax - absmax.mean()).max()
  assert np.abs(s - absmax).max() <= deviation / 16 + 1e-7


@pytest.mark.parametrize('n', [16, 17, 2, 1])
def test_int4_packing_round_trip(n):
  # row k, column j holds (j + k) % 16: every position, odd or even, takes all 16 codes
  codes = ((np.arange(n)[None] + np.arange(16)[:, None]) % 16).astype(np.uint8)
  packed = quant.pack(jnp.asarray(codes))
  half = (n + 1) // 2
  assert packed.dtype == jnp.uint8 and packed.shape == (16, half)
  np.testing.assert_array_equal(quant.unpack(packed, n), codes)
  high = np.pad(codes[:, half:], ((0, 0), (0, 2 * half - n)))  # see pack: halves per byte
  np.testing.assert_array_equal(packed, codes[:, :half] | (high << 4))


@pytest.mark.parametrize('name', list(QUANTS))
def test_quantized_matmul_equals_the_matmul_with_the_dequantized_weight(name):
  w = kernel((4, 16, 24))  # attention-out-like: two input axes, grouped across both
  parts = quant.quantize(w, 2, QUANTS[name])
  x = jax.random.normal(jax.random.key(1), (3, 5, 4, 16))
  got = quant.matmul(x, parts, 2, QUANTS[name], 'float32')
  want = jnp.einsum('blhe,heo->blo', x, quant.dequantize(parts, QUANTS[name]))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['int8', 'int4', 'int4_zero_point'])
def test_int8_activations_are_close_to_weight_only(name):
  w = kernel()
  weight_only = QUANTS[name]
  integer = spec(weight_only.format, weight_only.group_size, weight_only.zero_point, 'int8')
  parts = quant.quantize(w, 1, weight_only)
  x = jax.random.normal(jax.random.key(1), (6, 64))
  reference = quant.matmul(x, parts, 1, weight_only, 'float32')
  y = quant.matmul(x, parts, 1, integer, 'float32')
  assert float(jnp.abs(y - reference).max()) < 0.01 * float(jnp.abs(reference).max())
  # rows are quantized apart: one row alone (padded to two inside) gives its row of the batch
  np.testing.assert_allclose(quant.matmul(x[2:3], parts, 1, integer, 'float32'), y[2:3],
                             rtol=1e-6)


@functools.cache
def tiny_model(variant: str):
  """(model config, model, parameters, its compiled apply) of a VARIANTS entry."""
  c = config_lib.base_config().model
  c.update(vocab_size=51, n_layer=2, n_head=4, n_kv_head=4, n_embd=32, block_size=32)
  c.update(VARIANTS[variant])  # an odd vocabulary: the packed table has a half-empty byte column
  gpt = network.build(c)
  params = jax.jit(lambda: model.init_params(gpt, jax.random.key(0), 8))()
  return c, gpt, params, jax.jit(gpt.apply)


VARIANTS = {
    'gpt2': {},
    'scan_layers': dict(scan_layers=True),
    'llama_untied': dict(position='rope', norm='rmsnorm', mlp='swiglu', n_kv_head=2,
                         tie_embeddings=False, bias=False),
}
# max |logits − float logits| / max |float logits| (the 'int8' activations add their own error)
MODEL_QUANTS = {'int8': (spec('int8'), 0.01),
                'int4_embeddings': (spec('int4', 16, embeddings=True), 0.15),
                'int4_zero_point_int8': (spec('int4', 16, True, 'int8', True), 0.15),
                'nf4_embeddings': (spec('nf4', 16, embeddings=True), 0.15)}


@pytest.mark.parametrize('variant, name', [
    *[('gpt2', name) for name in MODEL_QUANTS], ('scan_layers', 'int8'),
    ('scan_layers', 'nf4_embeddings'), ('llama_untied', 'int4_embeddings'),
    ('llama_untied', 'int4_zero_point_int8')])
def test_a_quantized_model_is_close_to_its_float_model(variant, name):
  c, gpt, params, apply = tiny_model(variant)
  quant_spec, tolerance = MODEL_QUANTS[name]
  quantized_params = quant.quantize_params(params, c, quant_spec)
  qc = c.copy_and_resolve_references()
  qc.quant.update(format=quant_spec.format, group_size=quant_spec.group_size,
                  zero_point=quant_spec.zero_point, activations=quant_spec.activations,
                  embeddings=quant_spec.embeddings)
  qgpt = network.build(qc)
  declared = jax.eval_shape(lambda: model.init_params(qgpt, jax.random.key(0), 1))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), declared) == jax.tree.map(
      lambda a: (a.shape, a.dtype), quantized_params)
  tokens_BL = jax.random.randint(jax.random.key(1), (2, 12), 0, 51)
  reference = apply({'params': params}, tokens_BL)
  logits = jax.jit(qgpt.apply)({'params': quantized_params}, tokens_BL)
  assert float(jnp.abs(logits - reference).max()) < tolerance * float(jnp.abs(reference).max())
  # weight-only, the quantized model computes the float model of its dequantized weights
  dequantized = quant.dequantize_params(quantized_params, qc)
  if quant_spec.activations == 'none':
    np.testing.assert_allclose(logits, apply({'params': dequantized}, tokens_BL), atol=2e-5)
  np.testing.assert_allclose(network.head_weight(quantized_params, qc),
                             network.head_weight(dequantized, c), rtol=1e-6)


def test_a_group_size_that_does_not_divide_names_the_layer():
  c, _, params, _ = tiny_model('gpt2')
  with pytest.raises(UserError, match=r'group_size=24 does not divide the 32 inputs of layer '
                                      r'h_0/attn/query \(kernel \(32, 4, 8\)\)'):
    quant.quantize_params(params, c, spec('int4', 24))


def test_quantized_models_are_not_trained_in_full():
  c = config_lib.base_config()
  c.model.quant.format = 'int4'
  with pytest.raises(UserError, match="model.quant.format='int4': a quantized model is not "
                                      'trained'):
    trainer.validate_config(c)
  c.init_from = 'DIR'
  with pytest.raises(UserError, match="init_from='DIR' is quantized \\(int4\\); quantized runs "
                                      'are frozen bases for LoRA'):
    objectives.check_trainable_base(c, c.model)
  c.lora.rank = 4
  objectives.check_trainable_base(c, c.model)  # QLoRA


# --- the command ------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def trained(tiny_base):
  """The float run to quantize: conftest's tiny_base (tiny.py on the small corpus), read only."""
  return tiny_base


@pytest.fixture(scope='module')
def int4_run(trained, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('quantized') / 'int4')
  quantize.main([f'--workdir={trained}', f'--out={out}', '--format=int4', '--group_size=32',
                 '--embeddings'])
  return out


def test_the_quantized_run_holds_packed_int4_and_loads(trained, int4_run, capsys):
  run = runs.load(int4_run)
  assert run.config.model.quant.to_dict() == dict(format='int4', group_size=32, zero_point=False,
                                                  embeddings=True, activations='none')
  query = run.params['h_0']['attn']['query']
  assert query['kernel_q'].dtype == jnp.uint8 and query['kernel_q'].shape == (64, 4, 8)
  assert query['kernel_q'].nbytes == 64 * 64 // 2
  assert run.params['wte']['embedding_q'].shape == (64, 256)  # the head's kernel, packed
  float_run = runs.load(trained)
  np.testing.assert_array_equal(
      quant.quantize_params(float_run.params, float_run.config.model,
                            quant.spec(run.config.model))['h_1']['mlp']['fc']['kernel_q'],
      run.params['h_1']['mlp']['fc']['kernel_q'])


def test_a_moved_quantized_run_still_evaluates_with_its_own_tokenizer(int4_run, tmp_path):
  moved = str(tmp_path / 'moved')
  shutil.copytree(int4_run, moved)  # its config.json names the original's tokenizer
  shutil.move(int4_run, str(tmp_path / 'gone'))
  try:
    assert runs.load(moved).config.data.tokenizer == os.path.join(moved, 'tokenizer.model')
    assert len(scoring.val_tokens(runs.load(moved))) > 0
  finally:
    shutil.move(str(tmp_path / 'gone'), int4_run)


def test_hf_export_refuses_quantized_weights(int4_run, tmp_path):
  with pytest.raises(UserError, match=r'holds int4 weights; an HF checkpoint holds float ones'):
    hf.export(int4_run, str(tmp_path / 'hf'))
  assert not os.path.exists(tmp_path / 'hf')


def test_sample_and_evaluate_read_the_quantized_run(trained, int4_run, capsys):
  importlib.import_module('gpt_jax.sample.__main__').main(
      [f'--workdir={int4_run}', '--prompt=KING', '--max_tokens=4', '--temperature=0'])
  assert capsys.readouterr().out.startswith('--- sample 1 ---\nKING')
  loss = lambda workdir: evaluate.run(evaluate.parse_args(
      [f'--workdir={workdir}', '--max_batches=2']), log=lambda *_: None)['lm']['loss']
  assert loss(int4_run) == pytest.approx(loss(trained), rel=0.02)


@pytest.mark.slow
def test_every_format_end_to_end(trained, tmp_path, capsys):
  """int8 within 0.5% of the float run's validation loss, nf4 within 2%; bytes shrink."""
  loss = lambda workdir: evaluate.run(evaluate.parse_args(
      [f'--workdir={workdir}', '--max_batches=2']), log=lambda *_: None)['lm']['loss']
  reference = loss(trained)
  for args, tolerance, smaller in ((['--format=int8'], 0.005, 2.0),
                                   (['--format=int8', '--activations=int8', '--embeddings'], 0.01,
                                    3.2),
                                   (['--format=nf4', '--group_size=32', '--embeddings'], 0.02,
                                    5.5)):
    out = str(tmp_path / args[0][len('--format='):] / str(len(args)))
    quantize.main([f'--workdir={trained}', f'--out={out}', *args])
    printed = capsys.readouterr().out
    device_bytes = printed.split('parameters on the device: ')[1].split(' bytes')[0]
    before, after = (int(n.replace(',', '')) for n in device_bytes.split(' -> '))
    assert before / after > smaller, printed
    assert loss(out) == pytest.approx(reference, rel=tolerance)


def test_bad_inputs_give_one_error_line(trained, int4_run, tmp_path, capsys):
  cases = {
      "argument --format: invalid choice: 'int3'": [f'--workdir={trained}', '--format=int3'],
      'group_size=48 does not divide the 64 inputs of layer h_0/attn/query': [
          f'--workdir={trained}', '--format=int4', '--group_size=48'],
      'is quantized already (int4); quantize the float run': [f'--workdir={int4_run}',
                                                              '--format=int8'],
      'is not a run of this project': [f'--workdir={tmp_path}/missing', '--format=int8'],
      'already exists and is not empty': [f'--workdir={trained}', '--format=int8',
                                          f'--out={int4_run}'],
      '--zero_point is for --format=int4': [f'--workdir={trained}', '--format=nf4',
                                            '--zero_point'],
      'nf4 code points are not integers': [f'--workdir={trained}', '--format=nf4',
                                           '--activations=int8'],
      '--group_size=-1 must be >= 0': [f'--workdir={trained}', '--format=int4',
                                       '--group_size=-1'],
  }
  out = tmp_path / 'out'
  for expected, argv in cases.items():
    argv = argv if any(a.startswith('--out=') for a in argv) else argv + [f'--out={out}']
    with pytest.raises(SystemExit) as exit_info:
      quantize.main(argv)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, (expected, stderr)
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith('error: '), stderr
    assert expected in stderr, stderr
    assert not out.exists()  # nothing half-written


@pytest.mark.slow
def test_bench_quant_measures_each_format_of_a_run(trained, tmp_path, capsys):
  from gpt_jax import bench_quant
  out = str(tmp_path / 'bench' / 'quant.json')  # a directory that does not exist yet
  bench_quant.main([f'--workdir={trained}', '--formats=fp32,int8,nf4', '--group_size=32',
                    '--activations=none,int8', '--batch_sizes=1', '--prompt_len=4',
                    '--new_tokens=4', '--repeats=1', '--max_batches=1', f'--json={out}'])
  with open(out) as f:
    rows = {row['weights']: row for row in json.load(f)}
  assert list(rows) == ['fp32', 'int8', 'int8, int8 activations', 'nf4 g32']  # no nf4 × int8
  assert rows['int8']['device_bytes'] < rows['fp32']['device_bytes'] / 2  # the embedding stays
  assert rows['int8']['val_bpb'] == pytest.approx(rows['fp32']['val_bpb'], rel=0.01)
  assert '| nf4 g32 |' in capsys.readouterr().out
  with pytest.raises(UserError, match=r"--formats='int3': give a comma-separated list of fp32"):
    bench_quant.parse_args([f'--workdir={trained}', '--formats=int3'])
