"""Scale-out on torch.distributed: device mesh, tensor + sequence parallel, FSDP2 (HSDP), pipeline and
context parallel, and checkpoints that load under any layout.

The model code knows nothing of this package; `parallelize` (or `build_pipeline` when pp > 1) rewires
an initialised HybridLM in place, in torchtitan's order: TP (+SP), activation checkpointing, compile,
FSDP2. Call sequence for a training loop launched by torchrun (one process per GPU):

    import os, torch, torch.distributed as dist
    from hybridcore.model import build_model
    from hybridcore.parallel import (ParallelConfig, build_mesh, parallelize, build_pipeline, split_batch,
                                     train_step, token_loss, global_mean, save_sharded, load_sharded,
                                     full_state_dict)

    dist.init_process_group("nccl")                     # "gloo" on CPU
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    parallel_config = ParallelConfig(tp=2, dp_shard=-1)  # dp_shard=-1: the rest of the world
    mesh = build_mesh(parallel_config, "cuda")
    model = build_model(model_config, device="cuda", seed=seed)   # full fp32 init from the seed
    options = dict(activation_checkpointing=False, compile=False, mixed_precision=None)  # None: bf16 on CUDA
    if parallel_config.pp == 1:
        parallelize(model, parallel_config, mesh, **options)
        optimizer = torch.optim.AdamW(model.parameters(), ...)          # after parallelize: DTensors
    else:
        model = build_pipeline(model, parallel_config, mesh, token_loss, seq_len=seq_len, **options)
        optimizer = [torch.optim.AdamW(part.parameters(), ...) for part in model.model_parts]
    if resuming:
        extra = load_sharded(checkpoint_dir, model, optimizer)          # written under any layout
    for step ...:
        # tokens/seq_idx [B_global, L + 1], identical on every rank; split_batch takes this rank's rows
        # (data parallel) and sequence part (context parallel, zigzag).
        inputs, targets, docs = split_batch(tokens, seq_idx, mesh)
        # schedule your lr here; to clip, write your own step (below) and call clip_grad_norm_(model,
        # max_norm) between backward and optimizer.step(): one global norm over every mesh and stage.
        loss = train_step(model, optimizer, inputs.cuda(), targets.cuda(), docs)   # fwd, bwd, step
        logged = global_mean(loss, mesh)                 # mean over dp x cp (tp/pp ranks agree)
        save_sharded(checkpoint_dir, model, optimizer, extra={"step": step})   # every rank calls it
    state = full_state_dict(model)   # pp == 1: rank 0 gets unsharded tensors with the model's own keys

To write your own step instead of train_step: without pp, `logits = model(inputs, seq_idx=docs)`
gives this rank's logits over the full vocabulary, `token_loss(logits, targets).backward()`, then
`optimizer.step()`; FSDP averages gradients over dp x cp. With pp, `model.step(inputs, targets, docs)`
runs the schedule (forward + backward) and returns the loss on the last stage's ranks; pass
`microbatches=` a multiple of the configured count to accumulate gradients over a larger local batch.
`model.evaluate(...)` runs the forward passes only. `hybridcore train` (train/parallel_run.py) is the
full loop built this way.

Constraints (ValueError naming the field when broken): tp divides num_heads, num_kv_heads,
mamba_n_heads, mamba_n_groups and d_ff (of the layer kinds present); with sequence_parallel the
sequence length (after cp) divides by tp; with cp the length divides by 2 x cp; local rows divide
into pp_microbatches; no tied embeddings across pipeline stages. `check_layout` checks them all from
the configs, before any work.

Layout notes: Mamba-2's fused in_proj/conv are held as one parameter per segment in every parallel
layout and in every checkpoint (segments.py); the residual stream is sequence-sharded between layers
under sequence parallelism; `hybridcore.parallel.harness` is a small reference loop built from these
pieces (tests and benchmarks/parallel_bench.py use it).
"""

from .checkpoint import checkpoint_state, full_state_dict, load_sharded, save_sharded
from .checks import check_layout
from .clipping import clip_grad_norm_, grad_norm
from .config import MESH_DIMS, ParallelConfig
from .context_parallel import shard_sequence
from .fsdp import mixed_precision_policy
from .harness import build_parallel_model, global_mean, split_batch, token_loss, train_step, train_steps
from .mesh import build_mesh, data_parallel_rank, mesh_dim
from .parallelize import parallelize
from .pipeline import Pipeline, build_pipeline
from .tensor_parallel import check_tensor_parallel

__all__ = ["ParallelConfig", "MESH_DIMS", "build_mesh", "mesh_dim", "data_parallel_rank", "parallelize",
           "build_pipeline", "Pipeline", "check_tensor_parallel", "mixed_precision_policy", "shard_sequence",
           "split_batch", "token_loss", "train_step", "train_steps", "global_mean", "build_parallel_model",
           "save_sharded", "load_sharded", "full_state_dict", "checkpoint_state", "check_layout",
           "clip_grad_norm_", "grad_norm"]
