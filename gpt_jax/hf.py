"""Hugging Face GPT-2 and LLaMA checkpoints in and out, without torch.

  python -m gpt_jax.hf import HF_DIR --workdir=DIR [--tokenizer=FILE]
  python -m gpt_jax.hf export RUN_DIR --out=HF_DIR

`load(HF_DIR)` reads a local directory as `save_pretrained` writes it (config.json and
model.safetensors, or shards listed in model.safetensors.index.json) into this project's model;
`import_checkpoint` makes it a run (config.json, tokenizer, a params-only checkpoint at step 0)
that `runs.load`, config.init_from and config.distill.teacher take; `export` writes a run back as
a directory transformers' `from_pretrained` reads. Weights go through safetensors' numpy API only
(never pickle). The two layouts map one tensor to one parameter: HF's flat (out, in) nn.Linear
weights (LLaMA) or (in, out) Conv1D weights (GPT-2) become our multi-axis (in..., out...) kernels
by a transpose and a reshape; GPT-2's fused c_attn is split into query, key and value.
"""

import json
import math
import os
import re
import sys

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np

from gpt_jax import cli, config as config_lib, files, model, network, quant, runs
from gpt_jax import tokenizer as tokenizer_lib
from gpt_jax.errors import UserError

ARCHITECTURES = {'GPT2LMHeadModel': 'gpt2', 'LlamaForCausalLM': 'llama',
                 'MistralForCausalLM': 'llama'}  # Mistral without a sliding window is LLaMA
TANH_GELUS = ('gelu_new', 'gelu_pytorch_tanh')  # what our GELU computes (the tanh approximation)
DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16}
WEIGHTS, INDEX = 'model.safetensors', 'model.safetensors.index.json'


# --- configs ----------------------------------------------------------------------------------


def _read_json(path: str) -> dict:
  """The JSON object in `path` (UTF-8, with or without the byte-order mark some Windows editors
  write); UserError if it is not one. FileNotFoundError passes through for the caller to explain."""
  try:
    with open(path, encoding='utf-8-sig') as f:
      data = json.load(f)
  except FileNotFoundError:
    raise
  except (OSError, ValueError) as e:
    raise UserError(f'cannot read {path}: {e}; pass a directory written by save_pretrained'
                    ) from None
  if not isinstance(data, dict):
    raise UserError(f'{path} holds no JSON object; pass a directory written by save_pretrained')
  return data


def read_hf_config(hf_dir: str) -> dict:
  """The config.json of `hf_dir`, as a dict."""
  try:
    return _read_json(os.path.join(hf_dir, 'config.json'))
  except FileNotFoundError:
    raise UserError(f'{hf_dir!r} has no config.json; pass a directory written by transformers\' '
                    'save_pretrained') from None


def architecture(hf: dict) -> str:
  """'gpt2' or 'llama' for a supported HF config, else UserError."""
  names = hf.get('architectures') or []
  supported = [ARCHITECTURES[n] for n in names if n in ARCHITECTURES]
  if not supported:
    raise UserError(f'architecture {names or hf.get("model_type")} is not supported; import a '
                    f'{" or ".join(ARCHITECTURES)} checkpoint')
  return supported[0]


def _refuse(setting: str, ours: str) -> None:
  raise UserError(f"{setting} cannot be computed by this project's model, which has {ours}; "
                  'import another checkpoint')


def _require(hf: dict, key: str, default, allowed: tuple, ours: str) -> None:
  """Refuses a config whose `key` (transformers' `default` where config.json leaves it out) is not
  one of `allowed`; `ours` says what this project's model has instead."""
  value = hf.get(key, default)
  if value not in allowed:
    where = 'in config.json' if key in hf else "transformers' default"
    _refuse(f'{key}={value!r} ({where})', ours)


def _rope_theta(hf: dict) -> float:
  """rope_theta from transformers 4 (rope_theta, rope_scaling) or 5 (rope_parameters) configs;
  any scaling (linear, dynamic, llama3, yarn, ...) is refused: our RoPE is the plain one."""
  params = hf.get('rope_parameters') or {}
  scaling = hf.get('rope_scaling') or {}
  for key, kind in (('rope_parameters', params.get('rope_type', 'default')),
                    ('rope_scaling', scaling.get('rope_type', scaling.get('type')))):
    if kind not in ('default', None):
      _refuse(f'{key} of type {kind!r}', 'plain RoPE')
  return float(params.get('rope_theta', hf.get('rope_theta', 10000.0)))


REQUIRED = {'gpt2': ('vocab_size', 'n_layer', 'n_head', 'n_embd', 'n_positions'),
            'llama': ('vocab_size', 'num_hidden_layers', 'num_attention_heads', 'hidden_size',
                      'intermediate_size')}


def hf_to_config(hf: dict) -> ml_collections.ConfigDict:
  """This project's base_config() with the model section (and seq_len) of an HF config.json.

  Every key that changes what the HF model computes is honoured or refused (UserError naming it);
  the others are dropout rates, token ids and settings of other heads. GPT-2's
  reorder_and_upcast_attn and LLaMA's pretraining_tp change only how HF computes (attention in
  float32, matmuls in slices), which ours matches: softmax in float32, whole matmuls.
  """
  arch = architecture(hf)
  missing = [key for key in REQUIRED[arch] if key not in hf]
  if missing:
    raise UserError(f'config.json has no {", ".join(missing)}, which a {arch} model needs; pass a '
                    'directory written by save_pretrained')
  config = config_lib.base_config()
  m = config.model
  hf_dtype = hf.get('dtype') or hf.get('torch_dtype') or 'float32'
  m.param_dtype = m.dtype = 'bfloat16' if hf_dtype == 'bfloat16' else 'float32'
  m.dropout = 0.0
  m.vocab_size = hf['vocab_size']
  if arch == 'gpt2':
    _require(hf, 'activation_function', 'gelu_new', TANH_GELUS,
             f'the tanh GELU ({", ".join(TANH_GELUS)})')
    _require(hf, 'scale_attn_weights', True, (True,), 'attention scaled by 1/sqrt(head_dim)')
    _require(hf, 'scale_attn_by_inverse_layer_idx', False, (False,),
             'no attention scaling by layer index')
    _require(hf, 'add_cross_attention', False, (False,), 'no cross-attention')
    m.update(n_layer=hf['n_layer'], n_head=hf['n_head'], n_kv_head=hf['n_head'],
             n_embd=hf['n_embd'], head_dim=0, d_ff=hf.get('n_inner') or 0,
             block_size=hf['n_positions'], position='learned', norm='layernorm',
             norm_eps=hf.get('layer_norm_epsilon', 1e-5), mlp='gelu', bias=True,
             tie_embeddings=bool(hf.get('tie_word_embeddings', True)),
             init_std=hf.get('initializer_range', 0.02))
  else:
    _require(hf, 'hidden_act', 'silu', ('silu',), 'SwiGLU with silu')
    for key in ('attention_bias', 'mlp_bias'):
      _require(hf, key, False, (False,), 'no biases in LLaMA-style layers')
    if hf.get('model_type') == 'mistral':
      _require(hf, 'sliding_window', 4096, (None,), 'dense attention')
    n_head = hf['num_attention_heads']
    head_dim = hf.get('head_dim') or hf['hidden_size'] // n_head
    m.update(n_layer=hf['num_hidden_layers'], n_head=n_head,
             n_kv_head=hf.get('num_key_value_heads') or n_head, n_embd=hf['hidden_size'],
             head_dim=0 if head_dim * n_head == hf['hidden_size'] else head_dim,
             d_ff=hf['intermediate_size'], block_size=hf.get('max_position_embeddings', 2048),
             position='rope', rope_theta=_rope_theta(hf), norm='rmsnorm',
             norm_eps=hf.get('rms_norm_eps', 1e-6), mlp='swiglu', bias=False,
             tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
             init_std=hf.get('initializer_range', 0.02))
  config.seq_len = min(m.block_size, 1024)
  model.validate(m, config.seq_len)
  return config


def config_to_hf(m: ml_collections.ConfigDict, tokenizer=None) -> dict:
  """The HF config.json of model config `m` (GPT-2 or LLaMA), or UserError if HF has no
  architecture that computes what `m` does."""
  common = dict(vocab_size=m.vocab_size, initializer_range=m.init_std, dtype=m.param_dtype,
                torch_dtype=m.param_dtype, use_cache=True)
  if tokenizer is not None:
    common.update(bos_token_id=tokenizer.bos_id if tokenizer.bos_id >= 0 else None,
                  eos_token_id=tokenizer.eos_id)
  if m.sliding_window > 0:
    raise UserError(f'model.sliding_window={m.sliding_window}: neither GPT-2 nor LLaMA in '
                    'transformers attends locally; export a run with sliding_window=0')
  if m.qk_norm or m.logit_softcap:
    raise UserError(f'model.qk_norm={m.qk_norm}, model.logit_softcap={m.logit_softcap}: neither '
                    'GPT-2 nor LLaMA in transformers has QK-norm or a logit soft-cap; export a '
                    'run trained without them')
  gpt2 = dict(position='learned', norm='layernorm', mlp='gelu', bias=True)
  llama = dict(position='rope', norm='rmsnorm', mlp='swiglu', bias=False)
  if all(m[k] == v for k, v in gpt2.items()):
    if m.n_kv_head != m.n_head or model.head_size(m) * m.n_head != m.n_embd:
      raise UserError('GPT-2 in transformers has neither grouped-query attention nor a head_dim '
                      'of its own; export a run with n_kv_head=n_head and head_dim=0')
    return dict(architectures=['GPT2LMHeadModel'], model_type='gpt2', n_layer=m.n_layer,
                n_head=m.n_head, n_embd=m.n_embd, n_inner=model.mlp_hidden_size(m),
                n_positions=m.block_size, activation_function='gelu_new',
                layer_norm_epsilon=m.norm_eps, resid_pdrop=m.dropout, embd_pdrop=m.dropout,
                attn_pdrop=m.dropout, scale_attn_weights=True,
                tie_word_embeddings=m.tie_embeddings, **common)
  if all(m[k] == v for k, v in llama.items()):
    return dict(architectures=['LlamaForCausalLM'], model_type='llama', hidden_size=m.n_embd,
                num_hidden_layers=m.n_layer, num_attention_heads=m.n_head,
                num_key_value_heads=m.n_kv_head, head_dim=model.head_size(m),
                intermediate_size=model.mlp_hidden_size(m), hidden_act='silu',
                max_position_embeddings=m.block_size, rms_norm_eps=m.norm_eps,
                rope_theta=m.rope_theta, rope_scaling=None,  # transformers 4
                rope_parameters={'rope_type': 'default', 'rope_theta': m.rope_theta},  # and 5
                attention_bias=False, mlp_bias=False, attention_dropout=m.dropout,
                tie_word_embeddings=m.tie_embeddings, **common)
  settings = ', '.join(f'{k}={m[k]!r}' for k in gpt2)
  raise UserError(f'model ({settings}) is neither GPT-2 (learned, layernorm, gelu, bias) '
                  'nor LLaMA (rope, rmsnorm, swiglu, no bias) style; transformers cannot load it')


# --- tensors ----------------------------------------------------------------------------------


def _weight_files(hf_dir: str) -> list[str]:
  index = os.path.join(hf_dir, INDEX)
  if os.path.exists(index):
    weight_map = _read_json(index).get('weight_map')
    if not isinstance(weight_map, dict):
      raise UserError(f'{index} has no weight_map of tensor names to files; save the model again')
    names = sorted(set(weight_map.values()))
  elif os.path.exists(os.path.join(hf_dir, WEIGHTS)):
    names = [WEIGHTS]
  else:
    raise UserError(f'{hf_dir!r} has no {WEIGHTS} (nor {INDEX}); save the model with '
                    'save_pretrained(..., safe_serialization=True): pickled .bin is not read')
  paths = [os.path.join(hf_dir, name) for name in names]
  for path in paths:
    if not os.path.exists(path):
      raise UserError(f'{path} is missing, though {INDEX} lists it; download every shard')
  return paths


def read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint in `hf_dir`, by its HF name."""
  # a plain dependency; imported here to keep `import` light
  from safetensors import SafetensorError, safe_open
  tensors = {}
  for path in _weight_files(hf_dir):
    try:
      file = safe_open(path, framework='np')  # checks the header and the file's length
    except (OSError, SafetensorError) as e:
      raise UserError(f'cannot read {path}: {e}; download or save the checkpoint again') from None
    # The file is an 8-byte header size, a JSON header, then the raw data; bfloat16 tensors are
    # read from there, as the numpy API of some safetensors versions does not know the dtype.
    with open(path, 'rb') as f:
      header_size = int.from_bytes(f.read(8), 'little')
      header = json.loads(f.read(header_size))
    with file as f:
      for name in f.keys():
        info = header[name]
        if info['dtype'] == 'BF16':
          start, end = info['data_offsets']
          tensors[name] = np.fromfile(path, ml_dtypes.bfloat16, (end - start) // 2,
                                      offset=8 + header_size + start).reshape(info['shape'])
        else:
          tensors[name] = f.get_tensor(name)
  return tensors


def _table(m) -> list[tuple[str, tuple[str, ...], str, int]]:
  """(HF name, our parameter path, layout, number of input axes of our kernel) for every tensor.
  Layouts: 'linear' HF (out, in) weight, 'conv1d' HF (in, out) weight, 'vector' a flat vector,
  'copy' the same shape on both sides. GPT-2's names are without their 'transformer.' prefix."""
  if m.position == 'learned':  # GPT-2; its fused c_attn appears split as attn.{q,k,v}
    rows = [('wte.weight', ('wte', 'embedding'), 'copy', 0), ('wpe.weight', ('wpe',), 'copy', 0),
            ('ln_f.weight', ('ln_f', 'scale'), 'vector', 0),
            ('ln_f.bias', ('ln_f', 'bias'), 'vector', 0)]
    layer = [('ln_1.weight', ('ln_1', 'scale'), 'vector', 0),
             ('ln_1.bias', ('ln_1', 'bias'), 'vector', 0),
             ('ln_2.weight', ('ln_2', 'scale'), 'vector', 0),
             ('ln_2.bias', ('ln_2', 'bias'), 'vector', 0)]
    for hf, ours, n_in in (('attn.q', 'attn/query', 1), ('attn.k', 'attn/key', 1),
                           ('attn.v', 'attn/value', 1), ('attn.c_proj', 'attn/out', 2),
                           ('mlp.c_fc', 'mlp/fc', 1), ('mlp.c_proj', 'mlp/proj', 1)):
      path = tuple(ours.split('/'))
      layer += [(f'{hf}.weight', path + ('kernel',), 'conv1d', n_in),
                (f'{hf}.bias', path + ('bias',), 'vector', 0)]
    layers = 'h'
  else:
    rows = [('model.embed_tokens.weight', ('wte', 'embedding'), 'copy', 0),
            ('model.norm.weight', ('ln_f', 'scale'), 'vector', 0)]
    layer = [('input_layernorm.weight', ('ln_1', 'scale'), 'vector', 0),
             ('post_attention_layernorm.weight', ('ln_2', 'scale'), 'vector', 0)]
    for hf, ours, n_in in (('self_attn.q_proj', 'attn/query', 1),
                           ('self_attn.k_proj', 'attn/key', 1),
                           ('self_attn.v_proj', 'attn/value', 1),
                           ('self_attn.o_proj', 'attn/out', 2), ('mlp.gate_proj', 'mlp/gate', 1),
                           ('mlp.up_proj', 'mlp/up', 1), ('mlp.down_proj', 'mlp/proj', 1)):
      layer.append((f'{hf}.weight', tuple(ours.split('/')) + ('kernel',), 'linear', n_in))
    layers = 'model.layers'
  rows += [(f'{layers}.{i}.{hf}', (f'h_{i}',) + ours, layout, n_in)
           for i in range(m.n_layer) for hf, ours, layout, n_in in layer]
  if not m.tie_embeddings:  # an nn.Linear in both, outside GPT-2's 'transformer.' module
    rows.append(('lm_head.weight', ('lm_head', 'kernel'), 'linear', 1))
  return rows


def _hf_shape(shape: tuple, layout: str, n_in: int) -> tuple:
  flat = (math.prod(shape[:n_in]), math.prod(shape[n_in:]))
  shapes = {'linear': flat[::-1], 'conv1d': flat, 'vector': (math.prod(shape),), 'copy': shape}
  return shapes[layout]


def _to_hf(x: np.ndarray, layout: str, n_in: int) -> np.ndarray:
  if layout == 'linear':
    return np.ascontiguousarray(x.reshape(math.prod(x.shape[:n_in]), -1).T)
  return x.reshape(_hf_shape(x.shape, layout, n_in))


def _per_layer_shapes(m) -> dict:
  """Our parameter shapes (ShapeDtypeStructs), with unscanned layers h_0, h_1, ..."""
  gpt = network.build(ml_collections.ConfigDict({**dict(m.items()), 'scan_layers': False}))
  return jax.eval_shape(lambda: model.init_params(gpt, jax.random.key(0), 1))


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _scan(params: dict, n_layer: int) -> dict:
  """h_0 ... h_{n-1} stacked on a leading axis under 'layers', as nn.scan keeps them."""
  layers = [params.pop(f'h_{i}') for i in range(n_layer)]
  params['layers'] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
  return params


def _unscan(params: dict, n_layer: int) -> dict:
  params = dict(params)
  layers = params.pop('layers')
  for i in range(n_layer):
    params[f'h_{i}'] = jax.tree.map(lambda x: np.asarray(x)[i], layers)
  return params


# Buffers, not weights, that some checkpoints hold: GPT-2's causal masks, old LLaMA's RoPE
# frequencies. Any other tensor the table does not take is refused.
BUFFERS = {'learned': re.compile(r'h\.\d+\.attn\.(bias|masked_bias)'),
           'rope': re.compile(r'model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq')}


def params_from_hf(m: ml_collections.ConfigDict, tensors: dict[str, np.ndarray]) -> dict:
  """Our parameter tree (numpy, in m.param_dtype) from HF tensors, checked name by name and
  shape by shape: a tensor missing, of another shape, or left over is a UserError."""
  file_names = {name: name for name in tensors}  # for messages
  tensors = dict(tensors)
  if m.position == 'learned':
    file_names = {name.removeprefix('transformer.'): name for name in tensors}
    tensors = {name.removeprefix('transformer.'): x for name, x in tensors.items()}
    for i in range(m.n_layer):
      for part in ('weight', 'bias'):
        name = f'h.{i}.attn.c_attn.{part}'
        fused = tensors.pop(name, None)
        if fused is None:
          continue  # missing: the table names the q, k, v it expected
        if fused.shape[-1] != 3 * m.n_embd:
          raise UserError(f'tensor {name!r} has shape {fused.shape}, config.json implies a last '
                          f'axis of 3 * n_embd = {3 * m.n_embd}; check that they belong together')
        for q_k_v, x in zip('qkv', np.split(fused, 3, axis=-1)):
          tensors[f'h.{i}.attn.{q_k_v}.{part}'] = x
  # transformers ties the head to the embedding whatever the file holds, so a tied checkpoint's
  # own lm_head.weight is checked against it after the table.
  tied_head = tensors.pop('lm_head.weight', None) if m.tie_embeddings else None
  shapes = _per_layer_shapes(m)
  dtype = DTYPES[m.param_dtype]
  params = {}
  for hf, path, layout, n_in in _table(m):
    if hf not in tensors:
      raise UserError(f'the checkpoint has no tensor {hf!r}, which config.json implies; check '
                      'that config.json and the weights belong together')
    x, shape = tensors.pop(hf), _get(shapes, path).shape
    if x.shape != _hf_shape(shape, layout, n_in):
      raise UserError(f'tensor {hf!r} has shape {x.shape}, config.json implies '
                      f'{_hf_shape(shape, layout, n_in)}; check that they belong together')
    x = x.T if layout == 'linear' else x
    _set(params, path, np.asarray(x, dtype).reshape(shape))
  if tied_head is not None and not np.array_equal(np.asarray(tied_head, dtype),
                                                  params['wte']['embedding']):
    raise UserError("the checkpoint's lm_head.weight differs from its token embedding, but "
                    'config.json has tie_word_embeddings=true (transformers would replace the '
                    'head); set it to false if the head is its own')
  left = [file_names[name] for name in tensors if not BUFFERS[m.position].fullmatch(name)]
  if left:
    raise UserError(f'the checkpoint has tensors this model has no place for ({left[0]!r}, '
                    f'{len(left)} in all); check that config.json and the weights belong together')
  return _scan(params, m.n_layer) if m.scan_layers else params


def params_to_hf(m: ml_collections.ConfigDict, params) -> dict[str, np.ndarray]:
  """HF tensors (numpy, as their parameters' dtype) of our parameter tree."""
  params = jax.tree.map(np.asarray, jax.device_get(params))
  if 'layers' in params:
    params = _unscan(params, m.n_layer)
  tensors = {hf: _to_hf(_get(params, path), layout, n_in) for hf, path, layout, n_in in _table(m)}
  if m.position == 'learned':
    for i in range(m.n_layer):
      for part in ('weight', 'bias'):
        qkv = [tensors.pop(f'h.{i}.attn.{name}.{part}') for name in 'qkv']
        tensors[f'h.{i}.attn.c_attn.{part}'] = np.concatenate(qkv, axis=-1)
    tensors = {name if name == 'lm_head.weight' else f'transformer.{name}': x
               for name, x in tensors.items()}
  return tensors


# --- load, import, export ---------------------------------------------------------------------


def _config(hf_dir: str, scan_layers: bool) -> ml_collections.ConfigDict:
  """The project config of the HF checkpoint in hf_dir (checked before any weight is read)."""
  if not os.path.isdir(hf_dir):
    raise UserError(f'{hf_dir!r} is not a directory; pass a directory written by save_pretrained')
  config = hf_to_config(read_hf_config(hf_dir))
  config.model.scan_layers = scan_layers
  config.data.tokenizer = tokenizer_lib.find(hf_dir) or ''
  return config


def _params(hf_dir: str, config: ml_collections.ConfigDict):
  return jax.tree.map(jnp.asarray, params_from_hf(config.model, read_tensors(hf_dir)))


def load(hf_dir: str, scan_layers: bool = False) -> tuple[model.GPT, dict]:
  """(model, params) of the HF GPT-2 or LLaMA checkpoint in `hf_dir`:
  model.apply({'params': params}, tokens_BL) gives its logits_BLV."""
  config = _config(hf_dir, scan_layers)
  return network.build(config.model), _params(hf_dir, config)


def import_checkpoint(hf_dir: str, workdir: str, tokenizer: str | None = None,
                      scan_layers: bool = False) -> str:
  """Makes `workdir` (new or empty) a run holding the HF checkpoint: config.json, the tokenizer
  (`tokenizer`, else the one in hf_dir) and a params-only checkpoint at step 0. Returns workdir."""
  if os.path.isdir(workdir) and os.listdir(workdir):  # checked first: reading weights is slow
    raise UserError(f'--workdir={workdir} is not empty; import into a new directory')
  config = _config(hf_dir, scan_layers)
  tokenizer_path = tokenizer or config.data.tokenizer
  if not tokenizer_path:
    raise UserError(f'{hf_dir!r} has no tokenizer.model or tokenizer.json; pass --tokenizer=FILE '
                    '(a sentencepiece .model or a Hugging Face tokenizer.json)')
  tok = tokenizer_lib.load(tokenizer_path)
  if tok.vocab_size > config.model.vocab_size:
    raise UserError(f'the tokenizer {tokenizer_path} has {tok.vocab_size} tokens, more than the '
                    f'model\'s vocab_size={config.model.vocab_size}; pass a tokenizer that fits')
  return runs.write_params_run(workdir, config, tok, _params(hf_dir, config), 0, '--workdir')


def export(run, out_dir: str) -> str:
  """Writes `run` (a run's workdir, or a (config, params) pair) to `out_dir` as an HF directory:
  config.json, model.safetensors and, where HF can use it, the run's tokenizer. Returns out_dir."""
  from safetensors.numpy import save_file
  tokenizer = None
  if isinstance(run, str):
    loaded = runs.load(run)
    config, params, tokenizer = loaded.config, loaded.params, loaded.tokenizer
  else:
    config, params = run
  m = config.model if 'model' in config else config
  if quant.spec(m):
    raise UserError(f'{run if isinstance(run, str) else "the run"} holds {m.quant.format} weights; '
                    'an HF checkpoint holds float ones: export the float run it was quantized '
                    'from (a QLoRA run: `python -m gpt_jax.lora merge` it first)')
  hf_config = config_to_hf(m, tokenizer)
  tensors = params_to_hf(m, params)
  with files.new_directory(out_dir, '--out') as tmp:
    files.write_json(os.path.join(tmp, 'config.json'), hf_config)
    save_file(tensors, os.path.join(tmp, WEIGHTS), metadata={'format': 'pt'})
    # A sentencepiece model serves LLaMA's tokenizer classes; a tokenizer.json serves any model.
    if tokenizer is not None and (tokenizer.filename == 'tokenizer.json' or m.position == 'rope'):
      tokenizer.save(os.path.join(tmp, tokenizer.filename))
  return out_dir


# --- command line -----------------------------------------------------------------------------


def _parse(argv: list[str]):
  parser = cli.ArgumentParser(prog='python -m gpt_jax.hf', description=__doc__.split('\n')[0])
  commands = parser.add_subparsers(dest='command', required=True)
  imp = commands.add_parser('import', help='an HF directory into a run of this project')
  imp.add_argument('hf_dir')
  imp.add_argument('--workdir', required=True)
  imp.add_argument('--tokenizer', default=None, help='tokenizer file, instead of the HF one')
  imp.add_argument('--scan_layers', action='store_true', help='keep the layers stacked (nn.scan)')
  exp = commands.add_parser('export', help='a run of this project into an HF directory')
  exp.add_argument('run_dir')
  exp.add_argument('--out', required=True)
  return parser.parse_args(argv)


def _main(argv: list[str]) -> None:
  args = _parse(argv)
  if args.command == 'import':
    workdir = import_checkpoint(args.hf_dir, args.workdir, args.tokenizer, args.scan_layers)
    print(f'imported {args.hf_dir} into {workdir}')
  else:
    print(f'exported {args.run_dir} to {export(args.run_dir, args.out)}')


def main(argv=None) -> None:
  cli.run(lambda: _main(sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
  main()
