"""FlexGen's zig-zag block schedule: generation a layer at a time over a block of batches, with
each layer's weights loaded once per step for the whole block (Sheng et al. 2023, §4.1, Alg. 1).

For each new token (the prompt's prefill first), for each layer j, for each batch k of the
block: run layer j on batch k's hidden states with batch k's KV cache of layer j. While batch k
computes, one I/O thread brings layer j + 1's weights to the device and another moves caches:
batch k + 1's cache in, batch k's new token slots out (offload.tiers), so the device holds two
layers' weights and two batches' caches beyond what the policy keeps there. With the policy's
attention_on_host (FlexGen's CPU delegation), a layer whose cache is on the host or disk runs
its attention on the host's CPU where the cache is (model.KVCache and
attention.cached_attention, the decoding path's own), so only the batch's new queries, keys and
values go to the host and the attention's output comes back, not the cache. The row-by-row
schedule (every layer reloaded for every batch: what Hugging Face Accelerate's offloading does)
is this one with a block of a single batch.

The embedding and the head stay on the device (the policy counts them as resident); the blocks
are model.Block, applied one at a time, so the tokens are the model's own: greedy tokens equal
gpt_jax.sample's for the same prompts whatever the placement.

Shape suffixes as in model.py, plus P prompt length (the block's longest, left-padded) and T new
tokens.
"""

import concurrent.futures
import dataclasses
import functools
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import attention, config as config_lib, losses, model, network, quant, sample
from gpt_jax.offload import compression, hardware, policy as policy_lib, tiers
from gpt_jax.offload.disk import DiskStore

# What this executor keeps in place, for the policy's program (policy.solve's `fixed`): the
# hidden states between layers stay on the device, as FlexGen's own policies keep them (a few
# rows per sequence); the program places the weights and the cache.
FIXED_FRACTIONS = {'activations': (1.0, 0.0, 0.0)}


def workload(model, prompt_len: int, gen_len: int, layer,
             codec: compression.CacheCodec | None = None) -> policy_lib.Workload:
  """What the policy plans for, as this executor stores and computes it: bytes per parameter
  those of `layer` (one block's parameters as stored: quantized ones with their scales), the
  activations in the compute dtype (model.dtype), the cache in it too or in the codec's bytes."""
  w = policy_lib.Workload.of(model, prompt_len, gen_len)
  compute = jnp.dtype(model.dtype).itemsize
  stored = sum(np.asarray(a).nbytes for a in jax.tree.leaves(layer))
  return dataclasses.replace(w, weight_bytes=stored / w.layer_params, activation_bytes=compute,
                             cache_bytes=codec.bytes_per_value if codec else compute)


def layer_params(params, config, j: int):
  """Layer j's parameters from a whole model's (either layout: 'h_j', or nn.scan's 'layers')."""
  if config.scan_layers:
    return jax.tree.map(lambda a: a[j], params['layers'])
  return params[f'h_{j}']


def resident_params(params) -> dict:
  """The parameters outside the blocks: embeddings, final norm, head."""
  return {name: value for name, value in params.items()
          if name != 'layers' and not name.startswith('h_')}


@dataclasses.dataclass
class Offloaded:
  """A GPT split for offloaded generation: the embedding and head's parameters on the device, a
  float model.Block per layer, and each layer's weights on the tier the policy gives it, as
  stored (e.g. bfloat16, or quantized); `load(j)` brings them to the device in the compute dtype,
  dequantized, once per layer and step for the whole block (FlexGen decompresses so too)."""
  gpt: model.GPT
  resident: dict
  blocks: list
  weights: tiers.LayerWeights

  def load(self, j: int):
    return _compute_weights(self.gpt.config, self.weights.load(j))

  @classmethod
  def place(cls, gpt: model.GPT, resident: dict, layer: Callable[[int], dict],
            weight_fractions: tuple[float, float, float], store: DiskStore | None,
            prefix: str = 'weights') -> 'Offloaded':
    """Places each layer's weights (layer(j): a tree of arrays, asked for one at a time so the
    whole model is never needed at once) by the fractions (device, host, disk). A layer bound
    for the disk that `store` already holds (as group f'{prefix}_{j}') is used as it is."""
    c = gpt.config
    weights = tiers.LayerWeights(tiers.layer_tiers(weight_fractions, c.n_layer), store, prefix)
    for j in range(c.n_layer):
      if weights.tiers[j] != 'disk' or weights.group(j) not in store:
        weights.put(j, layer(j))
    blocks = [model.Block(c, model.layer_window(c, j)) for j in range(c.n_layer)]
    spec = quant.spec(c)
    if not (spec and spec.embeddings):  # float tables: converted once, not at every call
      resident = _in_compute_dtype(c.dtype, resident)
    return cls(gpt, tiers.to_device(resident), blocks, weights)


@functools.partial(jax.jit, static_argnums=0)
def _compute_weights(config, params):
  """One layer's stored weights as its float Block multiplies them: dequantized if the model is
  quantized (gpt_jax.quant), in the compute dtype."""
  if quant.spec(config):  # straight to the compute dtype, as the quantized model's matmuls do
    params = quant.dequantize_params({'h_0': params}, config, config.dtype)['h_0']
  return _in_compute_dtype(config.dtype, params)


def _in_compute_dtype(dtype, params):
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                      params)


@functools.partial(jax.jit, static_argnums=0)
def _embed(gpt, resident, tokens_BL, positions_BL):
  return gpt.apply({'params': resident}, tokens_BL, positions_BL, method='embed')


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _layer(block, params, cache, x_ND, positions_BL):
  """One layer over one batch: the new hidden states, the whole new cache and the slots this
  call wrote (cached_key, cached_value, cached_positions at the old write index)."""
  x_ND, variables = block.apply({'params': params, 'cache': cache}, x_ND, positions_BL, None,
                                True, True, mutable=['cache'])
  new = variables['cache']
  return x_ND, new, _new_slots(new['attn'], cache['attn']['index'], positions_BL.shape[1])


def _new_slots(attn_cache, start, length: int) -> dict:
  return {name: jax.lax.dynamic_slice_in_dim(attn_cache[name], start, length, axis=1)
          for name in ('cached_key', 'cached_value', 'cached_positions')}


def _layer_on_host(block, params, cache, x_ND, positions_BL):
  """One layer over one batch with its attention computed on the host over a cache kept there
  (FlexGen's CPU delegation: the cache never moves to the device; the queries, new keys and
  values move to the host and the attention's output back), the rest on the device: the new
  hidden states and the slots written, as _layer gives them."""
  qkv = tiers.to_host_cpu(_attention_inputs(block, params, x_ND, positions_BL))
  out_BLHE, slots = _attend(block, cache, *qkv, tiers.to_host_cpu(positions_BL))
  return _attention_outputs(block, params, x_ND, tiers.to_device(out_BLHE)), slots


@functools.partial(jax.jit, static_argnums=0)
def _attention_inputs(block, params, x_ND, positions_BL):
  return block.apply({'params': params}, x_ND, positions_BL, method='attention_inputs')


@functools.partial(jax.jit, static_argnums=0)
def _attend(block, cache, q_BLHE, k_BLKE, v_BLKE, positions_BL):
  """block's attention over its cache (model.KVCache, the decoding path's own), run where the
  arguments are: the output (B, L, H, E) and the slots written."""
  (k_BSKE, v_BSKE, k_positions_BS), new = model.KVCache().apply(
      {'cache': cache['attn']}, k_BLKE, v_BLKE, positions_BL, mutable=['cache'])
  out_BLHE = attention.cached_attention(q_BLHE, k_BSKE, v_BSKE, positions_BL, k_positions_BS,
                                        window=block.window,
                                        implementation=block.config.attention)
  return out_BLHE, _new_slots(new['cache'], cache['attn']['index'], positions_BL.shape[1])


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _attention_outputs(block, params, x_ND, out_BLHE):
  return block.apply({'params': params}, x_ND, out_BLHE, method='attention_outputs')


def _last_logits(gpt, resident, x_ND, length: int):
  """The float32 logits (B, V) of each row's last position of x_ND (B rows of `length`)."""
  last_BD = x_ND.reshape(-1, length, x_ND.shape[-1])[:, -1]
  return gpt.apply({'params': resident}, last_BD, method='head').astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=('gpt', 'length', 'temperature', 'top_k', 'top_p',
                                             'num_tokens'))
def _next_token(gpt, resident, x_ND, rng, rows_B, t, *, length, temperature, top_k, top_p,
                num_tokens):
  """The next token (B,) after each row's last position of x_ND (B rows of `length`), drawn
  with a key of its own (rng, row, t): a prompt's samples do not depend on the block it is in."""
  logits_BV = _last_logits(gpt, resident, x_ND, length)
  keys_B = jax.vmap(lambda row: jax.random.fold_in(jax.random.fold_in(rng, row), t))(rows_B)
  choose = lambda logits_V, key: sample.next_token(
      logits_V[None], key, temperature=temperature, top_k=top_k, top_p=top_p,
      num_tokens=num_tokens)[0]
  return jax.vmap(choose)(logits_BV, keys_B)


def compile_steps(off: Offloaded, batch_size: int, prompt_len: int, max_new_tokens: int,
                  attention_on_host: bool = False, **settings) -> None:
  """Compiles what generation at these sizes runs (the prefill's and a decode step's shapes,
  the attention on the host too with attention_on_host), on layer 0 and zeros, so that a timed
  run measures generation alone. settings: sampling's."""
  c = off.gpt.config
  empty = tiers.empty_block_cache(off.blocks[0], batch_size, prompt_len + max_new_tokens,
                                  c.n_embd, c.dtype)
  params = off.load(0)
  for length in (prompt_len, 1):
    tokens_BL = np.zeros((batch_size, length), np.int32)
    if attention_on_host:
      _layer_on_host(off.blocks[0], params, tiers.to_host_cpu(empty),
                     _embed(off.gpt, off.resident, tokens_BL, tokens_BL), tokens_BL)
    x_ND = _embed(off.gpt, off.resident, tokens_BL, tokens_BL)
    x_ND, _, _ = _layer(off.blocks[0], params, tiers.to_device(empty), x_ND, tokens_BL)
    rows_B = np.arange(batch_size, dtype=np.int32)
    np.asarray(_next_token(off.gpt, off.resident, x_ND, jax.random.key(0), rows_B, 0,
                           length=length, **settings))


def machine(device_memory: float, host_memory: float, disk_memory: float,
            disk_dir: str | None, config, layer) -> policy_lib.Hardware:
  """This machine as the policy sees it for this executor: offload.hardware's measurements
  under the budgets (bytes), the schedule's own fixed costs per call, and the time it takes to
  convert one layer for compute (`layer`: one block's parameters as stored, of the GPT whose
  frozen config is `config`)."""
  measured = hardware.measure(device_memory, host_memory, disk_memory, disk_dir)
  overhead, on_host = call_overheads(disk_dir)
  return dataclasses.replace(measured, call_overhead=overhead,
                             delegation_overhead=max(on_host - overhead, 0.0),
                             convert_s=convert_seconds(config, layer))


def convert_seconds(config, layer, repeats: int = 3) -> float:
  """The fastest of `repeats` conversions of `layer` (stored parameters) into what a Block
  multiplies (_compute_weights: dequantized, in the compute dtype), after a compiling one."""
  stored = tiers.to_device(layer)
  convert = lambda: jax.block_until_ready(_compute_weights(config, stored))
  convert()
  return min(_seconds(convert) for _ in range(repeats))


def call_overheads(disk_dir: str | None, repeats: int = 3) -> tuple[float, float]:
  """Seconds per (layer, batch) step of this schedule beyond its FLOPs and bytes: its dispatch,
  thread hand-offs and small copies (policy.Hardware.call_overhead), for an ordinary step and
  for one whose attention runs on the host, timed on a GPT too small for anything else to
  count, its weights and cache on the host and, with disk_dir, on disk (files in a folder made
  and removed there)."""
  m = config_lib.base_config().model
  m.update(vocab_size=64, n_layer=4, n_head=2, n_kv_head=2, n_embd=32, block_size=16)
  gpt = network.build(m)
  params = jax.jit(model.init_params, static_argnums=(0, 2))(gpt, jax.random.key(0), 1)
  fractions = (0.0, 0.5, 0.5) if disk_dir else (0.0, 1.0, 0.0)
  folder = tempfile.mkdtemp(prefix='probe_', dir=disk_dir) if disk_dir else None
  num_batches, steps = 4, 4
  try:
    store = DiskStore(folder) if folder else None
    off = Offloaded.place(gpt, resident_params(params),
                          lambda j: layer_params(params, gpt.config, j), fractions, store)

    def per_step(attention_on_host: bool) -> float:
      decode = lambda: list(generate_blocks(off, fractions, [[1, 2, 3, 4]] * num_batches,
                                            batch_size=1, num_batches=num_batches,
                                            max_new_tokens=steps, store=store,
                                            attention_on_host=attention_on_host))
      decode()  # compiles
      seconds = min(_seconds(decode) for _ in range(repeats))
      return seconds / (m.n_layer * num_batches * steps)

    return per_step(False), per_step(True)
  finally:
    if folder:
      shutil.rmtree(folder, ignore_errors=True)


def _seconds(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _pad_block(prompts: Sequence[Sequence[int]], rows: int) -> list:
  """The prompts, the last one repeated up to `rows` (a final block that is not full)."""
  return list(prompts) + [prompts[-1]] * (rows - len(prompts))


def generate_blocks(off: Offloaded, cache_fractions: tuple[float, float, float],
                    prompts: Sequence[Sequence[int]], *, batch_size: int, num_batches: int,
                    max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                    top_p: float = 1.0, eos_id: int = -1, seed: int = 0,
                    num_tokens: int | None = None, store: DiskStore | None = None,
                    first_row: int = 0, codec: compression.CacheCodec | None = None,
                    attention_on_host: bool = False) -> Iterator[list[list[int]]]:
  """The continuations of each block of batch_size · num_batches prompts, block after block:
  each up to max_new_tokens or its first EOS (not included), chosen as sample.next_token
  chooses (greedy at temperature 0). Prompt i draws with key (seed, first_row + i), so a run
  resumed at prompt first_row samples what the whole run would have. With a codec the KV cache
  is kept in 4 bits (offload.compression); with attention_on_host the attention over a cache
  off the device runs on the host (FlexGen's CPU delegation). UserError as sample.pad_prompts
  raises it, before any work."""
  sample.check_sampling(temperature, top_k, top_p)
  bls = batch_size * num_batches
  context = sample.context_length(off.gpt.config)
  sample.pad_prompts(prompts, max_new_tokens, context)
  settings = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                  num_tokens=num_tokens)
  for first in range(0, len(prompts), bls):
    block = prompts[first:first + bls]
    rows_R = first_row + first + np.arange(bls, dtype=np.int32)
    out_RT, _ = _generate_block(off, cache_fractions, _pad_block(block, bls), rows_R,
                                batch_size, num_batches, max_new_tokens, eos_id,
                                jax.random.key(seed), store, codec, settings,
                                attention_on_host=attention_on_host)
    yield sample.strip(out_RT[:len(block)], eos_id)


def score_blocks(off: Offloaded, cache_fractions: tuple[float, float, float],
                 prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *,
                 batch_size: int, num_batches: int, store: DiskStore | None = None,
                 codec: compression.CacheCodec | None = None, num_tokens: int | None = None,
                 attention_on_host: bool = False) -> Iterator[list[float]]:
  """The log-likelihood (nats, float) of each continuation (all of one length T) after its
  prompt, block after block, computed through the same schedule, tiers and cache compression
  as generate_blocks (teacher forcing: each step reads the continuation's token, not the
  model's choice); ids >= num_tokens get no probability, as in sampling."""
  T = len(continuations[0])
  if any(len(c) != T for c in continuations) or len(continuations) != len(prompts) or not T:
    raise ValueError('give one continuation per prompt, all of the same positive length')
  sample.pad_prompts(prompts, T, sample.context_length(off.gpt.config))
  bls = batch_size * num_batches
  settings = dict(temperature=0.0, top_k=0, top_p=1.0, num_tokens=num_tokens)
  for first in range(0, len(prompts), bls):
    block = prompts[first:first + bls]
    forced_RT = np.asarray(_pad_block(continuations[first:first + bls], bls), np.int32)
    _, log_prob_R = _generate_block(off, cache_fractions, _pad_block(block, bls),
                                    np.zeros(bls, np.int32), batch_size, num_batches, T, -1,
                                    jax.random.key(0), store, codec, settings, forced_RT,
                                    attention_on_host)
    yield log_prob_R[:len(block)].tolist()


@functools.partial(jax.jit, static_argnames=('gpt', 'length', 'num_tokens'))
def _log_prob(gpt, resident, x_ND, targets_B, *, length, num_tokens):
  """log p(target) (B,) after each row's last position of x_ND (B rows of `length`)."""
  logits_BV = _last_logits(gpt, resident, x_ND, length)
  log_p_BV = jax.nn.log_softmax(losses.mask_padded_vocab(logits_BV, num_tokens))
  return jnp.take_along_axis(log_p_BV, targets_B[:, None], axis=-1)[:, 0]


def _generate_block(off, cache_fractions, prompts, rows_R, batch_size, num_batches,
                    max_new_tokens, eos_id, rng, store, codec, settings, forced_RT=None,
                    attention_on_host=False) -> tuple[np.ndarray, np.ndarray]:
  """(tokens (R, T), summed log-probs (R,) of forced_RT's tokens when given: then each step
  reads those, not the chosen ones)."""
  c = off.gpt.config
  tokens_RP, positions_RP = sample.pad_prompts(prompts, max_new_tokens,
                                               sample.context_length(c))
  P, T = tokens_RP.shape[1], max_new_tokens
  batches = [slice(k * batch_size, (k + 1) * batch_size) for k in range(num_batches)]
  empty = tiers.empty_block_cache(off.blocks[0], batch_size, P + T, c.n_embd, c.dtype)
  cache = tiers.LayerCache(tiers.layer_tiers(cache_fractions, c.n_layer), empty, num_batches,
                           store, codec, attention_on_host)
  out_RT = np.zeros((len(prompts), T), np.int32)
  log_prob_R = np.zeros(len(prompts), np.float64)
  done_R = np.zeros(len(prompts), bool)
  next_position_R = positions_RP[:, -1] + 1
  with concurrent.futures.ThreadPoolExecutor(1) as weight_io, \
       concurrent.futures.ThreadPoolExecutor(1) as cache_io:
    for t in range(T):
      if t == 0:
        tokens_RL, positions_RL, start = tokens_RP, positions_RP, 0
      else:
        tokens_RL, positions_RL = out_RT[:, t - 1:t], (next_position_R + t - 1)[:, None]
        start = P + t - 1
      x = [_embed(off.gpt, off.resident, tokens_RL[b], positions_RL[b]) for b in batches]
      _run_layers(off, cache, x, [positions_RL[b] for b in batches], start, weight_io,
                  cache_io)
      for k, b in enumerate(batches):
        if forced_RT is not None:
          log_prob_R[b] += np.asarray(_log_prob(off.gpt, off.resident, x[k], forced_RT[b, t],
                                                length=tokens_RL.shape[1],
                                                num_tokens=settings['num_tokens']))
          out_RT[b, t] = forced_RT[b, t]
          continue
        token_B = np.asarray(_next_token(off.gpt, off.resident, x[k], rng, rows_R[b], t,
                                         length=tokens_RL.shape[1], **settings))
        out_RT[b, t] = np.where(done_R[b], eos_id, token_B)
      done_R |= out_RT[:, t] == eos_id
      if done_R.all():
        out_RT[:, t + 1:] = eos_id
        break
  return out_RT, log_prob_R


def _run_layers(off, cache, x, positions, start, weight_io, cache_io) -> None:
  """Every layer over every batch of the block (x: each batch's hidden states, updated in
  place), in the zig-zag order, with the next weights and caches loading meanwhile."""
  n_layer, num_batches = len(off.blocks), len(x)
  order = [(j, k) for j in range(n_layer) for k in range(num_batches)]
  weights = weight_io.submit(off.load, 0)
  loading = cache_io.submit(cache.load, 0, 0)
  stores = []
  for i, (j, k) in enumerate(order):
    if k == 0:
      # JAX dispatches ahead; waiting for layer j - 1 here keeps two layers' weights alive (the
      # one computing, the one loading), as the policy counts, not every layer queued.
      jax.block_until_ready(x)
      params = weights.result()
      if j + 1 < n_layer:
        weights = weight_io.submit(off.load, j + 1)
    layer_cache = loading.result()
    if i + 1 < len(order):
      loading = cache_io.submit(cache.load, *order[i + 1])
    if cache.on_host(j):
      x[k], slots = _layer_on_host(off.blocks[j], params, layer_cache, x[k], positions[k])
      kept = None
    else:
      x[k], new, slots = _layer(off.blocks[j], params, layer_cache, x[k], positions[k])
      kept = new if cache.tiers[j] == 'device' else None
    stores.append(cache_io.submit(cache.store_step, j, k, kept, slots, start))
  for store in stores:  # every slot written (or its error raised) before the next step
    store.result()
