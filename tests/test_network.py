"""The network composed with its weight transforms (gpt_jax.network) declares the parameter trees
and computes the logits that the code before the transforms left the model wrote and read.

tests/data/runs_e9a033e holds what gpt_jax at commit e9a033e (the model importing lora and quant)
wrote: param_trees.json, the shape, dtype and logical axes of every parameter and a sha256 of
their initial values, of 24 models (GPT-2 style, LLaMA style, LLaMA with scanned layers; float,
int8 with int8 activations and embeddings, int4 with zero points and embeddings, nf4; without
and with LoRA on every layer); five run directories (a float run of parameters alone from 4 steps of
experiments/tiny.py at n_embd=16, n_head=2, its int8 and nf4 quantizations by gpt_jax.quantize,
a LoRA run on the float one and a QLoRA run on the nf4 one, 2 steps each, rank 2, all layers);
and logits.npz, the logits each run gave on fixed tokens (LoRA runs merged and unmerged).
"""

import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import ROOT
from flax import traverse_util

from gpt_jax import config as config_lib, lora, model, network, runs

DATA = os.path.join(ROOT, 'tests', 'data', 'runs_e9a033e')
STYLES = {'gpt2': {},
          'llama': dict(position='rope', norm='rmsnorm', mlp='swiglu', bias=False,
                        tie_embeddings=False, n_kv_head=2),
          'llama_scan': dict(position='rope', norm='rmsnorm', mlp='swiglu', bias=False,
                             tie_embeddings=False, n_kv_head=2, scan_layers=True)}
QUANT = {'float': {}, 'int8': dict(format='int8', activations='int8', embeddings=True),
         'int4': dict(format='int4', group_size=16, zero_point=True, embeddings=True),
         'nf4': dict(format='nf4', group_size=16)}


def _read_trees() -> dict:
  with open(os.path.join(DATA, 'param_trees.json')) as f:
    return json.load(f)


@pytest.mark.parametrize('name', sorted(_read_trees()))
def test_parameter_tree_equals_the_one_written_before(name):
  style, quant, lora_rank = name.split('/')
  c = config_lib.base_config()
  c.model.update(vocab_size=64, n_layer=2, n_head=4, n_kv_head=4, n_embd=32, block_size=16)
  c.model.update(**STYLES[style])
  c.model.quant.update(**QUANT[quant])
  c.lora.update(rank=int(lora_rank.removeprefix('lora')), targets='all')
  gpt = network.build(c.model, c.lora)
  shapes = jax.eval_shape(lambda: model.init_params(gpt, jax.random.key(0), 8))
  axes = traverse_util.flatten_dict(model.logical_axes(gpt, 8))
  tree = {'/'.join(path): [list(leaf.shape), str(leaf.dtype), str(tuple(axes[path]))]
          for path, leaf in sorted(traverse_util.flatten_dict(shapes).items())}
  expected = _read_trees()[name]
  assert tree == expected['params']
  if lora_rank == 'lora0':
    return  # its initial values are those of the model with LoRA (below) less the adapters
  params = traverse_util.flatten_dict(model.init_params(gpt, jax.random.key(0), 8))
  digest = hashlib.sha256()
  for path, leaf in sorted(params.items()):
    digest.update('/'.join(path).encode() + np.asarray(leaf).tobytes())
  assert digest.hexdigest() == expected['init_sha256']


@pytest.fixture(scope='module')
def old_runs(tmp_path_factory) -> str:
  """A copy of the run directories, each LoRA run's lora.json naming its base's copy."""
  root = str(tmp_path_factory.mktemp('runs_e9a033e'))
  for name in ('float', 'int8', 'nf4', 'lora', 'qlora'):
    shutil.copytree(os.path.join(DATA, name), os.path.join(root, name))
  for name, base in (('lora', 'float'), ('qlora', 'nf4')):
    path = os.path.join(root, name, lora.BASE_FILE)
    with open(path) as f:
      record = json.load(f)
    with open(path, 'w') as f:
      json.dump({**record, 'base': os.path.join(root, base)}, f)
  return root


@pytest.mark.parametrize('name', ['float', 'int8', 'nf4', 'lora', 'lora_unmerged', 'qlora',
                                  'qlora_unmerged'])
def test_a_run_written_before_gives_the_same_logits(old_runs, name):
  golden = np.load(os.path.join(DATA, 'logits.npz'))
  run = runs.load(os.path.join(old_runs, name.removesuffix('_unmerged')),
                  merge=not name.endswith('_unmerged'), log=lambda _: None)
  logits = run.gpt.apply({'params': run.params}, golden['tokens'])
  np.testing.assert_array_equal(np.asarray(logits), golden[name])
