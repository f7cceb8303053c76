"""FlexGen's offloading policy: where weights, KV cache and activations live, and the block to
run, chosen by a linear program over a cost model (Sheng et al. 2023, "FlexGen: High-Throughput
Generative Inference of Large Language Models with a Single GPU", §4.2–4.3).

Generation is a grid of (token, layer) columns over batches. The zig-zag block schedule runs a
layer over `num_batches` batches of `batch_size` sequences (a block of bls = batch_size ·
num_batches) before the next layer, so each weight load is shared by the whole block, while the
next layer's weights and the next batch's cache and activations move between the tiers (device,
host, disk) in the background. With every transfer overlapped, one layer of a step takes as long
as the slowest of its five streams:

  T_layer = max(host→device, device→host, disk→host, host→disk, compute)

where compute is itself the roofline max(FLOPs / peak, bytes read / memory bandwidth) of the
device (and of the host for attention it runs), each term linear in the fractions w (weights), c
(KV cache), h (activations) kept on each tier. A run's time is l·(T_prefill + (n − 1)·T_decode)
for l layers, a prompt of s and n new tokens, and its throughput bls·n over that. For fixed bls
the time is minimised by a linear program in the nine fractions and the two per-layer times
(epigraph variables of the maxima), under each tier's memory budget, working buffers included; the
block sizes and where attention over an offloaded cache runs (on the device, after moving the
cache; or where the cache is, FlexGen's CPU delegation) are enumerated around it, as in the paper.

Units: bytes, seconds, FLOP/s, bytes/s. Shapes: l layers, D model width, H query heads of E
features, K key/value heads, F MLP hidden, s prompt tokens, n new tokens.
"""

import dataclasses
import itertools

import numpy as np
import scipy.optimize

from gpt_jax import flops
from gpt_jax.errors import UserError
from gpt_jax.model import head_size, mlp_hidden_size

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Hardware:
  """The memory of each tier (bytes; what the run may use, not what the machine has), the
  compute rate (FLOP/s) and memory bandwidth (bytes/s) of the device and of the host, each
  link's bandwidth (bytes/s), and the fixed costs that make many small batches slower than a few
  large ones: launching a layer on a batch, and one disk operation (seconds)."""
  device_memory: float
  host_memory: float
  disk_memory: float
  device_flops: float
  host_flops: float
  device_bandwidth: float
  host_bandwidth: float
  host_to_device: float
  device_to_host: float
  disk_to_host: float
  host_to_disk: float
  call_overhead: float = 0.0  # seconds per layer run on one batch, beyond its FLOPs and bytes
  disk_latency: float = 0.0  # seconds per read or write of one group on disk, beyond its bytes
  # seconds added to such a run when its attention is computed on the host (CPU delegation:
  # more launches, and the queries, keys, values and output moved between the two)
  delegation_overhead: float = 0.0
  # seconds to turn one layer's stored weights into the compute dtype (dequantized, or widened
  # from bfloat16), once per layer and step for the whole block, on the same processor
  convert_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class Workload:
  """What is generated and how it is stored: the model's per-layer shape, s prompt tokens and n
  new ones per sequence, and bytes per weight, per cached value and per activation (2.0 for
  bfloat16; 4-bit groups of 64 with a bfloat16 minimum and scale: 0.5 + 4/64)."""
  n_layer: int
  layer_params: int  # parameters of one Transformer block
  other_params: int  # token embedding, positions, final norm and head: resident, never streamed
  n_embd: int
  kv_features: int  # K·E: the features of one cached key (and one value) per token
  attention_features: int  # H·E
  mlp_hidden: int
  prompt_len: int
  gen_len: int
  weight_bytes: float = 2.0
  cache_bytes: float = 2.0
  activation_bytes: float = 2.0

  @classmethod
  def of(cls, model, prompt_len: int, gen_len: int, **bytes_per_value) -> 'Workload':
    """The workload of a model config (config.model)."""
    blocks = flops.param_count(model, embeddings=False) - flops.param_count(
        _without_layers(model), embeddings=False)
    E = head_size(model)
    return cls(model.n_layer, blocks // model.n_layer,
               flops.param_count(model) - blocks, model.n_embd, model.n_kv_head * E,
               model.n_head * E, mlp_hidden_size(model), prompt_len, gen_len,
               **bytes_per_value)


def _without_layers(model):
  other = model.copy_and_resolve_references()
  other.n_layer = 0
  return other


@dataclasses.dataclass(frozen=True)
class Policy:
  """A FlexGen policy: the block (num_batches batches of batch_size sequences), the fraction of
  the weights, the KV cache and the activations on each tier (device, host, disk), whether
  attention over the cache off the device runs where that cache is ('host'; CPU delegation) or
  on the device, and the cost model's time per layer and throughput."""
  batch_size: int
  num_batches: int
  weights: tuple[float, float, float]
  cache: tuple[float, float, float]
  activations: tuple[float, float, float]
  attention_on_host: bool
  prefill_s: float  # one layer of the prefill of a block
  decode_s: float  # one layer of one decode step of a block
  tokens_per_s: float

  @property
  def block_size(self) -> int:
    return self.batch_size * self.num_batches

  def describe(self) -> str:
    pct = lambda f: '/'.join(f'{abs(100 * v):.0f}' for v in f)  # no '-0' of a rounded -1e-12
    return (f'blocks of {self.num_batches} batches × {self.batch_size} sequences; '
            f'weights {pct(self.weights)}, '
            f'cache {pct(self.cache)}, activations {pct(self.activations)} % on device/host/disk'
            f'{"; attention over the host cache on the host" if self.attention_on_host else ""}; '
            f'predicted {self.tokens_per_s:.3g} tokens/s')


# The LP's variables: the nine fractions (weights, cache, activations × device, host, disk),
# then the prefill and decode times of one layer.
_W, _C, _A = 0, 3, 6
_PREFILL, _DECODE = 9, 10
_G, _H, _D = 0, 1, 2  # tier offsets


class _Rows:
  """Linear constraints a·x <= b, built one row at a time from {variable: coefficient}."""

  def __init__(self):
    self.a, self.b = [], []

  def add(self, coefficients: dict, bound: float) -> None:
    row = np.zeros(11)
    for index, value in coefficients.items():
      row[index] += value
    self.a.append(row)
    self.b.append(bound)


def _streams(w: Workload, hw: Hardware, bls: int, prefill: bool, attention_on_host: bool,
             num_batches: int = 1) -> list[dict]:
  """The per-layer times of one block as {variable: seconds per unit fraction} (plus a
  constant under key None): host→device, device→host, disk→host, host→disk, and the compute's
  roofline terms (FLOPs, then bytes read from memory). Each of the num_batches batches is one
  launch and, for a cache on disk, one read and one write."""
  s, n = w.prompt_len, w.gen_len
  weights = w.layer_params * w.weight_bytes
  kv_token = 2 * w.kv_features * w.cache_bytes  # a key and a value
  if prefill:
    tokens, context = s, s / 2  # each prompt token attends to half the prompt on average
    cache_read, cache_written = 0.0, bls * s * kv_token
    activations = bls * s * w.n_embd * w.activation_bytes
  else:
    tokens, context = 1, s + n / 2  # a decode step attends to the prompt and half the answer
    cache_read, cache_written = bls * context * kv_token, bls * kv_token
    activations = bls * w.n_embd * w.activation_bytes
  matmul_flops = 2 * w.layer_params * bls * tokens
  attention_flops = 4 * bls * tokens * context * w.attention_features
  off = lambda base: {base + _H: 1.0, base + _D: 1.0}
  # The cache read by attention moves to the device unless attention runs where it is.
  read_to_device = 0.0 if attention_on_host else cache_read
  to_device = {**{k: weights for k in off(_W)}, **{k: read_to_device for k in off(_C)},
               **{k: activations for k in off(_A)}}
  to_host = {**{k: cache_written for k in off(_C)}, **{k: activations for k in off(_A)}}
  from_disk = {_W + _D: weights, _C + _D: cache_read, _A + _D: activations}
  to_disk = {_C + _D: cache_written, _A + _D: activations}
  # Every weight is read from the device's memory once per layer and block (offloaded ones
  # after their copy arrives), the cache by whoever runs attention over it.
  compute = {None: matmul_flops / hw.device_flops}
  memory = {None: weights / hw.device_bandwidth}
  if attention_on_host:  # the device's share of the cache on the device, the rest on the host
    delegated = attention_flops / hw.host_flops + num_batches * hw.delegation_overhead
    compute.update({_C + _G: attention_flops / hw.device_flops, _C + _H: delegated,
                    _C + _D: delegated})
    memory.update({_C + _G: cache_read / hw.device_bandwidth,
                   _C + _H: cache_read / hw.host_bandwidth,
                   _C + _D: cache_read / hw.host_bandwidth})
  else:
    compute[None] += attention_flops / hw.device_flops
    memory[None] += cache_read / hw.device_bandwidth
  compute[None] += num_batches * hw.call_overhead + hw.convert_s
  scale = lambda terms, rate: {k: v / rate for k, v in terms.items()}
  from_disk, to_disk = scale(from_disk, hw.disk_to_host), scale(to_disk, hw.host_to_disk)
  from_disk[_W + _D] += hw.disk_latency
  for stream in (from_disk, to_disk):
    stream[_C + _D] += num_batches * hw.disk_latency
  return [scale(to_device, hw.host_to_device), scale(to_host, hw.device_to_host), from_disk,
          to_disk, compute, memory]


def _memory(w: Workload, batch_size: int, bls: int, attention_on_host: bool
            ) -> list[tuple[dict, float]]:
  """Per tier ({variable: bytes per unit fraction}, constant bytes): what it stores for the whole
  run (every layer's share of the weights and of the block's cache at its longest; the block's
  hidden states between two layers) and its working buffers (two layers' weights and two
  batches' cache in flight: the one in use and the one loading)."""
  s, n, l = w.prompt_len, w.gen_len, w.n_layer
  weights = w.layer_params * w.weight_bytes
  kv_token = 2 * w.kv_features * w.cache_bytes
  cache = bls * (s + n) * kv_token  # one layer's, the whole block
  activations = bls * s * w.n_embd * w.activation_bytes  # the block's hidden states (prefill)
  batch_cache = batch_size * (s + n) * kv_token
  # The prefill's largest temporaries for one batch: scores (H·s·s... in blocks) are bounded by
  # the MLP's hidden rows and the query/key/value rows.
  scratch = batch_size * s * (w.mlp_hidden + 3 * w.attention_features) * 4
  # The executor computes in the activations' dtype: the resident embeddings and head are kept
  # in it, two layers' weights are in flight in it (the one running, the next one converted or
  # dequantized), and so are two batches' caches when stored compressed.
  resident = w.other_params * max(w.weight_bytes, w.activation_bytes)
  converted = 2 * w.layer_params * w.activation_bytes
  if w.cache_bytes < w.activation_bytes:
    converted += 2 * batch_size * (s + n) * 2 * w.kv_features * w.activation_bytes
  device = ({_W + _G: l * weights, _C + _G: l * cache, _A + _G: activations,
             # in flight: the next layer's weights from host and disk, a batch's cache from them
             _W + _H: 2 * weights, _W + _D: 2 * weights},
            resident + converted + scratch + 2 * batch_size * s * w.n_embd * w.activation_bytes)
  if not attention_on_host:
    device[0].update({_C + _H: 2 * batch_cache, _C + _D: 2 * batch_cache})
  host = ({_W + _H: l * weights, _C + _H: l * cache, _A + _H: activations,
           _W + _D: 2 * weights, _C + _D: 2 * batch_cache}, 0.0)
  disk = ({_W + _D: l * weights, _C + _D: l * cache, _A + _D: activations}, 0.0)
  return [device, host, disk]


def _bounds(fixed: dict) -> list[tuple]:
  bounds = [(0, 1)] * 9 + [(0, None)] * 2
  for name, fractions in fixed.items():
    base = {'weights': _W, 'cache': _C, 'activations': _A}[name]
    bounds[base:base + 3] = [(f, f) for f in fractions]
  return bounds


def solve(w: Workload, hw: Hardware, batch_size: int, num_batches: int,
          attention_on_host: bool, fixed: dict | None = None) -> Policy | None:
  """The best fractions for one block shape (the linear program), or None if nothing fits.
  fixed: fractions (device, host, disk) the program must keep, by name ('weights', 'cache',
  'activations'): e.g. activations=(1, 0, 0) for an executor that keeps them on the device."""
  bls = batch_size * num_batches
  rows = _Rows()
  for variable, prefill in ((_PREFILL, True), (_DECODE, False)):
    for stream in _streams(w, hw, bls, prefill, attention_on_host, num_batches):
      constant = stream.pop(None, 0.0)
      rows.add({**stream, variable: -1.0}, -constant)  # stream <= T
  capacities = (hw.device_memory, hw.host_memory, hw.disk_memory)
  for (coefficients, constant), capacity in zip(_memory(w, batch_size, bls, attention_on_host),
                                                capacities):
    if constant > capacity:
      return None
    rows.add(coefficients, capacity - constant)
  equalities = np.zeros((3, 11))
  for i, base in enumerate((_W, _C, _A)):
    equalities[i, base:base + 3] = 1.0
  cost = np.zeros(11)
  cost[_PREFILL], cost[_DECODE] = w.n_layer, w.n_layer * (w.gen_len - 1)
  result = scipy.optimize.linprog(cost, A_ub=np.array(rows.a), b_ub=np.array(rows.b),
                                  A_eq=equalities, b_eq=np.ones(3),
                                  bounds=_bounds(fixed or {}), method='highs')
  if result.status != 0:
    return None
  x = np.clip(result.x, 0.0, 1.0)
  total = result.fun
  return Policy(batch_size, num_batches, tuple(x[_W:_W + 3]), tuple(x[_C:_C + 3]),
                tuple(x[_A:_A + 3]), attention_on_host, float(result.x[_PREFILL]),
                float(result.x[_DECODE]), bls * w.gen_len / total)


def search(w: Workload, hw: Hardware, batch_sizes=(1, 2, 4, 8, 16, 32, 64),
           num_batches=(1, 2, 4, 8, 16, 32), attention_on_host=(False, True),
           fixed: dict | None = None, max_block: int | None = None) -> Policy:
  """The policy of highest predicted throughput over the block shapes (up to max_block
  sequences) and attention placements given (FlexGen's search), each solved by `solve` (with
  `fixed`). UserError, naming the budget to raise, when no block fits."""
  best = None
  for batch_size, count, on_host in itertools.product(batch_sizes, num_batches,
                                                      attention_on_host):
    if max_block and batch_size * count > max_block:
      continue
    policy = solve(w, hw, batch_size, count, on_host, fixed)
    if policy and (best is None or policy.tokens_per_s > best.tokens_per_s):
      best = policy
  if best is None:
    mib = lambda n: f'{n / 2**20:.1f} MiB'
    coefficients, fixed_bytes = _memory(w, 1, 1, True)[0]
    smallest = fixed_bytes + coefficients[_W + _D]  # one sequence, every weight streamed
    resident = w.other_params * max(w.weight_bytes, w.activation_bytes)
    raise UserError(
        f'no policy fits: a block of one sequence needs at least {mib(smallest)} on the device '
        f'(the resident embeddings and head, {mib(resident)}; two layers in flight, '
        f'{mib(2 * w.layer_params * w.weight_bytes)} as stored and '
        f'{mib(2 * w.layer_params * w.activation_bytes)} converted for compute; scratch), and '
        f'every weight and cache byte a place on some tier; raise the device budget (now '
        f'{mib(hw.device_memory)}), the host or the disk budget')
  return best
