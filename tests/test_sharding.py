"""Sharding over a device mesh and multi-host training, on CPU devices.

Each check runs in a fresh process with XLA_FLAGS=--xla_force_host_platform_device_count=N (the
device count is fixed when JAX starts); this test process itself has one device.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT, TINY, read_metrics, run_cli
from gpt_jax import cli, sharding
from gpt_jax.errors import UserError



def run_python(code: str, devices: int) -> dict:
  """Runs `code` with `devices` CPU devices; it prints one JSON object, which is returned."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  result = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def assert_metrics_close(a, b, rtol):
  assert [r['step'] for r in a] == [r['step'] for r in b]
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      assert x[key] == pytest.approx(y[key], rel=rtol), (x['step'], key)


@pytest.mark.slow
def test_strategies_match_one_device_and_split_the_parameter_bytes():
  """Data, FSDP, tensor parallel and a 2×2×2 mix: 3 steps give the losses and parameters of one
  device. Float sums in another order differ in the last bits, so 1e-5 relative."""
  result = run_python('''
    import json
    import jax, jax.numpy as jnp, numpy as np
    from gpt_jax import config, optim, sharding, trainer
    from gpt_jax.objectives import lm
    c = config.base_config()
    c.seq_len, c.batch_size, c.steps_per_call = 16, 8, 1
    c.model.update(vocab_size=256, n_layer=2, n_embd=64, n_head=8, n_kv_head=8, block_size=16)
    objective, tx = lm.LanguageModeling.without_data(c), optim.optimizer(c.optim, 10)
    batches = np.random.RandomState(0).randint(0, 256, (3, 8, 17)).astype(np.int32)

    def run(mesh):
      abstract = trainer.abstract(objective, tx, c, mesh)
      shardings = jax.tree.map(lambda a: a.sharding, abstract)
      state = jax.jit(lambda: trainer.new_state(objective, tx, c), out_shardings=shardings)()
      steps, _ = trainer.compile_steps(objective, tx, c, mesh, abstract, log=lambda _: None)
      stacked = trainer.stacked_batch_shardings(objective, mesh)['tokens']
      losses = []
      for tokens in batches:  # one step per call (steps_per_call = 1)
        global_tokens = jax.make_array_from_process_local_data(stacked, tokens[None])
        state, m = steps(state, {'tokens': global_tokens}, np.int32(1))
        losses.append(float(m['train_loss'][0]))
      device0 = mesh.devices.flat[0]
      held = sum(s.data.nbytes for leaf in jax.tree.leaves(state.params)
                 for s in leaf.addressable_shards if s.device == device0)
      computed = sharding.bytes_per_device(abstract.params, shardings.params)
      return losses, [np.asarray(p).tolist() for p in jax.tree.leaves(state.params)], held, computed

    auto = (jax.sharding.AxisType.Auto,) * 3
    out = {'one': run(jax.make_mesh((1, 1, 1), sharding.MESH_AXES, devices=jax.devices()[:1],
                                    axis_types=auto))}
    for name, sizes in {'data': (8, 1, 1), 'fsdp': (1, 8, 1), 'tensor': (1, 1, 8),
                        'mix': (2, 2, 2)}.items():
      out[name] = run(jax.make_mesh(sizes, sharding.MESH_AXES, axis_types=auto))
    print(json.dumps(out))
  ''', devices=8)
  losses1, params1, total_bytes, _ = result['one']
  for name in ('data', 'fsdp', 'tensor', 'mix'):
    losses, params, held, computed = result[name]
    np.testing.assert_allclose(losses, losses1, rtol=1e-5)
    for p, p1 in zip(params, params1):
      np.testing.assert_allclose(p, p1, rtol=1e-4, atol=1e-6)
    assert held == computed, name  # the memory report's arithmetic is what devices really hold
  assert result['data'][2] == total_bytes  # data parallel: every device holds everything
  assert result['fsdp'][2] < total_bytes / 7  # all but a few tiny vectors split 8 ways
  assert result['tensor'][2] < total_bytes / 2  # heads, MLP and vocab split; norms whole
  assert result['mix'][2] < total_bytes / 3


@pytest.mark.slow
def test_checkpoint_saved_on_8_devices_resumes_on_1_and_4(small_corpus, tmp_path):
  args = [f'--config={TINY}', f'--config.data.corpus={small_corpus}', '--config.sample.num=0']
  saved = str(tmp_path / 'on8')
  result = run_cli(*args, f'--workdir={saved}', '--config.mesh.data=2', '--config.mesh.fsdp=2',
                   '--config.mesh.tensor=2', devices=8, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  for devices, mesh in ((1, []), (4, ['--config.mesh.data=2', '--config.mesh.tensor=2'])):
    resumed = str(tmp_path / f'on{devices}')
    shutil.copytree(saved, resumed)
    shutil.rmtree(os.path.join(resumed, 'checkpoints', '20'))  # continue from step 10
    result = run_cli(*args, f'--workdir={resumed}', *mesh, devices=devices, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'resuming from step 10' in result.stdout
    assert_metrics_close(read_metrics(resumed), read_metrics(saved), rtol=1e-5)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(small_corpus, tiny_base, tmp_path):
  """Two processes on localhost (jax.distributed, CPU collectives), each with its own share of
  the data, log the metrics of a single process: tiny_base, these settings on one device."""
  args = [f'--config={TINY}', f'--config.data.corpus={small_corpus}', '--config.sample.num=0']
  multi, port = str(tmp_path / 'multi'), free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  procs = [subprocess.Popen([sys.executable, '-m', 'gpt_jax.train', *args, f'--workdir={multi}',
                             f'--coordinator_address=localhost:{port}', '--num_processes=2',
                             f'--process_id={i}'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
  assert_metrics_close(read_metrics(multi), read_metrics(tiny_base), rtol=1e-5)
  assert sorted(os.listdir(os.path.join(multi, 'checkpoints', '20', 'data'))) == [
      'commit_success.txt', 'process_0-of-2.json', 'process_1-of-2.json']


@pytest.mark.parametrize('overrides, message', [
    (['--config.mesh.data=3'], 'mesh data=3, fsdp=1, tensor=1 has 3 devices but there are 8'),
    (['--config.mesh.tensor=8'], 'model.n_head=4 is not divisible by mesh.tensor=8'),
    (['--config.mesh.tensor=2', '--config.model.n_kv_head=1'],
     'model.n_kv_head=1 is not divisible by mesh.tensor=2'),
    (['--config.batch_size=4'], 'do not split over mesh data × fsdp = 8 devices'),
    (['--config.mesh.data=-1', '--config.mesh.fsdp=-1'], 'at most one -1'),
])
@pytest.mark.slow
def test_bad_mesh_is_one_line(overrides, message, small_corpus, tmp_path):
  result = run_cli(f'--config={TINY}', f'--config.data.corpus={small_corpus}', *overrides,
                   f'--workdir={tmp_path / "run"}', devices=8, timeout=600)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_mesh_shape_fills_in_the_rest():
  config = cli.load_experiment(TINY)
  config.mesh.update(data=-1, fsdp=2, tensor=2)
  assert sharding.mesh_shape(config.mesh, 8) == (2, 2, 2)
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  assert sharding.mesh_shape(config.mesh, 8) == (1, 8, 1)
  config.mesh.update(data=-1, fsdp=3, tensor=1)
  with pytest.raises(UserError, match='8 devices do not divide by 3'):
    sharding.mesh_shape(config.mesh, 8)


@pytest.mark.slow
def test_a_model_that_cannot_fit_is_refused_before_compiling():
  from gpt_jax import optim, trainer
  from gpt_jax.objectives import lm
  config = cli.load_experiment(os.path.join(ROOT, 'experiments', 'gpt3.py:13b'))
  config.mesh.update(data=1, fsdp=1, tensor=1)
  objective = lm.LanguageModeling.without_data(config)
  tx = optim.optimizer(config.optim, config.steps)
  mesh = sharding.make_mesh(config.mesh)
  abstract = trainer.abstract(objective, tx, config, mesh)
  with pytest.raises(UserError, match=r'parameters \(47\.88 GiB\) and optimizer state '
                                      r'\(95\.77 GiB\) per device exceed'):
    trainer.compile_steps(objective, tx, config, mesh, abstract, log=lambda _: None)
