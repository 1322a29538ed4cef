"""Scale-out on torch.distributed: device mesh, tensor + sequence parallel, FSDP2 (HSDP), pipeline and
context parallel, mixer parallelism of P layers, and checkpoints that load under any layout.

The model code knows nothing of this package: each module states its parallel plan as data
(model/plan.py) and computes with the tensors it holds; `parallelize` applies a layout to an initialised
HybridLM in torchtitan's order (pipeline stages, TP + SP and the context strategy, activation
checkpointing, compile, FSDP2), every dimension of degree 1 a no-op, one process included (mesh None).
The training step (hybridcore.train.step) is the same for every layout. Launched by torchrun:

    import os, torch, torch.distributed as dist
    from hybridcore.model import build_model
    from hybridcore.parallel import ParallelConfig, build_mesh, parallelize, save_sharded, load_sharded
    from hybridcore.train.step import Batch, build_optimizers, train_step

    dist.init_process_group("nccl")                     # "gloo" on CPU
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    config = ParallelConfig(tp=2)                       # dp_shard: the rest of the world (-1)
    mesh = build_mesh(config, "cuda")
    model = parallelize(build_model(model_config, device="cuda", seed=seed), mesh, config, compile=True)
    optimizers = build_optimizers(model, lr=3e-4, weight_decay=0.1)   # one per pipeline stage
    if resuming:
        extra = load_sharded(checkpoint_dir, model, optimizers)      # written under any layout
    for step ...:
        # the global batch [B, L + 1] (ids, and document ids when packed), the same on every rank
        result = train_step(model, optimizers, [Batch.from_tokens(tokens, seq_idx)], max_norm=1.0)
        save_sharded(checkpoint_dir, model, optimizers, extra={"step": step})   # every rank calls it

Constraints (ValueError naming the field when broken): tp divides num_heads, num_kv_heads,
mamba_n_heads, mamba_n_groups (or it is 1) and d_ff (of the layer kinds present; under mixer parallelism
tp / 2 divides a P layer's, and the layout has a P layer); with
sequence_parallel the sequence length (after cp) divides by tp; with cp the length divides by 2 x cp;
local rows divide into the pipeline microbatches; no tied embeddings across pipeline stages.
`check_layout` checks them all from the configs, before any work.
"""

from .checkpoint import checkpoint_state, full_state_dict, load_sharded, save_sharded
from .checks import check_layout
from .clipping import clip_divisor, divide_gradients_, grad_norm
from .config import MESH_DIMS, ParallelConfig
from .context_parallel import shard_sequence
from .mesh import build_mesh, data_parallel_rank, mesh_dim
from .parallelize import ParallelModel, as_parallel_model, parallelize
from .pipeline import Pipeline
from .tensor_parallel import check_tensor_parallel

__all__ = ["ParallelConfig", "MESH_DIMS", "build_mesh", "mesh_dim", "data_parallel_rank", "parallelize",
           "ParallelModel", "as_parallel_model", "Pipeline", "check_tensor_parallel", "shard_sequence",
           "save_sharded", "load_sharded", "full_state_dict", "checkpoint_state", "check_layout",
           "clip_divisor", "divide_gradients_", "grad_norm"]
