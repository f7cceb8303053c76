#!/usr/bin/env bash
# FlexGen's setting on one GPU (Sheng et al. 2023, §6): an OPT-6.7B-shaped model (random bfloat16
# weights, written to DISK once) under a 16 GB device budget, the paper's T4, with host memory and
# a disk tier, prompts of 512 tokens and 32 new ones, bfloat16 compute: rows a (row by row), c (the
# linear program's policy, zig-zag) and d (4-bit weights and cache); then the same model fully on
# the device (row e, under a budget it fits). A few minutes on an H100 with 64 GB of disk. Needs
# the accelerator build of JAX in the Python it runs: PYTHON, default python3.
#
#   PYTHON=.venv/bin/python bash tpu/bench_generate_gpu.sh [DISK]
set -euo pipefail
disk=${1:-/tmp/gpt_jax_offload}
python=${PYTHON:-python3}
common=(--disk_dir="$disk" --shape=opt-6.7b --dtype=bfloat16 --prompt_len=512 --gen_len=32
        --num_prompts=64 --host_gib=48)
"$python" -m gpt_jax.bench_generate "${common[@]}" --device_gib=16 --rows=a,c,d
"$python" -m gpt_jax.bench_generate "${common[@]}" --device_gib=60 --rows=e
