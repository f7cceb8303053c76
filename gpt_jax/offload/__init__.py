"""Throughput-oriented generation of models larger than memory (FlexGen; Sheng et al. 2023):
weights, KV cache and activations spread over device, host memory and disk, and a zig-zag block
schedule that shares each weight load among many sequences. `policy` chooses where each lives
(a linear program over a cost model) for the machine `hardware` measures; `disk` is the disk tier,
read past the page cache."""
