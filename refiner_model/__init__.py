"""refiner_model: the CausalRefiner, its controls (reasoner, stack), their layers, the r50k_base
tokenizer wrapper, the memory estimate, checkpoints and the throughput benchmark.

Imports only `config` (and torch). Reads top-down like nanoGPT's model.py.
"""
