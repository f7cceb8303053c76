"""Throughput-oriented generation of models larger than memory (FlexGen; Sheng et al. 2023):
weights and KV cache spread over device, host memory and disk, and a zig-zag block schedule that
shares each weight load among many sequences. From the bottom up: `disk` is the disk tier, read
past the page cache; `compression` FlexGen's 4-bit weights and cache; `policy` chooses where each
lives (a linear program over a cost model) for the machine `hardware` measures; `tiers` holds
each layer's weights and cache where the policy says; `zigzag` runs the schedule over them
(gpt_jax.generate and gpt_jax.bench_generate are its commands)."""
