"""Parameter counts, model FLOPs per token, and device peaks: the numbers behind MFU and scaling
laws.

Counts come from the config alone (no arrays), so they work for models far too big to build here.
"""

import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import ml_collections

from gpt_jax import files, workers
from gpt_jax.model import head_size, mlp_hidden_size

# Dense bfloat16 peak FLOP/s per chip, from the vendors' data sheets.
PEAK_FLOPS = {
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,  # v5e
    'TPU v5e': 197e12,
    'TPU v5p': 459e12,
    'TPU v5': 459e12,
    'TPU v6 lite': 918e12,  # v6e (Trillium)
    'TPU v6e': 918e12,
    'A100': 312e12,
    'H100': 989e12,  # SXM
    'H200': 989e12,
}


def param_count(model: ml_collections.ConfigDict, *, embeddings: bool = True) -> int:
  """Number of parameters. embeddings=False leaves out the token and position tables (Kaplan's
  N)."""
  D, V, H, K = model.n_embd, model.vocab_size, model.n_head, model.n_kv_head
  E, F = head_size(model), mlp_hidden_size(model)
  bias = int(model.bias)
  attn = D * H * E + 2 * D * K * E + H * E * D + bias * (H * E + 2 * K * E + D)
  n_mlp_in = 2 if model.mlp == 'swiglu' else 1
  mlp = n_mlp_in * (D * F + bias * F) + F * D + bias * D
  norm = D * (1 + int(model.norm == 'layernorm' and model.bias))
  qk_norm = 2 * E * int(model.qk_norm)
  total = model.n_layer * (attn + mlp + 2 * norm + qk_norm) + norm
  if not model.tie_embeddings:
    total += D * V
  if embeddings:
    total += V * D + (model.block_size * D if model.position == 'learned' else 0)
  return total


def flops_per_token(model: ml_collections.ConfigDict, seq_len: int) -> float:
  """Training FLOPs per token (forward + backward): 6·N plus the attention term.

  N counts every weight a token is multiplied with: the non-embedding parameters plus the output
  head (tied or not). The attention term is PaLM's 12·n_layer·H·E·T over the full T×T score matrix
  (the convention of published MFU numbers), with T capped by a sliding window.
  """
  n_matmul = param_count(model, embeddings=False)
  if model.tie_embeddings:
    n_matmul += model.vocab_size * model.n_embd
  context = min(seq_len, model.sliding_window) if model.sliding_window > 0 else seq_len
  return 6 * n_matmul + 12 * model.n_layer * model.n_head * head_size(model) * context


def chinchilla_flops_per_sequence(model: ml_collections.ConfigDict, seq_len: int, *,
                                  embeddings: bool = True) -> float:
  """Training FLOPs of one sequence, counted term by term as in Chinchilla's Appendix F.

  Forward: embeddings, per layer the QKV projections, attention logits, softmax, attention over
  the values and the output projection, then the feed-forward block, then the final logits;
  backward = 2 × forward. Generalised to this project's models: K < H key/value heads (GQA) and
  SwiGLU's third matrix. embeddings=False leaves out the embedding and final-logit terms (how
  the paper's Table A4 ratios to 6ND come out).
  """
  S, D, V, H, K = seq_len, model.n_embd, model.vocab_size, model.n_head, model.n_kv_head
  E, F = head_size(model), mlp_hidden_size(model)
  attention = (2 * S * D * (H + 2 * K) * E  # query, key and value projections
               + 2 * S * S * H * E  # query · key logits
               + 3 * H * S * S  # softmax
               + 2 * S * S * H * E  # softmax · values
               + 2 * S * H * E * D)  # output projection
  feed_forward = 2 * S * (3 if model.mlp == 'swiglu' else 2) * D * F
  forward = model.n_layer * (attention + feed_forward)
  if embeddings:
    forward += 2 * S * V * D + 2 * S * D * V  # embedding lookup (as the paper counts it), logits
  return 3 * forward


# The CPU flags that decide a matmul's peak: vector width, FMA, and the bf16/int8 matrix units.
PEAK_FLAGS = ('avx', 'avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_bf16',
              'amx_tile', 'asimd', 'sve', 'sve2')


def cpu_key() -> str:
  """What identifies this CPU's matmul peak: the model name, the family, model and stepping
  numbers (one marketing name, 'AMD EPYC', covers Zen 3 and Zen 5, 180 vs 420 GFLOP/s), the
  vector extensions, the cores this process may use, and the jax version."""
  fields, flags = {}, set()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        key, value = key.strip(), value.strip()
        if key in ('flags', 'Features'):  # x86, ARM
          flags = set(value.split())
          break
        if key in ('model name', 'cpu family', 'model', 'stepping', 'CPU implementer', 'CPU part'):
          fields.setdefault(key, value)
  except OSError:
    fields['model name'] = platform.processor() or platform.machine()
  return ' / '.join([*(f'{k} {v}' for k, v in fields.items()),
                     ' '.join(f for f in PEAK_FLAGS if f in flags) or 'no vector flags',
                     f'{workers.cores()} cores', f'jax {jax.__version__}'])


def measure_cpu_peak(n: int = 2048, repeats: int = 5) -> float:
  """Float32 FLOP/s of a large jitted matmul on one CPU device: the practical peak here."""
  a = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def current_peak_flops(device=None) -> float:
  """device_peak_flops, but on a CPU measured now rather than read from the cache: what a
  cost model planning this run needs (the cached figure is the first measurement on this CPU
  model, which a busy machine may have lowered)."""
  device = device or jax.devices()[0]
  return measure_cpu_peak() if device.platform == 'cpu' else device_peak_flops(device)


@functools.cache
def device_peak_flops(device=None) -> float:
  """Peak FLOP/s of one device: the table above for accelerators; on CPU a measurement, kept in
  <cache root>/cpu_peaks.json under cpu_key()."""
  device = device or jax.devices()[0]
  if device.platform != 'cpu':
    kind = device.device_kind
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):
      if name.lower() in kind.lower():
        return PEAK_FLOPS[name]
    return float('nan')  # unknown accelerator: MFU is reported as NaN rather than guessed
  # One file for every CPU that shares this cache (a home directory on several machines).
  key, path = cpu_key(), os.path.join(files.cache_root(), 'cpu_peaks.json')
  try:
    with open(path) as f:
      peaks = json.load(f)
  except (OSError, ValueError):
    peaks = {}
  if not isinstance(peaks.get(key), (int, float)):
    peaks[key] = measure_cpu_peak()
    files.write_json(path, peaks)
  return float(peaks[key])
