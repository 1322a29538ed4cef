"""`parallelize`: the one ordered entry point, in torchtitan's order, for every layout and one process.

    0. pipeline stages (pp > 1)         this rank's stages cut from the model; each stage below
    1. tensor (+ sequence) parallel      the model's plans applied: each parameter replaced by its slice
       (mixer parallel)                  a P layer's branches on the two halves of the tp ranks (mixer.py)
       float8 (optional)                 the large linears swapped for torchao's float8 ones (float8.py),
                                         judged by this rank's slices
       context parallel                  the context strategy across the cp ranks
    2. activation checkpointing          per layer (the layout's first N), after TP so the recompute
                                         includes its collectives
    3. torch.compile                     per layer, after AC so the compiled region is the wrapped layer;
                                         identical layers share a graph, caches on disk (compile.py)
    4. FSDP2                             per layer, then the root; HSDP when dp_replicate > 1

Every dimension of degree 1 is a no-op, and one process (mesh None) runs steps 2 and 3 only: the same
function, the same model code and the same training step on 1 or many ranks. The values are whatever
the initialised model held, so the same seed gives the same weights under any layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.distributed.device_mesh import DeviceMesh

from ..model.attention import use_sdpa_for_documents
from ..model.model import HybridLM
from . import float8 as float8_training
from . import fsdp
from .activation_checkpointing import check_policy, checkpointed
from .compile import COMPILE_MODES, compile_layers
from .config import MESH_DIMS, ParallelConfig
from .context_parallel import ContextParallel
from .layouts import ParameterLayout, clean_name
from .mesh import branch_view_mesh, view_mesh
from .pipeline import Pipeline, check_pipeline, stage_module
from .tensor_parallel import apply_tensor_parallel, reduce_partial_gradients

@dataclass
class ParallelModel:
    """This rank's share of a model: the HybridLM (or its pipeline stages), how each parameter is
    split, and the mesh. What the training step, checkpoints and the gradient norm work on."""
    parts: list[HybridLM]
    mesh: DeviceMesh | None = None
    config: ParallelConfig = field(default_factory=ParallelConfig)
    layouts: dict[str, ParameterLayout] = field(default_factory=dict)
    pipeline: Pipeline | None = None
    fsdp: bool = False
    float8_all_gather: bool = False  # FSDP gathers float8 weights: their scales follow each optimizer step

    @property
    def model(self) -> HybridLM:
        if self.pipeline is not None:
            raise ValueError("a pipelined model has several parts: use .parts")
        return self.parts[0]

    @property
    def view_mesh(self) -> DeviceMesh | None:
        return view_mesh(self.mesh)

    def view_mesh_of(self, name: str) -> DeviceMesh | None:
        """The view mesh of the ranks that hold parameter `name` (layouts.global_view): this rank's half
        of the tp ranks for a branch of a mixer-parallel P layer, else all of them."""
        layout = self.layouts.get(name)
        return branch_view_mesh(self.mesh) if layout is not None and layout.branch is not None else self.view_mesh

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def parameters(self):
        for part in self.parts:
            yield from part.parameters()

    def named_parameters(self):
        for part in self.parts:
            for name, param in part.named_parameters():
                yield clean_name(name), param

    def train(self, mode: bool = True) -> "ParallelModel":
        for part in self.parts:
            part.train(mode)
        return self

    def eval(self) -> "ParallelModel":
        return self.train(False)

    def after_optimizer_step(self) -> None:
        if self.float8_all_gather:
            for part in self.parts:
                float8_training.precompute_float8_scales(part)

    def finish_gradients(self) -> None:
        """After backward: sum the gradients that are per-rank partial sums over the tp ranks."""
        if self.mesh is not None and self.mesh["tp"].size() > 1:
            branches = branch_view_mesh(self.mesh)
            branch_group = branches["tp"].get_group() if branches is not None else None
            for part in self.parts:
                reduce_partial_gradients(part, self.layouts, self.mesh["tp"].get_group(), branch_group)


def as_parallel_model(model) -> ParallelModel:
    """A ParallelModel as given, or a plain HybridLM as the one-process ParallelModel it is."""
    if isinstance(model, ParallelModel):
        return model
    if isinstance(model, HybridLM):
        return ParallelModel([model])
    raise TypeError(f"expected a HybridLM or a ParallelModel, got {type(model).__name__}")


def parallelize(model: HybridLM, mesh: DeviceMesh | None = None, config: ParallelConfig | None = None, *,
                activation_checkpointing: bool = False, checkpoint_layers: int | None = None,
                checkpoint_policy: str = "full", compile: bool = False, compile_mode: str = "default",
                compile_cache_dir=None, compile_fallback: bool = False, float8: str | None = None,
                float8_min_size: int = float8_training.DEFAULT_MIN_SIZE,
                seq_len: int = 4096, loss_chunk: int = 8192) -> ParallelModel:
    """Apply the layout `config` over `mesh` (None: one process) to the initialised `model`, in place.

    checkpoint_layers: with activation checkpointing, only the layout's first N layers (None: all).
    checkpoint_policy: what a checkpointed layer's backward recomputes (activation_checkpointing.POLICIES).
    compile_cache_dir: where Inductor's and Triton's caches persist (compile.py's default when None).
    compile_fallback: a layer that fails to compile runs eagerly instead of raising (compile.py).
    float8: a torchao float8 recipe (float8.RECIPES) for the linears with both weight dimensions of at
    least float8_min_size on this rank (under tp, its slice; the LM head stays in bf16); None trains in
    the autocast dtype only.
    seq_len: the training sequence length (balances pipeline stages by FLOPs when the layout has no '|').
    loss_chunk: tokens per chunk of the fused LM head and loss under a pipeline.
    """
    config = (config or ParallelConfig(dp_shard=1)).resolve(mesh.size() if mesh is not None else 1)
    if mesh is not None:
        check_mesh(config, mesh)
        if config.mixer_parallel is not None and branch_view_mesh(mesh) is None:
            raise ValueError("ParallelConfig.mixer_parallel: the mesh has no halves of the tp ranks; build it "
                             "with build_mesh from a ParallelConfig that sets mixer_parallel")
        devices = {p.device.type for p in model.parameters()} - {"meta"}  # a stage's others may be meta
        if devices != {mesh.device_type}:
            raise ValueError(f"model parameters are on {sorted(devices)} but the mesh is on "
                             f"{mesh.device_type!r}; move the model first")
    elif config.world_size > 1:
        raise ValueError(f"ParallelConfig asks for {config.world_size} ranks: give the mesh (build_mesh)")
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
    check_policy(checkpoint_policy)
    if float8 is not None:
        float8_training.check_float8_options(float8, float8_min_size)
    all_gather8 = float8 == "tensorwise" and fsdp.applies(mesh)
    options = dict(activation_checkpointing=activation_checkpointing, checkpoint_layers=checkpoint_layers,
                   checkpoint_policy=checkpoint_policy, compile=compile, compile_mode=compile_mode,
                   compile_cache_dir=compile_cache_dir, compile_fallback=compile_fallback, float8=float8,
                   float8_min_size=float8_min_size, float8_all_gather=all_gather8)
    dtype = next(p for p in model.parameters() if not p.is_meta).dtype
    if config.pp == 1:
        layouts = _parallelize_part(model, mesh, config, **options)
        return ParallelModel([model], mesh, config, layouts, fsdp=fsdp.applies(mesh), float8_all_gather=all_gather8)
    stages = check_pipeline(model.config, config, seq_len)
    pp_rank = mesh["pp"].get_local_rank()
    indices = list(range(pp_rank, len(stages), config.pp))
    parts, layouts = [], {}
    for index in indices:
        part = stage_module(model, stages, index)
        layouts.update(_parallelize_part(part, mesh, config, pipelined=True, **options))
        parts.append(part)
    pipeline = Pipeline(parts, indices, len(stages), config, mesh, loss_chunk, dtype)
    return ParallelModel(parts, mesh, config, layouts, pipeline, fsdp=fsdp.applies(mesh),
                         float8_all_gather=all_gather8)


def _parallelize_part(model: HybridLM, mesh: DeviceMesh | None, config: ParallelConfig, *,
                      activation_checkpointing: bool, checkpoint_layers: int | None, checkpoint_policy: str,
                      compile: bool, compile_mode: str, compile_cache_dir, compile_fallback: bool, float8: str | None,
                      float8_min_size: int, float8_all_gather: bool,
                      pipelined: bool = False) -> dict[str, ParameterLayout]:
    """The ordered steps on one model or one pipeline stage (a HybridLM holding some of the layers)."""
    branches = branch_view_mesh(mesh)
    layouts = apply_tensor_parallel(model, mesh["tp"] if mesh is not None else None, config.sequence_parallel,
                                    config.mixer_parallel, branches["tp"] if branches is not None else None)
    if float8 is not None:  # on this rank's slices: each matmul scales its own operands (tensorwise per slice)
        float8_training.convert_to_float8(model, float8, float8_min_size, fsdp_float8_all_gather=float8_all_gather)
    if config.cp > 1:
        model.use_parallelism(context=ContextParallel(mesh["cp"]))
    if activation_checkpointing:
        for name in model.leading_layer_names(checkpoint_layers):
            use_sdpa_for_documents(model.layers[name])
            model.layers[name] = checkpointed(model.layers[name], checkpoint_policy)
    if compile:
        compile_layers(model, compile_mode, cache_dir=compile_cache_dir, fall_back_to_eager=compile_fallback)
        if compile_mode == "reduce-overhead" and not pipelined:  # CUDA graphs: model/input_buffers.py
            model.keep_input_addresses()
    else:  # FlexAttention serves compiled layers only: no block mask to build each forward
        use_sdpa_for_documents(model)
    if fsdp.applies(mesh):
        fsdp.apply_fsdp(model, mesh, pipelined)
    return layouts


def check_mesh(config: ParallelConfig, mesh: DeviceMesh) -> None:
    if mesh.mesh_dim_names is None or tuple(mesh.mesh_dim_names) != MESH_DIMS:
        raise ValueError(f"the mesh must have dimensions {MESH_DIMS} (use build_mesh), "
                         f"got {mesh.mesh_dim_names}")
    sizes = dict(zip(MESH_DIMS, mesh.shape))
    for name in MESH_DIMS:
        if sizes[name] != getattr(config, name):
            raise ValueError(f"ParallelConfig.{name} is {getattr(config, name)} but the mesh's {name} "
                             f"dimension has size {sizes[name]}")


__all__ = ["parallelize", "ParallelModel", "as_parallel_model", "check_mesh", "COMPILE_MODES"]
