"""What the policy's cost model needs to know of this machine, measured: the device's matmul
rate and memory bandwidth, the host's, the bandwidth of each link between the tiers (host to
device and back, disk to host and back), the fixed cost of a disk read (an executor's fixed
cost per call is its own: offload.zigzag.call_overheads). On a CPU the device and the host are
the same memory, so their links are copies within it; the disk is measured through the disk
tier itself (offload.disk: O_DIRECT), so the page cache cannot flatter it."""

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import flops
from gpt_jax.offload import disk, policy


def _best_seconds(fn, repeats: int) -> float:
  """The fastest of `repeats` calls of fn() (which blocks until done), after one warm-up call."""
  fn()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def measure(device_memory: float, host_memory: float, disk_memory: float, disk_dir: str | None,
            nbytes: int = 64 << 20, repeats: int = 3) -> policy.Hardware:
  """The Hardware of this machine under the given budgets (bytes), each bandwidth measured on
  `nbytes` (a file of that size is written in disk_dir, read `repeats` times and removed). With
  no disk_dir there is no disk tier: its budget must be 0, and its links count as free."""
  host = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
  device = jax.device_put(host)
  to_device = nbytes / _best_seconds(lambda: jax.device_put(host).block_until_ready(), repeats)
  to_host = nbytes / _best_seconds(lambda: np.array(device), repeats)  # a copy, not a view
  copy = jax.jit(lambda x: x + jnp.uint8(1))
  device_bandwidth = 2 * nbytes / _best_seconds(lambda: copy(device).block_until_ready(), repeats)
  host_bandwidth = 2 * nbytes / _best_seconds(lambda: np.add(host, 1, dtype=np.uint8), repeats)
  if disk_dir is None and disk_memory:
    raise ValueError('a disk budget needs a disk_dir')
  to_disk = from_disk = math.inf
  disk_latency = 0.0
  if disk_dir is not None:
    store = disk.DiskStore(disk_dir)
    group = f'bandwidth_probe_{os.getpid()}'
    start = time.perf_counter()
    store.write(group, {'data': host})
    os.sync()
    to_disk = nbytes / (time.perf_counter() - start)
    from_disk = nbytes / _best_seconds(lambda: store.read(group), repeats)
    store.write(group, {'data': host[:disk.ALIGN]})
    disk_latency = _best_seconds(lambda: store.read(group), 10 * repeats)
    store.remove(group)
  peak = flops.current_peak_flops()
  return policy.Hardware(device_memory, host_memory, disk_memory, peak, peak, device_bandwidth,
                         host_bandwidth, to_device, to_host, from_disk, to_disk,
                         disk_latency=disk_latency)
