"""The speed work beyond the assignment: decode without the overhead, measured.

static_cache.py (the models over a preallocated KV cache), fused_step.py (one decode step in
five kernels a block), decoder.py (steps as CUDA graphs), gpu_bench.py and cpu_bench.py (every
method side by side), anatomy.py (what bounds the fused step), kernels/ (the Triton and C++
kernels), fast_decode.py (their command line), and readings.py, the torch-free tables and
ratios that every reader of the speed records renders.
"""
