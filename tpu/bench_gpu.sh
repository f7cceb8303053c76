#!/usr/bin/env bash
# The accelerator check of the train step on one GPU: GPT-2 124M and 350M at seq 1024, bfloat16,
# cuDNN attention. Times the step as training runs it (python -m gpt_jax.bench) for the baseline
# and for one change at a time, the first and fourth rows beside PyTorch's nanoGPT of the same
# shape compiled with torch.compile, and writes one JSON report per row under OUT (default
# runs/bench_gpu). A few minutes on an H100. Needs the accelerator build of JAX and PyTorch
# (pip install -e '.[hf]') in the Python it runs: PYTHON, default python3 (activate the venv).
#
#   PYTHON=.venv/bin/python bash tpu/bench_gpu.sh [OUT]
#
# Rows (each is `python -m gpt_jax.bench --config=experiments/bench_gpu.py` plus its settings):
#   baseline            unrolled layers, no remat, batch 16 (and PyTorch)
#   scan                nn.scan over layers (one compiled layer)
#   remat_dots          rematerialise all but the matmul outputs
#   batch32             32 sequences per step (and PyTorch)
#   lhs                 XLA's latency-hiding scheduler on
#   no_command_buffers  XLA's CUDA command buffers off (each kernel launched on its own)
set -euo pipefail
out=${1:-runs/bench_gpu}
mkdir -p "$out"
python=${PYTHON:-python3}
bench() {  # NAME SIZES [--torch] [settings...]
  local name=$1 sizes=$2
  shift 2
  echo "== $name ($sizes)"
  "$python" -m gpt_jax.bench --config=experiments/bench_gpu.py --sizes="$sizes" --steps=20 \
    --warmup=5 --json="$out/$name.json" "$@"
}
bench baseline 12x768,24x1024 --torch
bench scan 12x768,24x1024 --config.model.scan_layers=True
bench remat_dots 12x768,24x1024 --config.model.remat=dots
bench batch32 12x768 --config.batch_size=32 --torch
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true" \
  bench lhs 12x768
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" bench no_command_buffers 12x768
