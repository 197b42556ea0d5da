"""refiner_model: the CausalRefiner, its controls (reasoner, stack), their layers, the r50k_base
tokenizer wrapper, the precision policy, the memory estimate, checkpoints and the throughput benchmark.

Imports only `config` (and torch, numpy). model.py reads top-down like nanoGPT's model.py.

    model.py       build_model, LoopedLM (forward, depth_curve, last_stats), DepthSampler, num_params,
                   flops_per_token, configure_optimizer, lr_at
    precision.py   Precision.from_settings: device, dtype, reason, autocast(), scaler, step() skipping non-finite
    checkpoint.py  save_checkpoint / load_checkpoint / read_meta (atomic; JSON metadata; CheckpointError)
    memory.py      estimate / check_fits (MemoryBudgetError) / measure_cpu / measure_cuda / compare
    bench.py       python -m refiner_model.bench [--quick] [--json PATH]
    tokenizer.py   encode, decode, single_token, get_encoding, EOT

Beyond the obvious signatures: flops_per_token takes optional seq_len, head_tokens and train; estimate takes
optional r, lm_loss, dtype; save_checkpoint returns the directory; DepthSampler.state_dict();
LoopedLM.track_stats (False skips the per-pass statistics).
"""
