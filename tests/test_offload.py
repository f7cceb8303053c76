"""FlexGen's policy search: the linear program against the cost model it optimises."""

import itertools
import os
import re

import numpy as np
import pytest

from gpt_jax import config as config_lib
from gpt_jax.errors import UserError
from gpt_jax.offload import policy as policy_lib

GIB = 2**30


def gpt2_xl_workload(**bytes_per_value):
  m = config_lib.base_config().model
  m.update(n_layer=48, n_embd=1600, n_head=25, n_kv_head=25, vocab_size=50304, block_size=1024)
  return policy_lib.Workload.of(m, prompt_len=512, gen_len=32, **bytes_per_value)


def t4(device_gib=16.0, host_gib=208.0, disk_gib=1500.0):
  """The paper's machine, roughly: a T4 (65 TFLOP/s fp16, 300 GB/s), a host of 1 TFLOP/s and
  100 GB/s, PCIe 3 ×16, an NVMe disk."""
  return policy_lib.Hardware(device_gib * GIB, host_gib * GIB, disk_gib * GIB, 65e12, 1e12,
                             300e9, 100e9, 12e9, 12e9, 2e9, 1.5e9)


def evaluate(w, hw, x, batch_size, num_batches, on_host):
  """(throughput, fits) of fractions x (9 values) under the cost model, computed directly."""
  bls = batch_size * num_batches
  value = lambda terms: terms.get(None, 0.0) + sum(v * x[k] for k, v in terms.items()
                                                   if k is not None)
  times = [max(value(s) for s in policy_lib._streams(w, hw, bls, prefill, on_host))
           for prefill in (True, False)]
  memory = policy_lib._memory(w, batch_size, bls, on_host)
  fits = all(value(c) + k <= cap * (1 + 1e-9) for (c, k), cap in
             zip(memory, (hw.device_memory, hw.host_memory, hw.disk_memory)))
  return bls * w.gen_len / (w.n_layer * (times[0] + (w.gen_len - 1) * times[1])), fits


@pytest.mark.parametrize('device_gib, on_host', [(1.0, False), (1.0, True), (4.0, False)])
def test_the_linear_program_beats_every_grid_point_and_keeps_its_budgets(device_gib, on_host):
  w, hw = gpt2_xl_workload(), t4(device_gib, host_gib=1.0)  # 3 GiB of weights: all tiers used
  best = policy_lib.solve(w, hw, 8, 4, on_host)
  x = np.array([*best.weights, *best.cache, *best.activations])
  throughput, fits = evaluate(w, hw, x, 8, 4, on_host)
  assert fits and throughput == pytest.approx(best.tokens_per_s, rel=1e-6)
  np.testing.assert_allclose([sum(best.weights), sum(best.cache), sum(best.activations)], 1.0)
  steps = 4
  splits = [np.array([a, b, steps - a - b]) / steps
            for a, b in itertools.product(range(steps + 1), repeat=2) if a + b <= steps]
  grid_best = max((t for t, ok in (evaluate(w, hw, np.concatenate(f), 8, 4, on_host)
                                   for f in itertools.product(splits, repeat=3)) if ok),
                  default=0.0)
  assert best.tokens_per_s >= grid_best * (1 - 1e-9)
  if device_gib == 1.0:
    assert best.weights[2] > 0.3  # 2 GiB of device and host memory cannot hold 3 GiB of weights


def test_a_model_that_fits_runs_a_large_block_at_least_as_fast_as_all_on_the_device():
  """Decoding a batch of 1 reads every weight for one token (memory-bound), so the search grows
  the block; whatever it places off the device, it is no slower than keeping everything there."""
  w, hw = gpt2_xl_workload(), t4(device_gib=80.0)
  best = policy_lib.search(w, hw)
  assert best.block_size >= 64
  on_device = np.array([1, 0, 0] * 3, float)
  rate, fits = evaluate(w, hw, on_device, best.batch_size, best.num_batches,
                        best.attention_on_host)
  assert best.tokens_per_s >= rate * (1 - 1e-9) or not fits
  assert best.tokens_per_s > 5 * policy_lib.solve(w, hw, 1, 1, False).tokens_per_s


def test_offloaded_weights_are_shared_by_a_bigger_block():
  """The zig-zag schedule's point: with the weights streamed, more batches per block amortise
  each load, so throughput grows with the block until compute or memory binds."""
  w, hw = gpt2_xl_workload(), t4(device_gib=2.0)
  rates = [policy_lib.solve(w, hw, 4, count, False).tokens_per_s for count in (1, 2, 4, 8)]
  assert rates == sorted(rates) and rates[-1] > 2 * rates[0]
  assert policy_lib.search(w, hw).block_size > 4


def test_delegation_is_chosen_for_a_host_cache_unless_its_overhead_outweighs_it():
  """FlexGen's CPU delegation pays on the T4 with the cache on the host (the cache stays off
  PCIe); the executor's measured cost of a delegated call (its extra launches and moves) is
  charged per batch of the layers attended on the host, so a costly one is not chosen."""
  import dataclasses
  w, hw = gpt2_xl_workload(), t4(device_gib=2.0)
  assert policy_lib.search(w, hw).attention_on_host
  costly = dataclasses.replace(hw, delegation_overhead=0.1)
  assert not policy_lib.search(w, costly).attention_on_host
  assert (policy_lib.solve(w, costly, 4, 8, True).tokens_per_s
          < policy_lib.solve(w, hw, 4, 8, True).tokens_per_s / 10)


def test_converting_a_layer_for_compute_counts_once_per_layer_and_step():
  import dataclasses
  w, hw = gpt2_xl_workload(), t4(device_gib=80.0)
  slow = policy_lib.solve(w, dataclasses.replace(hw, convert_s=0.5), 4, 8, False)
  assert slow.decode_s >= 0.5 and slow.prefill_s >= 0.5  # however large the block
  assert slow.tokens_per_s <= 32 * w.gen_len / (w.n_layer * w.gen_len * 0.5)


def test_four_bit_weights_and_cache_are_faster_when_offloaded():
  hw = t4(device_gib=2.0)
  plain = policy_lib.search(gpt2_xl_workload(), hw)
  packed = policy_lib.search(gpt2_xl_workload(weight_bytes=0.5 + 4 / 64, cache_bytes=0.5 + 4 / 64),
                             hw)
  assert packed.tokens_per_s > plain.tokens_per_s


def test_a_policy_reads_as_one_line():
  p = policy_lib.Policy(8, 4, (0.25, 0.75, 0.0), (0.0, 0.5, 0.5), (1.0, 0.0, 0.0), True, 0.5,
                        0.01, 123.4)
  assert p.block_size == 32
  assert p.describe() == ('blocks of 4 batches × 8 sequences; weights 25/75/0, cache 0/50/50, '
                          'activations 100/0/0 % on device/host/disk; attention over the host '
                          'cache on the host; predicted 123 tokens/s')


def test_a_budget_too_small_for_one_layer_is_one_line_naming_the_least_that_fits():
  w = gpt2_xl_workload()
  with pytest.raises(UserError, match=r'^no policy fits: a block of one sequence needs at least '
                     r'416\.2 MiB on the device .* raise the device budget \(now 100\.0 MiB\)'):
    policy_lib.search(w, t4(device_gib=100 / 1024))
  least = 416.2 / 1024 + 1e-4  # GiB: the figure named is the real threshold (batches of 1)
  assert policy_lib.search(w, t4(device_gib=least)).batch_size == 1
  with pytest.raises(UserError):
    policy_lib.search(w, t4(device_gib=least - 1 / 1024))


# --- the disk tier ----------------------------------------------------------------------------


def _o_direct_works(folder) -> bool:
  """Whether this filesystem reads a file with O_DIRECT (tmpfs, for one, refuses)."""
  import mmap
  import os
  probe = os.path.join(folder, 'probe')
  with open(probe, 'wb') as f:
    f.write(bytes(4096))
  try:
    fd = os.open(probe, os.O_RDONLY | os.O_DIRECT)
    try:
      return os.readv(fd, [mmap.mmap(-1, 4096)]) == 4096
    finally:
      os.close(fd)
  except OSError:
    return False


@pytest.mark.parametrize('direct', [True, False])
def test_disk_groups_round_trip_and_are_read_from_disk(tmp_path, monkeypatch, direct):
  from gpt_jax.offload import disk
  if not direct:  # a filesystem without O_DIRECT: read, then drop the cached pages
    monkeypatch.delattr(disk.os, 'O_DIRECT', raising=False)
  rng = np.random.default_rng(0)
  layer = {'kernel': rng.normal(size=(64, 3, 5)).astype(np.float32),
           'scale': rng.normal(size=(7,)).astype(np.float16),
           'q': rng.integers(-8, 8, size=(5000,), dtype=np.int8)}
  store = disk.DiskStore(str(tmp_path / 'disk'))
  size = store.write('h_0', layer)
  assert size == 4 * disk.ALIGN  # each array at a block boundary: 3840, 14 and 5000 bytes
  again = disk.DiskStore(str(tmp_path / 'disk'))  # the index is on disk too
  got = again.read('h_0')
  assert again.direct is (direct and _o_direct_works(tmp_path))
  for name, array in layer.items():
    assert got[name].dtype == array.dtype
    np.testing.assert_array_equal(got[name], array)
  assert again.bytes_read == size and 'h_0' in again and 'h_1' not in again


def test_a_disk_directory_that_cannot_be_written_is_one_line(tmp_path):
  from gpt_jax.offload import disk
  (tmp_path / 'file').write_text('x')
  with pytest.raises(UserError, match=r'^cannot make the disk directory .*file/d'):
    disk.DiskStore(str(tmp_path / 'file' / 'd'))


def test_a_full_disk_is_one_line_and_leaves_the_old_group(tmp_path, monkeypatch):
  import builtins
  import errno
  from gpt_jax.offload import disk
  store = disk.DiskStore(str(tmp_path))
  store.write('h_0', {'w': np.arange(10, dtype=np.float32)})
  real_open = builtins.open

  def full(path, mode='r', *args, **kwargs):
    if 'w' in mode and str(path).endswith('.bin'):
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_open(path, mode, *args, **kwargs)

  monkeypatch.setattr(builtins, 'open', full)
  with pytest.raises(UserError, match=r'^cannot write .*h_0\.bin \(No space left on device\); '
                                      'free disk space or pass another disk directory$'):
    store.write('h_0', {'w': np.zeros(10, np.float32)})
  monkeypatch.undo()
  np.testing.assert_array_equal(disk.DiskStore(str(tmp_path)).read('h_0')['w'], np.arange(10))


def test_the_measured_hardware_has_every_rate_and_leaves_the_disk_as_it_was(tmp_path):
  from gpt_jax.offload import disk, hardware
  store = disk.DiskStore(str(tmp_path))
  store.write('kept', {'w': np.ones(3, np.float32)})
  hw = hardware.measure(1e9, 2e9, 3e9, str(tmp_path), nbytes=1 << 20, repeats=1)
  assert (hw.device_memory, hw.host_memory, hw.disk_memory) == (1e9, 2e9, 3e9)
  rates = [hw.device_flops, hw.host_flops, hw.device_bandwidth, hw.host_bandwidth,
           hw.host_to_device, hw.device_to_host, hw.disk_to_host, hw.host_to_disk]
  assert all(np.isfinite(r) and r > 1e6 for r in rates), rates
  assert sorted(os.listdir(tmp_path)) == ['index.json', 'kept.bin']
  assert list(disk.DiskStore(str(tmp_path)).index) == ['kept']
  # The measured machine goes straight into the policy search.
  w = gpt2_xl_workload()
  assert policy_lib.search(w, hardware.measure(8 * GIB, 8 * GIB, 64 * GIB, str(tmp_path),
                                               nbytes=1 << 20, repeats=1)).tokens_per_s > 0


# --- the zig-zag schedule and the generate command --------------------------------------------


def _random_gpt(**options):
  """A tiny GPT with weights large enough that greedy decoding wanders over the vocabulary."""
  import jax
  from gpt_jax import model, network
  m = config_lib.base_config().model
  m.update({**dict(vocab_size=64, n_layer=4, n_head=2, n_kv_head=1, n_embd=32, block_size=64,
                  init_std=0.3), **options})
  gpt = network.build(m)
  return gpt, jax.jit(model.init_params, static_argnums=(0, 2))(gpt, jax.random.key(1), 8)


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11], [12, 13, 14, 15], [3, 3]]


@pytest.mark.parametrize('options', [dict(), dict(position='rope', norm='rmsnorm', mlp='swiglu',
                                                  scan_layers=True)])
def test_zigzag_greedy_tokens_are_sample_s_with_every_tier_used(tmp_path, options):
  from gpt_jax import sample
  from gpt_jax.offload import disk, tiers, zigzag
  gpt, params = _random_gpt(**options)
  want = sample.generate(gpt, params, PROMPTS, max_new_tokens=7)
  assert len({tuple(row) for row in want}) > 3  # the tokens vary: the test can fail
  store = disk.DiskStore(str(tmp_path))
  weights, cache = (0.25, 0.25, 0.5), (0.25, 0.5, 0.25)
  assert tiers.layer_tiers(weights, 4) == ['device', 'host', 'disk', 'disk']
  assert tiers.layer_tiers(cache, 4) == ['device', 'host', 'host', 'disk']
  off = zigzag.Offloaded.place(gpt, zigzag.resident_params(params),
                               lambda j: zigzag.layer_params(params, gpt.config, j), weights,
                               store)
  for attention_on_host in (False, True):  # FlexGen's CPU delegation for the host and disk
    blocks = list(zigzag.generate_blocks(off, cache, PROMPTS, batch_size=2, num_batches=2,
                                         max_new_tokens=7, store=store,
                                         attention_on_host=attention_on_host))
    assert [len(b) for b in blocks] == [4, 2]  # the last block is not full
    assert [row for block in blocks for row in block] == want
  assert store.bytes_read > 0 and 'weights_3' in store and 'cache_3_1' in store


def test_sampled_tokens_do_not_depend_on_the_block_shape():
  from gpt_jax.offload import zigzag
  gpt, params = _random_gpt()
  off = zigzag.Offloaded.place(gpt, zigzag.resident_params(params),
                               lambda j: zigzag.layer_params(params, gpt.config, j),
                               (0.5, 0.5, 0.0), None)
  draw = lambda bs, nb, prompts, first_row=0: [
      row for block in zigzag.generate_blocks(
          off, (0.5, 0.5, 0.0), prompts, batch_size=bs, num_batches=nb, max_new_tokens=6,
          temperature=1.0, seed=3, first_row=first_row) for row in block]
  whole = draw(2, 1, PROMPTS)
  assert draw(2, 3, PROMPTS) == whole
  assert draw(2, 1, PROMPTS[2:], first_row=2) == whole[2:]  # a resumed run
  assert draw(2, 3, PROMPTS, first_row=1) != whole  # the keys are the rows'


def _generate(*args):
  from conftest import run_main
  return run_main(*args, module='gpt_jax.generate')


def test_generate_writes_sample_s_greedy_completions_and_resumes(tiny_base, tmp_path):
  import json
  from gpt_jax import runs, sample
  texts = ['ROMEO:', 'To be, or not', 'The king', 'What is', 'O', 'Enter']
  prompts = tmp_path / 'prompts.jsonl'
  prompts.write_text(''.join(json.dumps({'prompt': t, 'id': i}) + '\n'
                             for i, t in enumerate(texts)))
  out = tmp_path / 'out.jsonl'
  args = ('--workdir', tiny_base, '--prompts', prompts, '--out', out, '--max_tokens', 5,
          '--disk_dir', tmp_path / 'disk', '--device_gib', 0.01, '--host_gib', 0.01,
          '--policy', '2,3,0,50,0,50')
  result = _generate(*args)
  assert result.returncode == 0, result.stderr
  assert ('policy: blocks of 3 batches × 2 sequences; weights 0/50/50, cache 0/50/50'
          in result.stdout)
  run = runs.load(tiny_base)
  want = sample.complete(run.gpt, run.params, run.tokenizer, texts, max_new_tokens=5)
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert records == [{'prompt': t, 'id': i, 'completion': w[len(t):]}
                     for i, (t, w) in enumerate(zip(texts, want))]
  assert os.listdir(tmp_path / 'disk') == []  # the tier's files are gone
  whole = out.read_bytes()
  lines = whole.split(b'\n')
  out.write_bytes(b'\n'.join(lines[:4]) + b'\n' + lines[4][:9])  # killed mid-line
  result = _generate(*args[:-2], '--policy', 'auto')
  assert result.returncode == 0, result.stderr
  assert out.read_bytes() == whole


def test_generate_s_bad_inputs_are_one_line_before_any_work(tiny_base, tmp_path):
  prompts = tmp_path / 'prompts.jsonl'
  common = ('--workdir', tiny_base, '--prompts', prompts, '--out', tmp_path / 'out.jsonl')
  cases = [
      ('{"prompt": "a"}\n{"text": "b"}\n', (), r'line 2 has no "prompt" string'),
      ('{"prompt": "a"}\nnot json\n', (), r'line 2 is not JSON'),
      ('{"prompt": "a"}\n{"prompt": "' + 'word ' * 400 + '"}\n', ('--max_tokens', 8),
       r'^error: --prompts=.* line 2: the prompt is \d+ tokens, the model\'s context 64, with '
       r'no room for new tokens; shorten it'),
      ('{"prompt": "a"}\n', ('--max_tokens', 63),
       r'^error: --prompts=.* line 1: the prompt is 2 tokens; with --max_tokens=63 that '
       r'exceeds the model\'s context of 64'),
      ('{"prompt": "a"}\n', ('--out', tmp_path / 'missing' / 'o.jsonl'),
       r'the folder .*missing does not exist; make it or pass another --out'),
      ('{"prompt": "a"}\n', ('--out', tmp_path), r'is a folder; pass a file path'),
      ('{"prompt": "a"}\n', ('--out', prompts), r'line 1 has no "completion": it is not this '
       r'command\'s output; pass a new --out'),
      ('{"prompt": "a"}\n', ('--disk_dir', tmp_path / 'prompts.jsonl' / 'd'),
       r'^error: cannot make the disk directory'),
      ('{"prompt": "a"}\n', ('--policy', '2,x'), r'--policy=\'2,x\' is not a list of numbers'),
      ('{"prompt": "a"}\n', ('--policy', '2,2,50'),
       r'--policy=\'2,2,50\' has 3 numbers, not 2 or 6'),
      ('{"prompt": "a"}\n', ('--policy', '1,1,90,20,0,0'), r'percentages must be >= 0 and sum'),
      ('{"prompt": "a"}\n', ('--device_gib', 1e-6, '--host_gib', 1e-6, '--max_tokens', 5),
       r'^error: no policy fits: .* raise the device budget'),
  ]
  for text, extra, message in cases:
    prompts.write_text(text)
    result = _generate(*common, *extra)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(message, result.stderr), (message, result.stderr)
    assert not (tmp_path / 'out.jsonl').exists()


def test_a_disk_folder_that_refuses_a_subfolder_is_one_line(tiny_base, tmp_path, monkeypatch):
  from gpt_jax import generate

  def refuse(**_):
    raise PermissionError(1, 'Operation not permitted')
  monkeypatch.setattr(generate.tempfile, 'mkdtemp', refuse)
  prompts = tmp_path / 'prompts.jsonl'
  prompts.write_text('{"prompt": "a"}\n')
  result = _generate('--workdir', tiny_base, '--prompts', prompts, '--out', tmp_path / 'o.jsonl',
                     '--disk_dir', tmp_path / 'disk')
  assert result.returncode == 2 and result.stderr.strip().splitlines() == [
      f'error: cannot make a folder in --disk_dir={tmp_path / "disk"} (Operation not permitted); '
      'pass a folder this user can write'], result.stderr


def test_tiers_left_by_killed_runs_are_removed_and_live_ones_kept(tmp_path):
  from gpt_jax import generate
  names = ['gpt_jax_offload_999999999_ab', f'gpt_jax_offload_{os.getpid()}_cd', 'mine']
  for name in names:
    (tmp_path / name).mkdir()
    (tmp_path / name / 'cache_0_0.bin').write_bytes(b'x')
  generate.remove_stale_tiers(str(tmp_path))  # no process has a pid above Linux's 2**22
  assert sorted(os.listdir(tmp_path)) == sorted(names[1:])


def test_four_bit_cache_round_trips_within_half_a_step_and_exactly_on_its_grid():
  import jax.numpy as jnp
  from gpt_jax.offload import compression
  codec = compression.CacheCodec(group=8)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 2, 8)).astype(np.float32)
  x[0, 0] = 1.5  # a constant group: its min, exactly
  parts = codec.compress(jnp.asarray(x))
  assert parts['codes'].shape == (2, 3, 8) and parts['codes'].dtype == np.uint8
  assert parts['min'].shape == parts['scale'].shape == (2, 3, 2)
  back = np.asarray(codec.decompress(parts, 2, jnp.float32))
  scale = np.asarray(parts['scale'], np.float32).repeat(8, axis=-1).reshape(x.shape)
  # Half a step of the bfloat16 scale, plus the bfloat16 rounding of the min (2^-8 relative).
  assert np.all(np.abs(back - x) <= scale / 2 + np.abs(x) * 2**-7 + 1e-6)
  np.testing.assert_array_equal(back[0, 0], 1.5)
  grid = (-1.0 + 0.25 * rng.integers(0, 16, size=(2, 3, 2, 8))).astype(np.float32)
  grid[..., 0], grid[..., 1] = -1.0, -1.0 + 0.25 * 15  # every group spans the whole grid
  np.testing.assert_array_equal(codec.decompress(codec.compress(jnp.asarray(grid)), 2,
                                                 jnp.float32), grid)


def test_a_four_bit_cache_decodes_alike_on_every_tier_and_near_the_float_one(tmp_path):
  from gpt_jax.offload import compression, disk, zigzag
  gpt, params = _random_gpt()
  store = disk.DiskStore(str(tmp_path))
  off = zigzag.Offloaded.place(gpt, zigzag.resident_params(params),
                               lambda j: zigzag.layer_params(params, gpt.config, j),
                               (1.0, 0.0, 0.0), store)
  decode = lambda cache, codec, on_host=False: [row for block in zigzag.generate_blocks(
      off, cache, PROMPTS, batch_size=2, num_batches=3, max_new_tokens=7, store=store,
      codec=codec, attention_on_host=on_host) for row in block]
  codec = compression.CacheCodec(group=16)
  on_device = decode((1.0, 0.0, 0.0), codec)
  assert decode((0.25, 0.5, 0.25), codec) == on_device  # the same numbers wherever they are
  assert decode((0.25, 0.5, 0.25), codec, on_host=True) == on_device  # and attended wherever
  exact = decode((1.0, 0.0, 0.0), None)
  matches = np.mean([a == b for x, y in zip(on_device, exact) for a, b in zip(x, y)])
  assert 0.5 < matches < 1.0 or on_device == exact, matches


def test_generate_with_four_bit_weights_and_cache(tiny_base, tmp_path):
  import json
  prompts = tmp_path / 'prompts.jsonl'
  prompts.write_text('{"prompt": "ROMEO:"}\n{"prompt": "The king"}\n{"prompt": "O"}\n')
  out = tmp_path / 'out.jsonl'
  result = _generate('--workdir', tiny_base, '--prompts', prompts, '--out', out,
                     '--max_tokens', 4, '--compress_weights', '--compress_cache')
  assert result.returncode == 0, result.stderr
  assert [json.loads(line)['prompt'] for line in out.read_text().splitlines()] == [
      'ROMEO:', 'The king', 'O']


def test_scored_continuations_are_the_full_forward_s_log_likelihoods(tmp_path):
  import jax
  from gpt_jax.offload import disk, zigzag
  gpt, params = _random_gpt()
  prompts = PROMPTS[:5]
  continuations = [[5, 6, 7], [1, 1, 2], [63, 0, 9], [8, 8, 8], [2, 4, 6]]
  store = disk.DiskStore(str(tmp_path))
  off = zigzag.Offloaded.place(gpt, zigzag.resident_params(params),
                               lambda j: zigzag.layer_params(params, gpt.config, j),
                               (0.25, 0.25, 0.5), store)
  got = [x for block in zigzag.score_blocks(off, (0.5, 0.0, 0.5), prompts, continuations,
                                            batch_size=2, num_batches=2, store=store)
         for x in block]
  for prompt, continuation, log_likelihood in zip(prompts, continuations, got):
    tokens = np.array([prompt + continuation])
    log_p = jax.nn.log_softmax(gpt.apply({'params': params}, tokens)[0].astype(np.float32))
    want = sum(float(log_p[len(prompt) - 1 + t, token]) for t, token in enumerate(continuation))
    assert log_likelihood == pytest.approx(want, abs=1e-4)


def test_bench_generate_rows_count_every_token(tmp_path, monkeypatch):
  from gpt_jax import bench_generate
  monkeypatch.setitem(bench_generate.SHAPES, 'tiny', (2, 64, 2))
  args = bench_generate.parse_args(['--shape=tiny', f'--disk_dir={tmp_path}', '--rows=c,e',
                                    '--prompt_len=4', '--gen_len=3', '--num_prompts=4',
                                    '--device_gib=0.1', '--host_gib=0.01'])
  for row in ('c', 'e'):
    args.row = row
    result = bench_generate.run_row(args)
    assert result['tokens'] == 12 and result['tokens_per_s'] > 0, result
    assert result['peak_rss_gib'] > result['runtime_gib'] > 0
    assert result['policy'].startswith({'c': 'blocks of ', 'e': 'one batch of 4'}[row])
  with pytest.raises(UserError, match=r'--rows=a,x must name some of a,b,c,d,e'):
    bench_generate.parse_args(['--disk_dir=d', '--rows=a,x'])


def test_the_compute_bound_is_the_matmuls_flops_over_the_peak():
  from gpt_jax import bench_generate
  # GPT-2 124M: 85,056,000 weights in its blocks, a 50,304 × 768 head; 32 + 16 − 1 positions
  # through the blocks, 16 through the head, at 1 TFLOP/s.
  flops = 2 * 85_056_000 * 47 + 2 * 50_304 * 768 * 16
  bound = bench_generate.compute_bound(bench_generate.model_config('gpt2'), 32, 16, 1e12)
  assert bound == pytest.approx(16 * 1e12 / flops, rel=1e-12)


def test_a_run_read_a_layer_at_a_time_is_the_run_loaded_whole(tiny_base):
  import jax
  from gpt_jax import runs
  reader, run = runs.layer_reader(tiny_base), runs.load(tiny_base)
  assert reader.step == run.step and reader.config.model == run.config.model
  parts = {**reader.resident, **{f'h_{j}': reader.layer(j)
                                 for j in range(run.config.model.n_layer)}}
  assert jax.tree.structure(parts) == jax.tree.structure(run.params)
  for got, want in zip(jax.tree.leaves(parts), jax.tree.leaves(run.params)):
    np.testing.assert_array_equal(got, want)


def test_a_quantized_model_decodes_as_sample_decodes_it():
  from gpt_jax import network, quant, sample
  from gpt_jax.offload import zigzag
  gpt, params = _random_gpt(n_embd=64)
  spec = quant.QuantSpec('int8', 32, False, 'none', True)  # the token table quantized too
  m = gpt.config.as_configdict()
  m.quant.update(format='int8', group_size=32, embeddings=True)
  gpt_q = network.build(m)
  params_q = quant.quantize_params(params, gpt.config.as_configdict(), spec)
  want = sample.generate(gpt_q, params_q, PROMPTS, max_new_tokens=5)
  off = zigzag.Offloaded.place(gpt_q, zigzag.resident_params(params_q),
                               lambda j: zigzag.layer_params(params_q, m, j), (0.5, 0.5, 0.0),
                               None)
  got = [row for block in zigzag.generate_blocks(off, (1.0, 0.0, 0.0), PROMPTS, batch_size=3,
                                                 num_batches=2, max_new_tokens=5)
         for row in block]
  assert got == want


def test_the_workload_counts_bytes_per_parameter_as_stored():
  from gpt_jax.offload import compression, zigzag
  gpt, params = _random_gpt(n_embd=64)
  m = gpt.config.as_configdict()
  layer = zigzag.layer_params(params, m, 0)
  assert zigzag.workload(m, 8, 4, layer).weight_bytes == 4.0  # float32
  packed = compression.quantize_layer(layer, m)  # two 4-bit codes a byte, a scale per 64
  w = zigzag.workload(compression.quantized_config(m), 8, 4, packed, compression.cache_codec(m))
  assert 0.5 < w.weight_bytes < 0.7 and w.cache_bytes == 0.5 + 4 / 32  # K·E = 32: groups of 32
