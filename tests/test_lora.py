"""LoRA (gpt_jax.lora, objectives.lora): the adapted model starts as its base, merged equals
unmerged, a step trains the adapters alone with every objective, a LoRA run's checkpoints, its
base's fingerprint, `lora merge`, and the figures for GPT-2 124M."""

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import checkpoint, cli, hf, instructions, lora, model, network, objectives, optim
from gpt_jax import quant, quantize, runs, sharding, task_inputs, trainer
from gpt_jax.errors import UserError
from gpt_jax.lora.__main__ import merge_run
from gpt_jax.objectives import classify, lm, reward, sft
from gpt_jax.objectives.lora import LoraTuning
from test_classify import EXAMPLES, objective_for
from test_sft import write_tasks
from conftest import ROOT, TINY, read_metrics, run_cli
from test_ppo import tiny_ppo_config
from test_sharding import run_python


def quiet(_):
  pass


def tiny(**lora_settings):
  config = cli.load_experiment(TINY)
  config.lora.update(dict(rank=4, alpha=8.0) | lora_settings)
  return config


def adapted_lm(config):
  """(objective, base parameters): LoRA on a language model with random base parameters."""
  base = model.init_params(network.build(config.model), jax.random.PRNGKey(1), config.seq_len)
  return LoraTuning.wrap(lm.LanguageModeling.without_data(config), base), base


def tokens(rows=2, length=32):
  return jax.random.randint(jax.random.PRNGKey(2), (rows, length), 0, 512)


def paths(tree) -> list[str]:
  return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


# --- the adapted model ----------------------------------------------------------------------------


def test_adapters_start_at_zero_so_the_adapted_model_is_its_base_bit_for_bit():
  config = tiny(targets='query,value')
  objective, base = adapted_lm(config)
  params = objective.init_params(jax.random.PRNGKey(0))
  assert sorted(paths(params)) == sorted(f"['h_{i}']['attn']['{layer}']['{name}']" for i in (0, 1)
                                         for layer in ('query', 'value') for name in lora.ADAPTERS)
  query = params['h_0']['attn']['query']
  assert query['lora_a'].shape == (64, 4) and query['lora_b'].shape == (4, 4, 16)
  assert float(jnp.abs(query['lora_a']).max()) > 0 and not jnp.any(query['lora_b'])
  adapted = objective.gpt.apply({'params': objective.combine(params, base)}, tokens())
  plain = network.build(config.model).apply({'params': base}, tokens())
  np.testing.assert_array_equal(adapted, plain)


def with_random_b(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jax.random.normal(jax.random.PRNGKey(3), x.shape) * 0.1
      if path[-1].key == 'lora_b' else x, params)


@pytest.mark.parametrize('mlp, targets', [('gelu', 'all'), ('swiglu', 'key,out,up')])
def test_merged_gives_the_logits_of_unmerged(mlp, targets):
  config = tiny(targets=targets)
  config.model.mlp = mlp
  objective, base = adapted_lm(config)
  params = objective.combine(with_random_b(objective.init_params(jax.random.PRNGKey(0))), base)
  unmerged = objective.gpt.apply({'params': params}, tokens())
  merged_params = lora.merge(params, config.lora)
  assert jax.tree.structure(merged_params) == jax.tree.structure(base)
  plain = network.build(config.model).apply
  merged = plain({'params': merged_params}, tokens())
  assert float(jnp.abs(unmerged - plain({'params': base}, tokens())).max()) > 0.1  # they matter
  np.testing.assert_allclose(merged, unmerged, atol=1e-5)


def test_scanned_layers_merge_layer_by_layer():
  """model.scan_layers stacks each parameter over a leading 'layers' axis: merging the stack is
  merging each layer."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  layer = lambda: {'out': {'kernel': normal(4, 3, 8), 'lora_a': normal(4, 3, 2),
                           'lora_b': normal(2, 8)}}
  layers = [layer() for _ in range(3)]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *layers)
  config = tiny(rank=2)
  merged = lora.merge(stacked, config.lora)['out']['kernel']
  for i, one in enumerate(layers):
    np.testing.assert_allclose(merged[i], lora.merge(one, config.lora)['out']['kernel'], atol=1e-6)
  a, b = layers[0]['out']['lora_a'], layers[0]['out']['lora_b']
  np.testing.assert_allclose(lora.merge(layers[0], config.lora)['out']['kernel'],
                             layers[0]['out']['kernel'] + 8.0 / 2 * np.einsum('hei,io->heo', a, b),
                             atol=1e-5)


@pytest.mark.parametrize('tie', [True, False])
def test_trainable_tokens_start_as_the_base_rows_train_and_merge_into_them(tie):
  """lora.trainable_tokens_from=F: rows F.. of the token table (columns of an untied head) are
  trained in full: start_from copies the base's, a step moves them and the adapters, and merging
  writes them into the table, rows 0..F-1 bit for bit the base's."""
  config = tiny(targets='query', trainable_tokens_from=500)
  config.model.tie_embeddings = tie
  objective, base = adapted_lm(config)
  params = objective.start_from(objective.init_params(jax.random.PRNGKey(0)), None, quiet)
  table = ('wte', 'embedding') if tie else ('lm_head', 'kernel')
  expected = [table] if tie else [('wte', 'embedding'), table]
  tokens_of = lambda tree, path: tree[path[0]][lora.TRAINABLE_TOKENS]
  for path in expected:
    base_rows = base[path[0]][path[1]]
    np.testing.assert_array_equal(tokens_of(params, path),
                                  base_rows[500:] if path[1] == 'embedding' else base_rows[:, 500:])
  plain = network.build(config.model).apply
  adapted = objective.gpt.apply({'params': objective.combine(params, base)}, tokens())
  np.testing.assert_allclose(adapted, plain({'params': base}, tokens()), rtol=1e-6, atol=1e-6)

  batch = {'tokens': jnp.concatenate([tokens(8, 33)[:, :30], jnp.full((8, 3), 505)], axis=1)}
  objective.start_from = lambda params, mesh, log: params  # train() starts from init_params
  before, state = train(objective, batch)
  for path in expected:
    assert not np.array_equal(tokens_of(before[0], path), tokens_of(state.params, path)), path
  merged = lora.merge(objective.combine(state.params, base), config.lora)
  assert jax.tree.structure(merged) == jax.tree.structure(base)
  np.testing.assert_array_equal(merged['wte']['embedding'][:500], base['wte']['embedding'][:500])
  np.testing.assert_array_equal(merged['wte']['embedding'][500:],
                                state.params['wte'][lora.TRAINABLE_TOKENS])
  unmerged = objective.gpt.apply({'params': objective.combine(state.params, base)}, tokens())
  np.testing.assert_allclose(plain({'params': merged}, tokens()), unmerged, atol=1e-5)


# --- a train step -------------------------------------------------------------------------------


def train(objective, batch, steps=2):
  """(trained params, frozen tree) as numpy before, and the state after `steps` steps."""
  config = objective.config
  tx = optim.optimizer(config.optim, 10)
  state = jax.jit(lambda: trainer.new_state(objective, tx, config))()
  before = jax.tree.map(np.array, (state.params, objective.frozen))
  step = jax.jit(trainer.make_train_step(objective, tx, config))
  for _ in range(steps):
    state, metrics = step(state, batch, objective.frozen)
    assert np.isfinite(float(metrics['loss']))
  return before, state


def assert_only_trained_moved(objective, before, state, beside_model=()):
  """The base is bit-identical; the trained tree is the adapters (and the `beside_model` parts)
  and every adapter moved."""
  params_before, frozen_before = before
  jax.tree.map(np.testing.assert_array_equal, frozen_before,
               jax.tree.map(np.array, objective.frozen))
  key = runs.MODEL_KEY.get(objective.config.objective)
  if key:
    assert set(state.params) == {key, *beside_model}
  model_part = state.params[key] if key else state.params
  assert all(p.endswith(("['lora_a']", "['lora_b']")) for p in paths(model_part))
  for path, old, new in zip(paths(state.params), jax.tree.leaves(params_before),
                            jax.tree.leaves(state.params)):
    if 'lora' in path:
      assert not np.array_equal(old, new), path


def test_a_step_trains_the_adapters_alone_and_the_optimizer_holds_them_alone():
  config = tiny(targets='all')
  objective, _ = adapted_lm(config)
  batch = {'tokens': tokens(8, 33)}
  before, state = train(objective, batch)
  assert_only_trained_moved(objective, before, state)
  adapter_sizes = [x.size for x in jax.tree.leaves(state.params)]
  assert sum(adapter_sizes) == 2 * 4 * (4 * (64 + 64) + (64 + 256) + (256 + 64))
  moments = [x.size for x in jax.tree.leaves(state.opt_state) if x.ndim]  # AdamW's mu and nu
  assert sorted(moments) == sorted(adapter_sizes * 2)


def test_qlora_steps_lower_the_loss_on_a_frozen_nf4_base():
  config = tiny(targets='all')
  float_base = model.init_params(network.build(config.model), jax.random.PRNGKey(1), config.seq_len)
  nf4 = quant.QuantSpec('nf4', 32, False, 'none', False)
  config.model.quant.update(format='nf4', group_size=32)
  objective = LoraTuning.wrap(lm.LanguageModeling.without_data(config),
                              quant.quantize_params(float_base, config.model, nf4))
  batch = {'tokens': tokens(8, 33)}
  loss = lambda params: objective.loss(params, batch, rng=jax.random.PRNGKey(0), step=0,
                                       weights=objective.weights(batch),
                                       frozen=objective.frozen)[0]
  before, state = train(objective, batch, steps=5)
  assert_only_trained_moved(objective, before, state)
  assert float(loss(state.params)) < float(loss(before[0])) - 0.01


@pytest.mark.parametrize('embeddings', [False, True])
def test_adapter_gradients_through_int8_activations_are_the_weight_only_ones(embeddings):
  """Rounding the activations has a zero derivative: without the straight-through estimator the
  gradients of every layer before the last quantized matmul were unrelated to the true ones
  (cosine 0.1 to −0.2) while the loss looked right (issue 24, kind 3)."""
  config = tiny(targets='all')
  float_base = model.init_params(network.build(config.model), jax.random.PRNGKey(1), config.seq_len)
  batch = {'tokens': tokens(8, 33)}
  grads = {}
  for activations in ('none', 'int8'):
    config.model.quant.update(format='int8', activations=activations, embeddings=embeddings)
    spec = quant.spec(config.model)
    objective = LoraTuning.wrap(lm.LanguageModeling.without_data(config),
                                quant.quantize_params(float_base, config.model, spec))
    params = with_random_b(objective.init_params(jax.random.PRNGKey(0)))
    grads[activations] = jax.grad(lambda p: objective.loss(
        p, batch, rng=jax.random.PRNGKey(0), step=0, weights=objective.weights(batch),
        frozen=objective.frozen)[0])(params)
  cosines = {jax.tree_util.keystr(path): float(jnp.vdot(a, b) / jnp.linalg.norm(a)
                                               / jnp.linalg.norm(b))
             for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(grads['none'])[0],
                                     jax.tree.leaves(grads['int8']))}
  assert len(cosines) == 2 * 6 * 2 and min(cosines.values()) > 0.99, cosines


def test_sft_with_lora_trains_the_adapters_alone():
  config = tiny()
  config.update(objective='sft', seq_len=24)
  config.model.update(vocab_size=64, n_layer=1, n_embd=32, n_head=2, n_kv_head=2,
                      position='rope')
  inner = sft.InstructionTuning(config, None, network.build(config.model))
  base = model.init_params(inner.gpt, jax.random.PRNGKey(1), config.seq_len)
  objective = LoraTuning.wrap(inner, base)
  rng = np.random.default_rng(0)
  examples = [instructions.TokenizedExample(rng.integers(3, 64, n).astype(np.int32), answer)
              for n, answer in ((9, 3), (7, 2), (6, 4))]
  rows = instructions.pack(examples, config.seq_len)
  before, state = train(objective, {k: jnp.asarray(np.repeat(v, 2, 0)) for k, v in rows.items()})
  assert_only_trained_moved(objective, before, state)


def test_classify_with_lora_trains_the_adapters_and_the_head(tmp_path):
  inner, params, batch = objective_for(tmp_path, EXAMPLES['classification'])
  inner.config.lora.update(rank=2, targets='attn')
  objective = LoraTuning.wrap(inner, params['gpt'])
  before, state = train(objective, batch)
  assert_only_trained_moved(objective, before, state, beside_model=('special', 'head'))
  assert not np.array_equal(before[0]['head']['kernel'], state.params['head']['kernel'])


# --- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize('settings, message', [
    (dict(rank=-1), r'lora.rank=-1 must be >= 0 \(0 turns LoRA off\)'),
    (dict(alpha=0.0), r'lora.alpha=0.0 must be > 0 and lora.dropout=0.0 in \[0, 1\)'),
    (dict(dropout=1.0), r'lora.dropout=1.0 in \[0, 1\)'),
    (dict(targets='query,gate'), r"lora.targets='query,gate': this model has no layer gate; "
                                 r'use attn, mlp, all or layer names among '
                                 r'query,key,value,out,fc,proj$'),
    (dict(targets=','), r"lora.targets=',' names no layer; use attn"),
    (dict(init_from=''), r'lora.rank=4 adapts a pretrained model; pass --config.init_from=DIR'),
])
def test_bad_lora_settings_are_one_line_before_anything_loads(settings, message, tmp_path):
  config = tiny()
  base = tmp_path / 'base'
  base.mkdir()
  (base / runs.CONFIG).write_text(json.dumps(config.to_dict()))  # a base's config, no weights
  config.init_from = settings.pop('init_from', str(base))
  config.lora.update(**settings)
  with pytest.raises(UserError, match=message) as error:
    objectives.build(config, sharding.data_parallel_mesh(), quiet)
  assert '\n' not in str(error.value)


def test_targets_name_the_layers_of_either_mlp():
  assert lora.targeted_layers('query, up', 'swiglu') == ('query', 'up')
  assert lora.targeted_layers('mlp', 'gelu') == ('fc', 'proj')
  assert lora.targeted_layers('all', 'swiglu') == ('query', 'key', 'value', 'out', 'gate', 'up',
                                                   'proj')
  with pytest.raises(UserError, match=r'no layer fc; use .* query,key,value,out,gate,up,proj$'):
    lora.targeted_layers('fc', 'swiglu')


def test_the_fingerprint_sees_one_changed_bit_and_a_swap():
  params = {'a': jnp.arange(12, dtype=jnp.float32).reshape(3, 4),
            'b': jnp.ones(5, jnp.bfloat16)}
  same = lora.fingerprint(jax.tree.map(jnp.copy, params))
  assert same == lora.fingerprint(params) and len(same) == 64
  nudged = dict(params, a=params['a'].at[2, 3].set(jnp.nextafter(11.0, 12.0)))
  swapped = dict(params, a=params['a'][::-1])
  halved = dict(params, b=params['b'] / 2)
  assert len({same, *map(lora.fingerprint, (nudged, swapped, halved))}) == 4


# --- a LoRA run ---------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def base_dir(tiny_base):
  """The base: conftest's tiny_base, which is tiny.py on the small corpus; read only."""
  return tiny_base


def lora_config(small_corpus, base_dir):
  config = tiny()
  config.data.corpus, config.init_from = small_corpus, base_dir
  config.update(steps=4, log_every=2, eval_every=2, checkpoint_every=2)
  config.sample.num = 0
  return config


@pytest.fixture(scope='module')
def lora_run(small_corpus, base_dir, tmp_path_factory):
  """(workdir, log lines) of 4 LoRA steps on base_dir."""
  workdir, logs = str(tmp_path_factory.mktemp('lora')), []
  trainer.train(lora_config(small_corpus, base_dir), workdir, log=logs.append)
  return workdir, logs


def test_a_lora_run_saves_the_adapters_alone_and_names_its_base(lora_run, base_dir):
  workdir, logs = lora_run
  with open(os.path.join(workdir, lora.BASE_FILE)) as f:
    record = json.load(f)
  base = runs.load(base_dir)
  assert record == {'base': os.path.abspath(base_dir), 'base_step': 20,
                    'base_sha256': lora.fingerprint(base.params),
                    'base_relative': os.path.relpath(base_dir, workdir)}
  config = runs.read_config(workdir)
  gpt = network.build(config.model, config.lora)
  adapters, _ = lora.split(jax.eval_shape(lambda: model.init_params(gpt, jax.random.PRNGKey(0),
                                                                    config.seq_len)))
  assert len(paths(adapters)) == 2 * 4 * 2
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, runs.CHECKPOINTS), keep=2)
  ckpts.check_params_match(4, adapters)  # these leaves and no other
  ckpts.close()
  # 2 layers × 4 attention layers × r·(64 + 64) parameters, the base's 0.5 MiB frozen
  memory = next(line for line in logs if line.startswith('memory per device'))
  assert '4,096 trained parameters 16.0 KiB and their optimizer state 32.0 KiB, frozen ' \
         'parameters 535.0 KiB' in memory


def test_a_lora_run_loads_merged_or_not_and_merges_into_an_ordinary_run(lora_run, tmp_path):
  workdir, _ = lora_run
  merged, unmerged = runs.load(workdir), runs.load(workdir, merge=False)
  assert jax.tree.structure(merged.params) == jax.tree.structure(runs.load(
      runs.read_config(workdir).init_from).params)
  np.testing.assert_allclose(merged.gpt.apply({'params': merged.params}, tokens()),
                             unmerged.gpt.apply({'params': unmerged.params}, tokens()), atol=1e-5)

  out = str(tmp_path / 'merged')
  assert merge_run(workdir, out, log=quiet) == out
  assert sorted(os.listdir(out)) == ['checkpoints', 'config.json', 'tokenizer.model']
  written = runs.load(out)
  assert written.step == merged.step == 4 and written.config.lora.rank == 0
  jax.tree.map(np.testing.assert_array_equal, written.params, merged.params)
  # hf export reads the LoRA run as the merged one
  exported = [hf.read_tensors(hf.export(d, str(tmp_path / f'hf_{i}')))
              for i, d in enumerate((workdir, out))]
  jax.tree.map(np.testing.assert_array_equal, *exported)

  with pytest.raises(UserError, match=r'already exists and is not empty'):
    merge_run(workdir, out)
  with pytest.raises(UserError, match=r'is not a LoRA run \(its lora.rank is 0\): it has no '
                                      r'adapters to merge'):
    merge_run(out, str(tmp_path / 'again'))


def test_quantizing_a_lora_run_writes_its_merged_model_as_an_ordinary_quantized_run(lora_run,
                                                                                   tmp_path):
  workdir, _ = lora_run
  logs = []
  out = quantize.quantize_run(workdir, str(tmp_path / 'int8'),
                              quant.QuantSpec('int8', 0, False, 'none', False), log=logs.append)
  assert "(a LoRA run's hold its adapters alone)" in logs[-1]
  written, merged = runs.load(out), runs.load(workdir)
  assert written.config.lora.rank == 0 and written.config.model.quant.format == 'int8'
  np.testing.assert_allclose(written.gpt.apply({'params': written.params}, tokens()),
                             merged.gpt.apply({'params': merged.params}, tokens()), atol=2e-2)


def test_a_base_that_changed_is_refused_on_load_and_resume(lora_run, small_corpus, tmp_path):
  workdir, _ = lora_run
  base, run = str(tmp_path / 'base'), str(tmp_path / 'lora')
  shutil.copytree(lora.read_base(workdir)['base'], base)
  shutil.copytree(workdir, run)
  lora.write_base(run, dict(lora.read_base(workdir), base=base))  # as if trained there
  runs.load(run)

  # the base trains on: a newer checkpoint with other weights
  changed = jax.tree.map(lambda x: x * 1.01, runs.load(base).params)
  checkpoint.save_params(os.path.join(base, runs.CHECKPOINTS), 21, changed)
  message = (f'the base of the LoRA run {re.escape(run)} changed since it was trained: '
             rf'{re.escape(base)} \(step 21\) is not the model its adapters were trained on '
             rf'\({re.escape(base)}, step 20\)')
  with pytest.raises(UserError, match=message):
    runs.load(run)
  config = lora_config(small_corpus, base)
  config.update(steps=6, allow_config_changes=True)
  with pytest.raises(UserError, match=message):
    trainer.train(config, run, log=quiet)


def test_a_lora_run_moved_with_its_base_or_alone_still_loads(small_corpus, base_dir, tmp_path,
                                                              monkeypatch, capsys):
  """lora.json named the base by its absolute path alone: after the folder holding both runs was
  moved, every reader stopped (issue 24, kind 2; unsloth #699)."""
  old, new = tmp_path / 'old', tmp_path / 'new'
  shutil.copytree(base_dir, old / 'runs' / 'base')
  monkeypatch.chdir(old)
  config = lora_config(small_corpus, 'runs/base')
  config.update(steps=2, eval_every=2, checkpoint_every=2)
  trainer.train(config, 'runs/lora', log=quiet)
  want = runs.load('runs/lora', log=quiet).params
  os.rename(old, new)  # the project renamed: the recorded absolute path is gone
  monkeypatch.chdir(new)
  for place in ('runs/lora', str(new / 'runs' / 'lora')):  # relative and absolute
    jax.tree.map(np.testing.assert_array_equal, runs.load(place, log=quiet).params, want)

  os.rename(new / 'runs' / 'lora', new / 'lora')  # moved alone: nowhere it was recorded
  message = (r'the base of the LoRA run lora is not where its lora.json records it \(base nor '
             rf'{re.escape(str(old))}/runs/base\); if it moved, name its new place with python -m '
             r'gpt_jax.lora rebase --workdir=lora --base=DIR \(its fingerprint is checked\)')
  with pytest.raises(UserError, match=message):
    runs.load('lora')
  base = runs.load('runs/base', log=quiet)
  runs.write_params_run('other', runs.read_config('runs/base'), base.tokenizer,
                        jax.tree.map(lambda x: x * 1.01, base.params), base.step, 'other')
  assert cli_exit(['rebase', '--workdir=lora', '--base=other']) == 2  # not its base
  assert 'changed since it was trained' in capsys.readouterr().err
  assert cli_exit(['rebase', '--workdir=lora', '--base=runs/base']) == 0
  assert lora.read_base('lora')['base_relative'] == '../runs/base'
  jax.tree.map(np.testing.assert_array_equal, runs.load('lora', log=quiet).params, want)


def cli_exit(argv) -> int:
  from gpt_jax.lora.__main__ import main
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
    raise SystemExit(0)
  return exit_info.value.code


def test_qlora_trains_adapters_on_an_nf4_base_and_merging_dequantizes_it(small_corpus, base_dir,
                                                                         tmp_path):
  nf4 = quantize.quantize_run(base_dir, str(tmp_path / 'nf4'),
                              quant.QuantSpec('nf4', 32, False, 'none', False), log=quiet)
  workdir = str(tmp_path / 'qlora')
  trainer.train(lora_config(small_corpus, nf4), workdir, log=quiet)

  run = runs.load(workdir)  # a quantized base keeps its adapters apart
  query = run.params['h_0']['attn']['query']
  assert sorted(query) == ['bias', 'kernel_q', 'kernel_scale', 'kernel_scale_mean',
                           'kernel_scale_scale', 'lora_a', 'lora_b']
  assert np.abs(np.asarray(query['lora_b'])).max() > 0
  with pytest.raises(UserError, match=r'is quantized already \(nf4\); merge it \(`python -m '
                                      r'gpt_jax.lora merge`\) and quantize the merged run'):
    quantize.quantize_run(workdir, str(tmp_path / 'int8'),
                          quant.QuantSpec('int8', 0, False, 'none', False), log=quiet)
  out = merge_run(workdir, str(tmp_path / 'merged'), log=quiet)
  merged = runs.load(out)
  assert not merged.config.model.quant.format and 'kernel' in merged.params['h_0']['attn']['query']
  np.testing.assert_allclose(merged.gpt.apply({'params': merged.params}, tokens()),
                             run.gpt.apply({'params': run.params}, tokens()), atol=1e-4)


@pytest.mark.slow
def test_lora_through_the_command_line_then_merge_and_sample_both(base_dir, small_corpus,
                                                                  tmp_path):
  workdir, merged = str(tmp_path / 'lora'), str(tmp_path / 'merged')
  result = run_cli(f'--config={TINY}', f'--config.data.corpus={small_corpus}',
                   f'--config.init_from={base_dir}', '--config.lora.rank=8',
                   '--config.lora.targets=all', '--config.steps=6', '--config.sample.num=0',
                   f'--workdir={workdir}', devices=1, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'LoRA: rank 8, alpha 16.0 on query, key, value, out, fc, proj; the base' in result.stdout
  result = run_cli('merge', f'--workdir={workdir}', f'--out={merged}', module='gpt_jax.lora')
  assert result.returncode == 0 and f'merged {workdir} into {merged}' in result.stdout
  samples = []
  for directory in (workdir, merged):
    result = run_cli(f'--workdir={directory}', '--prompt=KING', '--seed=1', '--max_tokens=12',
                     module='gpt_jax.sample')
    assert result.returncode == 0, result.stderr[-2000:]
    samples.append(result.stdout)
  assert samples[0] == samples[1] and 'KING' in samples[0]
  result = run_cli('merge', f'--workdir={base_dir}', f'--out={tmp_path / "x"}',
                   module='gpt_jax.lora')
  assert result.returncode == 2 and result.stderr.count('\n') == 1
  assert 'is not a LoRA run' in result.stderr and not os.path.exists(tmp_path / 'x')


@pytest.mark.slow
def test_sft_with_lora_resumes_bit_for_bit_and_reports(base_dir, tmp_path):
  config = tiny(dropout=0.1)
  config.update(objective='sft', init_from=base_dir, seq_len=64, steps=8, log_every=4,
                eval_every=4, checkpoint_every=4)
  config.data.update(tasks=write_tasks(tmp_path / 'tasks'), num_epochs=20)
  config.sft.update(shots=1, eval_instances=4)
  config.sample.num = 0
  whole, resumed = str(tmp_path / 'whole'), str(tmp_path / 'resumed')
  trainer.train(config, whole, log=quiet)
  trainer.train(config, resumed, log=quiet)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '8'))
  messages = []
  trainer.train(config, resumed, log=messages.append)
  assert any('resuming from step 4' in m for m in messages)
  assert read_metrics(resumed) == read_metrics(whole)
  assert '| first_word | 4 |' in open(os.path.join(whole, sft.REPORT)).read()


def head_run_config(objective, tiny_base, preference_file, tiny_reward):
  if objective == 'ppo':
    config = tiny_ppo_config(tiny_base, preference_file, tiny_reward)
    config.update(steps=2, eval_every=2, checkpoint_every=2)
  else:
    config = cli.load_experiment(os.path.join(ROOT, 'experiments', 'reward.py'))
    config.update(init_from=tiny_base, seq_len=48, steps=4, batch_size=8, eval_every=4)
    config.data.update(tasks=preference_file, held_out_tasks='')
    config.sample.num = 0
  config.lora.update(rank=4, alpha=8.0, targets='all')
  return config


@pytest.mark.parametrize('objective', ['reward', 'ppo'])
def test_a_run_with_a_reward_or_value_head_merges_into_a_run_of_the_same_scores(
    objective, tiny_base, preference_file, tiny_reward, tmp_path):
  """`lora merge` read every run with a head as a classifier and crashed (issue 24, kind 1;
  PEFT #2502): the merged run keeps its head, and its reward normalisation, beside the model."""
  config = head_run_config(objective, tiny_base, preference_file, tiny_reward)
  workdir, merged = str(tmp_path / 'lora'), str(tmp_path / 'merged')
  trainer.train(config, workdir, log=quiet)
  merge_run(workdir, merged, log=quiet)
  assert runs.read_config(merged).objective == objective
  assert runs.read_config(merged).lora.rank == 0 and not os.path.exists(f'{merged}/lora.json')
  mesh = sharding.data_parallel_mesh()
  key = {'reward': 'head', 'ppo': 'value'}[objective]
  heads = [checkpoint.restore_params_beside(f'{d}/checkpoints', 2 if objective == 'ppo' else 4,
                                            'gpt', mesh) for d in (workdir, merged)]
  assert list(heads[1]) == [key]
  jax.tree.map(np.testing.assert_array_equal, *heads)
  tokenizer = runs.load(tiny_base, log=quiet).tokenizer
  if objective == 'reward':
    models = [reward.load_reward_model(d, 'the reward model', config, tokenizer, mesh=mesh)
              for d in (workdir, merged)]
    prompts, answers = ['a b c', 'the cat'] * 2, ['d e', 'sat on', 'x', 'the mat']
    scores = [m.score_answers(prompts, answers, tokenizer, 48, 4) for m in models]
    assert np.ptp(scores[0]) > 0
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-5)
  loaded = [runs.load(d, mesh=mesh, log=quiet) for d in (workdir, merged)]
  logits = [run.gpt.apply({'params': run.params}, tokens(2, 16) % 64) for run in loaded]
  np.testing.assert_allclose(logits[1], logits[0], atol=1e-5)


@pytest.mark.slow
def test_classify_with_lora_merges_into_a_classifier_with_its_head(base_dir, tmp_path):
  config = cli.load_experiment(os.path.join(ROOT, 'experiments', 'classify.py:follows'))
  config.update(init_from=base_dir, steps=6, batch_size=8, seq_len=32, eval_every=3, log_every=3)
  config.task.update(eval_instances=16, shots=(0,))
  config.lora.rank = 4
  workdir, merged = str(tmp_path / 'lora'), str(tmp_path / 'merged')
  trainer.train(config, workdir, log=quiet)
  merge_run(workdir, merged, log=quiet)
  mesh = sharding.data_parallel_mesh()
  trees = [classify.load_classifier(d, mesh=mesh, log=quiet)[1] for d in (workdir, merged)]
  jax.tree.map(np.testing.assert_array_equal, *trees)
  held_out = os.path.join(task_inputs.SHIPPED_DIR, 'val', 'follows.jsonl')
  with open(os.path.join(workdir, 'finetune_report.json')) as f:
    head_accuracy = json.load(f)['head_accuracy']
  for directory in (workdir, merged):
    scores = classify.evaluate_head(directory, held_out, max_instances=16, log=quiet)
    assert scores['task']['accuracy'] == head_accuracy


@pytest.mark.slow
def test_a_lora_step_on_a_2x2x2_mesh_matches_one_device():
  """3 LoRA steps on every layer: losses and adapters of one device, adapters sharded with
  their weights, and the base's fingerprint the same on both meshes."""
  result = run_python('''
    import json
    import jax, numpy as np
    from gpt_jax import config, lora, model, network, optim, sharding, trainer
    from gpt_jax.objectives import lm
    from gpt_jax.objectives.lora import LoraTuning
    c = config.base_config()
    c.seq_len, c.batch_size, c.steps_per_call = 16, 8, 1
    c.model.update(vocab_size=256, n_layer=2, n_embd=64, n_head=8, n_kv_head=8, block_size=16)
    c.lora.update(rank=4, targets='all')
    plain = network.build(c.model)
    base = model.init_params(plain, jax.random.PRNGKey(1), 16)
    tx = optim.optimizer(c.optim, 10)
    batches = np.random.RandomState(0).randint(0, 256, (3, 8, 17)).astype(np.int32)

    def run(mesh):
      on_mesh = jax.device_put(base, sharding.param_shardings(model.logical_axes(plain, 16), base,
                                                              mesh))
      objective = LoraTuning.wrap(lm.LanguageModeling.without_data(c), on_mesh)
      abstract = trainer.abstract(objective, tx, c, mesh)
      state = jax.jit(lambda: trainer.new_state(objective, tx, c),
                      out_shardings=jax.tree.map(lambda a: a.sharding, abstract))()
      steps, _ = trainer.compile_steps(objective, tx, c, mesh, abstract, log=lambda _: None)
      stacked = trainer.stacked_batch_shardings(objective, mesh)['tokens']
      losses = []
      for tokens in batches:  # one step per call (steps_per_call = 1)
        tokens = jax.make_array_from_process_local_data(stacked, tokens[None])
        state, m = steps(state, {'tokens': tokens}, np.int32(1), objective.frozen)
        losses.append(float(m['train_loss'][0]))
      query = state.params['h_0']['attn']['query']
      return {'losses': losses, 'params': [np.asarray(p).tolist() for p in jax.tree.leaves(
                  state.params)], 'fingerprint': lora.fingerprint(on_mesh),
              'specs': [str(query[k].sharding.spec) for k in lora.ADAPTERS]}

    auto = (jax.sharding.AxisType.Auto,) * 3
    print(json.dumps({
        'one': run(jax.make_mesh((1, 1, 1), sharding.MESH_AXES, devices=jax.devices()[:1],
                                 axis_types=auto)),
        'mix': run(jax.make_mesh((2, 2, 2), sharding.MESH_AXES, axis_types=auto))}))
  ''', devices=8)
  one, mix = result['one'], result['mix']
  np.testing.assert_allclose(mix['losses'], one['losses'], rtol=1e-5)
  for p, p1 in zip(mix['params'], one['params']):
    np.testing.assert_allclose(p, p1, rtol=1e-4, atol=1e-6)
  assert mix['fingerprint'] == one['fingerprint']
  assert mix['specs'] == ["P('fsdp', None)", "P(None, 'tensor', None)"]


# --- figures --------------------------------------------------------------------------------------


def test_gpt2_124m_full_fine_tuning_against_lora_r8_on_attention():
  """Trained parameters and their parameter + AdamW bytes (float32) from shapes alone: full
  fine-tuning of GPT-2 small trains all 124.5M; LoRA r = 8 on query, key, value and out trains
  12 layers × 4 × 8·(768 + 768) = 589,824 and keeps the 124.5M frozen."""
  config = cli.load_experiment(os.path.join(ROOT, 'experiments', 'gpt2.py'))
  config.lora.update(rank=8, targets='attn')
  mesh, tx = sharding.data_parallel_mesh(), optim.optimizer(config.optim, config.steps)

  def figures(objective):
    state = trainer.abstract(objective, tx, config, mesh)
    count = sum(x.size for x in jax.tree.leaves(state.params))
    return count, sum(sharding.bytes_per_device(tree, jax.tree.map(lambda a: a.sharding, tree))
                      for tree in (state.params, state.opt_state))

  full = figures(lm.LanguageModeling.without_data(config))
  adapted = figures(LoraTuning.wrap(lm.LanguageModeling.without_data(config), None))
  assert full[0] == 124_475_904 and adapted[0] == 589_824
  assert full[1] == 12 * full[0] + 8 and adapted[1] == 12 * adapted[0] + 8  # + 2 step counts
