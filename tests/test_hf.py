"""Hugging Face import and export (gpt_jax.hf), checked against transformers' own forward pass on
tiny random models: GPT-2 (tied, biases, learned positions) and LLaMA (GQA, untied, RoPE)."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, run_cli, run_main
from gpt_jax import cli, corpus, expand_vocab, hf, runs, trainer
from gpt_jax.config import base_config
from gpt_jax import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError
from test_tokenizer import byte_level_bpe, stdlib_code

transformers = pytest.importorskip(
    'transformers', reason='needs transformers and torch: pip install -e .[hf]')
torch = pytest.importorskip('torch', reason='needs transformers and torch: pip install -e .[hf]')

TOKENS = np.random.RandomState(0).randint(0, 300, (2, 24))
GPT2_VOCAB, LLAMA_VOCAB = 300, 384


def quiet(_):
  pass


def randomize(hf_model, seed: int):
  """Noise on every weight: HF initialises biases to 0 and norm scales to 1, which would hide a
  bias or scale put in the wrong place."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in hf_model.parameters():
      p.add_(torch.randn(p.shape, generator=g) * 0.1)
  return hf_model


def hf_logits(hf_dir, tokens=TOKENS):
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()  # float32 weights
  with torch.no_grad():
    return hf_model(torch.tensor(tokens)).logits.numpy()


def our_logits(gpt, params, tokens=TOKENS):
  return np.asarray(gpt.apply({'params': params}, jnp.asarray(tokens, jnp.int32)), np.float32)


def max_diff(a, b):
  return float(np.abs(a - b).max())


@pytest.fixture(scope='module')
def texts(small_corpus):
  return [doc.text for doc in corpus.load_documents(small_corpus)[0]]


@pytest.fixture(scope='module')
def gpt2_dir(tmp_path_factory, texts):
  """A GPT-2 with a byte-level BPE tokenizer.json, as GPT-2 checkpoints bring."""
  directory = tmp_path_factory.mktemp('gpt2')
  config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=GPT2_VOCAB,
                                   n_positions=64, bos_token_id=0, eos_token_id=0)
  randomize(transformers.GPT2LMHeadModel(config), 0).save_pretrained(directory,
                                                                     safe_serialization=True)
  (directory / 'tokenizer.json').write_text(byte_level_bpe(texts, GPT2_VOCAB))
  return str(directory)


@pytest.fixture(scope='module')
def untied_gpt2_dir(tmp_path_factory):
  """A GPT-2 whose output head is its own (tie_word_embeddings=False), without a tokenizer."""
  directory = tmp_path_factory.mktemp('untied_gpt2')
  config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=GPT2_VOCAB,
                                   n_positions=32, n_inner=48, tie_word_embeddings=False)
  randomize(transformers.GPT2LMHeadModel(config), 2).save_pretrained(directory,
                                                                     safe_serialization=True)
  return str(directory)


@pytest.fixture(scope='module')
def llama_dir(tmp_path_factory):
  """A LLaMA without a tokenizer; beside it the same weights in bfloat16, in shards."""
  directory = tmp_path_factory.mktemp('llama')
  config = transformers.LlamaConfig(
      vocab_size=LLAMA_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=500.0,
      max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
  llama = randomize(transformers.LlamaForCausalLM(config), 1)
  llama.save_pretrained(directory / 'f32', safe_serialization=True)
  llama.to(torch.bfloat16).save_pretrained(directory / 'bf16', safe_serialization=True,
                                           max_shard_size='50KB')
  return str(directory / 'f32')


@pytest.fixture(scope='module')
def sp_model(tmp_path_factory, texts):
  """This project's sentencepiece tokenizer, sized to the LLaMA's vocabulary."""
  path = str(tmp_path_factory.mktemp('sp') / 'tok.model')
  tokenizer_lib.train(texts, LLAMA_VOCAB).save(path)
  return path


@pytest.fixture(params=['gpt2', 'untied_gpt2', 'llama'])
def hf_dir(request):
  return request.getfixturevalue(f'{request.param}_dir')


# --- import and export -------------------------------------------------------------------------


def test_import_gives_the_logits_of_transformers(hf_dir):
  expected = hf_logits(hf_dir)
  gpt, params = hf.load(hf_dir)
  assert max_diff(our_logits(gpt, params), expected) < 1e-4
  gpt, params = hf.load(hf_dir, scan_layers=True)  # the layers stacked for nn.scan
  assert max_diff(our_logits(gpt, params), expected) < 1e-4


def test_export_loads_in_transformers_and_round_trips(hf_dir, tmp_path):
  config = hf.hf_to_config(hf.read_hf_config(hf_dir))
  gpt, params = hf.load(hf_dir)
  hf.export((config, params), str(tmp_path / 'out'))
  assert max_diff(hf_logits(str(tmp_path / 'out')), hf_logits(hf_dir)) < 1e-4
  _, again = hf.load(str(tmp_path / 'out'))
  jax.tree.map(np.testing.assert_array_equal, again, params)
  assert sorted(os.listdir(tmp_path)) == ['out']  # nothing left of the temporary directory
  before = {name: os.path.getmtime(tmp_path / 'out' / name)
            for name in os.listdir(tmp_path / 'out')}
  with pytest.raises(UserError, match=r'--out=.*out already exists and is not empty'):
    hf.export((config, params), str(tmp_path / 'out'))  # an earlier export is never overwritten
  assert {name: os.path.getmtime(tmp_path / 'out' / name)
          for name in os.listdir(tmp_path / 'out')} == before


def test_json_files_with_a_byte_order_mark_are_read(llama_dir, tmp_path):
  """config.json and the shard index as a Windows editor saves them, with a byte-order mark."""
  bf16_dir = os.path.join(os.path.dirname(llama_dir), 'bf16')
  for name in os.listdir(bf16_dir):
    with open(os.path.join(bf16_dir, name), 'rb') as f:
      data = f.read()
    (tmp_path / name).write_bytes(b'\xef\xbb\xbf' + data if name.endswith('.json') else data)
  jax.tree.map(np.testing.assert_array_equal, hf.load(str(tmp_path))[1], hf.load(bf16_dir)[1])


def test_bfloat16_shards_load_as_bfloat16(llama_dir):
  bf16_dir = os.path.join(os.path.dirname(llama_dir), 'bf16')
  assert os.path.exists(os.path.join(bf16_dir, 'model.safetensors.index.json'))
  _, params = hf.load(bf16_dir)
  _, f32 = hf.load(llama_dir)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(f32)):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(a, b.astype(jnp.bfloat16))


def test_export_refuses_models_transformers_cannot_express():
  config = base_config()
  config.model.norm = 'rmsnorm'  # with learned positions: neither GPT-2 nor LLaMA
  with pytest.raises(UserError, match=r"^model \(position='learned', norm='rmsnorm'.* is neither"):
    hf.config_to_hf(config.model)
  config.model.update(norm='layernorm', bias=False)
  with pytest.raises(UserError, match='is neither GPT-2'):
    hf.config_to_hf(config.model)
  config.model.update(bias=True, sliding_window=16)
  with pytest.raises(UserError, match='^model.sliding_window=16'):
    hf.config_to_hf(config.model)
  config.model.update(sliding_window=0, mlp='relu2')
  with pytest.raises(UserError, match=r"mlp='relu2'.* is neither GPT-2"):
    hf.config_to_hf(config.model)
  for speedrun in (dict(qk_norm=True), dict(logit_softcap=15.0)):
    config.model.update({'mlp': 'gelu', 'qk_norm': False, 'logit_softcap': 0.0, **speedrun})
    with pytest.raises(UserError, match='has QK-norm or a logit soft-cap'):
      hf.config_to_hf(config.model)
  config.model.update(qk_norm=False, logit_softcap=0.0, zero_init_proj=True)  # only the init
  assert hf.config_to_hf(config.model)['model_type'] == 'gpt2'


@pytest.mark.parametrize('arch, change, message', [
    ('gpt2', {'activation_function': 'gelu'},
     r"^activation_function='gelu' \(in config.json\) cannot be computed by this project's model, "
     r'which has the tanh GELU \(gelu_new, gelu_pytorch_tanh\); import another checkpoint$'),
    ('gpt2', {'scale_attn_weights': False}, r'^scale_attn_weights=False \(in config.json\)'),
    ('gpt2', {'scale_attn_by_inverse_layer_idx': True}, '^scale_attn_by_inverse_layer_idx=True'),
    ('gpt2', {'add_cross_attention': True}, r'^add_cross_attention=True .* no cross-attention;'),
    ('gpt2', {'n_positions': None}, r'^config.json has no n_positions, which a gpt2 model needs'),
    ('llama', {'rope_parameters': {'rope_type': 'llama3', 'rope_theta': 5e5}},
     "^rope_parameters of type 'llama3' cannot be computed .* plain RoPE"),
    ('llama', {'rope_scaling': {'type': 'linear', 'factor': 2.0}},
     "^rope_scaling of type 'linear'"),
    ('llama', {'attention_bias': True}, r'^attention_bias=True \(in config.json\)'),
    ('llama', {'mlp_bias': True}, r'^mlp_bias=True .* no biases in LLaMA-style layers'),
    ('llama', {'hidden_act': 'gelu'}, r"^hidden_act='gelu' .* SwiGLU with silu"),
    ('llama', {'model_type': 'mistral', 'architectures': ['MistralForCausalLM']},
     r"^sliding_window=4096 \(transformers' default\) .* dense attention"),
])
def test_configs_this_model_cannot_compute_are_refused(arch, change, message, gpt2_dir, llama_dir):
  hf_config = {**hf.read_hf_config({'gpt2': gpt2_dir, 'llama': llama_dir}[arch]), **change}
  # a change to None leaves the key out
  hf_config = {key: value for key, value in hf_config.items() if value is not None}
  with pytest.raises(UserError, match=message):
    hf.hf_to_config(hf_config)


def test_settings_that_change_only_how_transformers_computes_are_taken(gpt2_dir, llama_dir):
  for hf_dir, change in ((gpt2_dir, {'reorder_and_upcast_attn': True}),
                         (llama_dir, {'pretraining_tp': 2}),
                         (llama_dir, {'model_type': 'mistral', 'sliding_window': None})):
    hf_config = hf.read_hf_config(hf_dir)
    assert hf.hf_to_config({**hf_config, **change}) == hf.hf_to_config(hf_config)


def test_every_tensor_is_taken_or_refused(gpt2_dir, llama_dir):
  """Tensors the table does not take are refused, except known buffers; a tied model's own
  lm_head.weight must equal the embedding it is tied to."""
  gpt2 = hf.hf_to_config(hf.read_hf_config(gpt2_dir)).model
  tensors = hf.read_tensors(gpt2_dir)
  params = hf.params_from_hf(gpt2, tensors)
  mask = np.tril(np.ones((1, 1, 64, 64), bool))  # the causal-mask buffers of old checkpoints
  buffers = {'transformer.h.1.attn.bias': mask,
             'transformer.h.1.attn.masked_bias': np.float32(-1e4),
             'lm_head.weight': tensors['transformer.wte.weight']}  # as tied: the same as wte
  jax.tree.map(np.testing.assert_array_equal, hf.params_from_hf(gpt2, {**tensors, **buffers}),
               params)
  with pytest.raises(UserError, match=r"^the checkpoint has tensors this model has no place for "
                     r"\('transformer.h.0.crossattention.c_attn.weight', 1 in all\); check"):
    hf.params_from_hf(gpt2, {**tensors, 'transformer.h.0.crossattention.c_attn.weight': mask})
  with pytest.raises(UserError, match=r"^the checkpoint's lm_head.weight differs from its token "
                     r'embedding, but config.json has tie_word_embeddings=true'):
    hf.params_from_hf(gpt2, {**tensors, 'lm_head.weight': tensors['transformer.wte.weight'] + 1})

  llama_config = hf.read_hf_config(llama_dir)
  tensors = hf.read_tensors(llama_dir)
  inv_freq = {'model.layers.0.self_attn.rotary_emb.inv_freq': np.ones(8, np.float32)}
  hf.params_from_hf(hf.hf_to_config(llama_config).model, {**tensors, **inv_freq})
  with pytest.raises(UserError, match="lm_head.weight differs .* tie_word_embeddings=true"):
    hf.params_from_hf(hf.hf_to_config({**llama_config, 'tie_word_embeddings': True}).model, tensors)


# --- runs: import, runs.load, init_from, distill.teacher ---------------------------------------


def run_hf(*args):
  return run_cli(*args, module='gpt_jax.hf', timeout=120)


def test_cli_import_is_a_run_to_fine_tune(llama_dir, sp_model, small_corpus, tmp_path):
  workdir = str(tmp_path / 'imported')
  result = run_hf('import', llama_dir, f'--workdir={workdir}', f'--tokenizer={sp_model}')
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'config.json', 'tokenizer.model']
  run = runs.load(workdir)
  assert run.step == 0 and run.tokenizer.sha256 == tokenizer_lib.load(sp_model).sha256
  assert max_diff(our_logits(run.gpt, run.params), hf_logits(llama_dir)) < 1e-4

  config = runs.read_config(workdir)  # its data.tokenizer is the imported run's
  config.update(steps=2, batch_size=4, seq_len=32, log_every=1, eval_every=2, eval_batches=1,
                checkpoint_every=2, init_from=workdir)
  config.data.corpus, config.sample.num, config.optim.warmup_steps = small_corpus, 0, 1
  logs = []
  record = trainer.train(config, str(tmp_path / 'tuned'), log=logs.append)
  assert any(line.startswith(f'starting from the parameters of {workdir}') for line in logs)
  assert record['step'] == 2 and np.isfinite(record['val_loss'])
  with pytest.raises(UserError, match='holds imported weights, not a training run to resume'):
    trainer.train(config, workdir, log=quiet)


def test_an_imported_gpt2_extends_its_tokenizer_json_and_keeps_its_logits(gpt2_dir, tmp_path):
  """expand_vocab on an imported run: the byte-level BPE gains merges for Python code, the model
  rows for them, and text of old pieces gets the imported model's logits."""
  imported = hf.import_checkpoint(gpt2_dir, str(tmp_path / 'imported'))
  (tmp_path / 'code.txt').write_text(''.join(stdlib_code(4)))
  out = expand_vocab.expand(expand_vocab.parse_args([
      f'--base={imported}', f'--corpus={tmp_path / "code.txt"}', '--pieces=32',
      f'--out={tmp_path / "extended"}']), log=quiet)
  base, ext = runs.load(imported), runs.load(out)
  assert isinstance(ext.tokenizer, tokenizer_lib.HFTokenizer)
  assert (ext.tokenizer.vocab_size, ext.config.model.vocab_size) == (GPT2_VOCAB + 32, 384)
  code = stdlib_code(5)[4]
  assert ext.tokenizer.decode(ext.tokenizer.encode(code)) == code
  assert len(ext.tokenizer.encode(code)) < 0.9 * len(base.tokenizer.encode(code))
  np.testing.assert_array_equal(np.asarray(ext.params['wte']['embedding'])[:GPT2_VOCAB],
                                np.asarray(base.params['wte']['embedding']))
  tokens = jnp.asarray([base.tokenizer.encode('To be, or not to be')])
  np.testing.assert_allclose(ext.gpt.apply({'params': ext.params}, tokens)[..., :GPT2_VOCAB],
                             base.gpt.apply({'params': base.params}, tokens), rtol=1e-6, atol=1e-6)


def test_imported_gpt2_teaches_with_its_tokenizer_json(gpt2_dir, small_corpus, tmp_path):
  """The GPT-2's byte-level BPE tokenizer.json goes with it: into the run, the data, the student
  distilled from it, and out again when the student (GPT-2 style too) is exported."""
  teacher = hf.import_checkpoint(gpt2_dir, str(tmp_path / 'imported'))
  run = runs.load(teacher)
  assert isinstance(run.tokenizer, tokenizer_lib.HFTokenizer) and run.tokenizer.eos_id == 0
  text = 'To be, or not to be: that is the question.\n  Whither?'
  assert run.tokenizer.decode(run.tokenizer.encode(text)) == text

  student = cli.load_experiment(TINY)
  student.update(steps=2, eval_every=2, eval_batches=1, checkpoint_every=2)
  student.model.update(vocab_size=GPT2_VOCAB, n_layer=1)
  student.data.update(corpus=small_corpus, tokenizer=os.path.join(teacher, 'tokenizer.json'))
  student.sample.num, student.distill.teacher = 0, teacher
  student_dir = str(tmp_path / 'student')
  record = trainer.train(student, student_dir, log=quiet)
  assert record['step'] == 2 and np.isfinite(record['kl'])
  assert os.path.exists(os.path.join(student_dir, 'tokenizer.json'))

  hf.main(['export', student_dir, f'--out={tmp_path / "out"}'])
  assert sorted(os.listdir(tmp_path / 'out')) == ['config.json', 'model.safetensors',
                                                  'tokenizer.json']
  with open(tmp_path / 'out' / 'config.json') as f:
    assert json.load(f)['eos_token_id'] == 0
  student_run = runs.load(student_dir)
  assert max_diff(hf_logits(str(tmp_path / 'out')),
                  our_logits(student_run.gpt, student_run.params)) < 1e-4


# --- bad input: one line, exit 2 ---------------------------------------------------------------


def bert_dir(tmp_path):
  os.makedirs(tmp_path / 'bert')
  (tmp_path / 'bert' / 'config.json').write_text(json.dumps({'architectures': ['BertModel']}))
  return str(tmp_path / 'bert')


def no_weights_dir(tmp_path, llama_dir):
  os.makedirs(tmp_path / 'empty')
  (tmp_path / 'empty' / 'config.json').write_text(
      open(os.path.join(llama_dir, 'config.json')).read())
  return str(tmp_path / 'empty')


def truncated_weights_dir(tmp_path, llama_dir):
  directory = no_weights_dir(tmp_path, llama_dir)
  with open(os.path.join(llama_dir, 'model.safetensors'), 'rb') as f:
    (tmp_path / 'empty' / 'model.safetensors').write_bytes(f.read()[:-100])  # a broken download
  return directory


@pytest.mark.parametrize('make_dir, extra, message', [
    (lambda tmp, _: str(tmp), [], r"has no config.json; pass a directory written by"),
    (lambda tmp, _: bert_dir(tmp), [], r"architecture \['BertModel'\] is not supported"),
    (no_weights_dir, ['--tokenizer=X'], r"has no model.safetensors .*safe_serialization=True"),
    (truncated_weights_dir, ['--tokenizer=X'],
     r"cannot read .*model.safetensors: .*; download or save the checkpoint again"),
    (lambda tmp, llama: llama, [], r"has no tokenizer.model or tokenizer.json; pass --tokenizer"),
])
def test_bad_imports_are_one_line(make_dir, extra, message, llama_dir, sp_model, tmp_path):
  """Through the command's main() in this process; test_cli_import_is_a_run_to_fine_tune runs
  the command itself."""
  extra = [f'--tokenizer={sp_model}' if e == '--tokenizer=X' else e for e in extra]
  result = run_main('import', make_dir(tmp_path, llama_dir), f'--workdir={tmp_path / "w"}',
                    *extra, module='gpt_jax.hf')
  assert result.returncode == 2, result.stderr
  assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1, result.stderr
  assert re.search(message, result.stderr), result.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_decode_benchmark_decodes_what_transformers_generate_does(tmp_path):
  from gpt_jax import bench_decode
  args = bench_decode.parse_args(['--n_layer=1', '--n_embd=64', '--vocab_size=300',
                                  '--batch_sizes=1,3', '--prompt_len=5', '--new_tokens=6',
                                  '--repeats=1', f'--json={tmp_path / "decode.json"}'])
  rows = bench_decode.run(args)
  assert [r['batch_size'] for r in rows] == [1, 3]
  for r in rows:  # greedy decoding of the same weights: the KV-cache loop agrees token for token
    assert r['same_greedy_tokens'] == 1.0
    assert r['gpt_jax_tokens_per_sec'] > 0 and r['transformers_tokens_per_sec'] > 0
