"""HybridLM: embedding, the layers the layout string names, final norm, LM head.

Built on any device, the meta device included (nothing is initialised in __init__); `init_weights()`
fills every parameter, so a 34B model can be described, sharded and only then materialised.
`use_parallelism` hands the model the strategies of a parallel layout (model/parallelism.py); the
defaults are one device's. Positions and document ids come with the batch (`positions` must be given
when this rank holds part of a longer sequence, as under context parallelism).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from ..config import ModelConfig
from .attention import Attention, document_start_slots
from .cache import AttentionCache, LayerCache, MambaCache
from .input_buffers import InputBuffers, as_is
from .layers import LayerInputs, build_layer
from .mamba2 import SegmentedLinear
from .norm import RMSNorm
from .parallelism import LOCAL_REGION, WHOLE_SEQUENCE
from .plan import COLWISE
from .rope import rope_cos_sin


def positions_from_seq_idx(seq_idx: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its document: [[0,0,1,1,1]] -> [[0,1,0,1,2]]."""
    return torch.arange(seq_idx.shape[1], device=seq_idx.device) - document_start_slots(seq_idx)


class HybridLM(nn.Module):
    # The vocabulary splits over tensor-parallel ranks: the region looks up and scores its own rows.
    parallel_plan = {"embed.weight": COLWISE, "lm_head.weight": COLWISE}

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.region, self.context, self.layer_regions = LOCAL_REGION, WHOLE_SEQUENCE, {}
        self.input_buffers: InputBuffers | None = None  # keep_input_addresses
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        # A ModuleDict keyed by global index: pipeline stages delete layers and keep their names.
        self.layers = nn.ModuleDict({str(i): build_layer(kind, config) for i, kind in enumerate(config.layer_kinds)})
        self.final_norm = RMSNorm(config.d_model, config.norm_eps, config.norm_weight_in_fp32)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.tie_weights()
        # Whether a forward builds FlexAttention's block mask: some attention layer may take it
        # (Attention.flex_for_documents; a plain list, so these modules are not registered twice).
        self._attentions = [module for module in self.modules() if isinstance(module, Attention)]

    def use_parallelism(self, region=None, context=None, layer_regions: dict | None = None) -> None:
        """The strategies through which the layers reach other ranks (tensor parallelism's region, the
        sequence's context, and regions of particular layers by name); None keeps the current one."""
        self.region = region or self.region
        self.context = context or self.context
        self.layer_regions = layer_regions if layer_regions is not None else self.layer_regions

    def keep_input_addresses(self) -> None:
        """Hand the layers their per-step inputs at the same addresses in every forward with gradients, as
        layers replayed as CUDA graphs need (model/input_buffers.py); one process only."""
        self.input_buffers = self.input_buffers or InputBuffers()

    def _hold(self):
        """How this forward passes the layers' per-step inputs: through the kept buffers in a forward with
        gradients once `keep_input_addresses` ran, else as they are."""
        return self.input_buffers if self.input_buffers is not None and torch.is_grad_enabled() else as_is

    def tie_weights(self) -> None:
        """Share the embedding with the LM head when configured (again after `to_empty`, which unties)."""
        if self.config.tie_embeddings and self.embed is not None and self.lm_head is not None:
            self.lm_head.weight = self.embed.weight

    # ---- initialisation ---------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Initialise every parameter. With a seed the result is the same under any parallel layout (on
        one kind of device: CPU and CUDA random streams differ)."""
        if seed is not None:
            torch.manual_seed(seed)
        for module in self.modules():
            if module is not self:
                init_module(module, self.config.init_std)

    # ---- forward ---------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, seq_idx: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, caches: list[LayerCache] | None = None,
                labels: torch.Tensor | None = None, loss_chunk: int = 8192,
                return_hidden: bool = False) -> torch.Tensor:
        """input_ids [B, L] -> logits [B, L, V]; with labels [B, L] (-100 ignored), the mean next-token
        loss instead, the LM head and the loss fused in chunks of `loss_chunk` tokens (see `loss`);
        with return_hidden, the final-normed hidden states (a pipeline's last stage: its loss follows).

        seq_idx [B, L]: document index per token for packed sequences (attention stays inside a
        document, the Mamba state and conv window reset where it changes, positions restart).
        """
        hidden = self.hidden_states(input_ids, seq_idx, positions, caches)
        if return_hidden:
            return hidden
        if labels is not None:
            return self.loss(hidden, labels, loss_chunk)
        return self.logits(hidden)

    def hidden_states(self, input_ids, seq_idx=None, positions=None, caches=None) -> torch.Tensor:
        """Final-normed hidden states [B, L, d] (this rank's share of the sequence under sequence
        parallelism); `logits()` or `loss()` take them from there."""
        if self.embed is not None:
            h = self.region.embedding(input_ids, self.embed.weight) * self.config.embedding_multiplier
            h = self._hold()("embedded", h)  # the first layer saves it for its backward
        else:  # a later pipeline stage: the previous stage's hidden states
            h = input_ids
        inputs = self.layer_inputs(input_ids, seq_idx, positions)
        own = {name: dataclasses.replace(inputs, region=region) for name, region in self.layer_regions.items()}
        for i, (name, layer) in enumerate(self.layers.items()):
            h = layer(h, own.get(name, inputs), caches[i] if caches is not None else None)
        return self.final_norm(h) if self.final_norm is not None else h

    def layer_inputs(self, input_ids: torch.Tensor, seq_idx=None, positions=None) -> LayerInputs:
        if positions is None:
            if seq_idx is not None:
                positions = positions_from_seq_idx(seq_idx)
            else:
                positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
        cos, sin = rope_cos_sin(positions, self.config.rotary_dim, self.config.rope_theta)
        hold = self._hold()
        cos, sin, seq_idx = hold("cos", cos), hold("sin", sin), hold("seq_idx", seq_idx)
        flex = any(attention.flex_for_documents for attention in self._attentions)
        return LayerInputs(cos=cos, sin=sin, seq_idx=seq_idx,
                           document_mask=self.context.document_mask(seq_idx, hold) if flex else None,
                           region=self.region, context=self.context)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            return h
        logits = self.lm_head(self.region.enter(h)) * self.config.lm_head_multiplier
        if self.config.logits_divisor != 1.0:
            logits = logits / self.config.logits_divisor
        return self.region.gather_vocab(logits)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """Mean next-token cross entropy of hidden states h [B, L, d] against labels [B, L] (-100 ignored),
        the LM head and the loss fused in chunks of `chunk_size` tokens (logits never whole)."""
        multiplier = self.config.lm_head_multiplier / self.config.logits_divisor
        return self.region.cross_entropy(self.region.enter(h), self.lm_head.weight, labels, multiplier, chunk_size)

    # ---- inference state ---------------------------------------------------------------------------
    def allocate_caches(self, batch: int, max_len: int, device=None, dtype=None) -> list[LayerCache]:
        """One LayerCache per layer: KV slots for attention layers, conv + SSM state for Mamba ones."""
        c = self.config
        param = next(self.parameters())
        device, dtype = device or param.device, dtype or param.dtype
        caches = []
        for layer in self.layers.values():
            cache = LayerCache()
            if hasattr(layer, "attention"):
                cache.attention = AttentionCache.allocate(batch, c.num_kv_heads, max_len, c.head_dim, device, dtype)
            if hasattr(layer, "mamba"):
                cache.mamba = MambaCache.allocate(batch, c.mamba_conv_dim, c.mamba_d_conv, c.mamba_n_heads,
                                                  c.mamba_d_head, c.mamba_d_state, device, dtype)
            caches.append(cache)
        return caches

    def leading_layer_names(self, count: int | None) -> list[str]:
        """Names of this model's layers among the layout's first `count` (all when None). Names are layout
        indices, so a pipeline stage answers for its own share (activation checkpointing's first N layers)."""
        total = self.config.num_layers
        if count is not None and not 1 <= count <= total:
            raise ValueError(f"checkpoint_layers must be between 1 and the model's {total} layers, got {count}")
        return [name for name in self.layers if count is None or int(name) < count]

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if exclude_embedding and name.startswith("embed."):
                continue
            total += p.numel()
        return total


@torch.no_grad()
def init_module(module: nn.Module, std: float) -> None:
    """Initialise one module's own parameters (HybridLM.init_weights applies it in module order)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, SegmentedLinear):
        module.init_normal(std)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif hasattr(module, "reset_parameters") and not isinstance(module, HybridLM):
        module.reset_parameters()


def build_model_part(config: ModelConfig, keep: Callable[[str], bool], device: str | torch.device = "cpu",
                     seed: int = 0) -> HybridLM:
    """build_model's fp32 model with only the modules whose qualified name `keep` accepts materialised on
    `device`; the others stay on the meta device (a pipeline stage needs only its own layers). Every
    module still draws its random numbers, into a scratch copy when it is not kept, so the kept values
    are build_model's with the same seed on the same kind of device. Peak memory: the kept modules
    plus one scratch module."""
    if config.tie_embeddings:
        raise ValueError("build_model_part: tied embeddings share one tensor between the first and the last "
                         "module; build the whole model instead")
    with torch.device("meta"):
        model = HybridLM(config)
    torch.manual_seed(seed)
    for name, module in model.named_modules():
        if module is model or not list(module.parameters(recurse=False)):
            continue
        target = module if keep(name) else copy.deepcopy(module)
        target.to_empty(device=device, recurse=False)
        init_module(target, config.init_std)
    return model


def build_model(config: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                seed: int | None = 0) -> HybridLM:
    """Describe the model on the meta device, then materialise and initialise it on `device`."""
    with torch.device("meta"):
        model = HybridLM(config)
    model.to_empty(device=device)
    model.tie_weights()
    model.init_weights(seed)
    return model.to(dtype)
