"""Prefill and the static-shape decode step over the model's hybrid cache.

Prefill runs the whole prompt through the chunked scan once; each Mamba layer's cache keeps the final
SSM state and the last d_conv - 1 conv inputs, each attention layer's cache the keys and values.
A left-padded batch is two documents per row: pads are document 0, the prompt document 1, so the
pads are never attended, the SSM state and conv window reset at the first real token, and positions
start at 0 there. Decoding then feeds one token per row; every tensor it touches keeps its shape from
step to step, which is what CUDA-graph capture needs.
"""

from __future__ import annotations

import torch

from ..model.cache import DecodeSlots, LayerCache
from ..ops import graph_capture_kernels

PAD_DOC, PROMPT_DOC = 0, 1


def prompt_layout(attention_mask: torch.Tensor | None, batch: int, length: int, device):
    """(seq_idx [B, L] or None, positions [B, L] or None, next position per row [B], decode document)."""
    if attention_mask is None or bool(attention_mask.all()):
        next_positions = torch.full((batch,), length, dtype=torch.long, device=device)
        return None, None, next_positions, 0  # one document per row: the cache-free causal path
    real = attention_mask.to(device=device, dtype=torch.long)
    seq_idx = real * PROMPT_DOC  # pads PAD_DOC (0), prompt PROMPT_DOC: non-decreasing for left padding
    positions = (torch.cumsum(real, dim=1) - 1).clamp(min=0)
    return seq_idx, positions, real.sum(dim=1), PROMPT_DOC


def prefill(model, input_ids: torch.Tensor, caches: list[LayerCache], seq_idx=None, positions=None) -> torch.Tensor:
    """Fill the caches from the prompt; return the logits of its last token [B, V]."""
    hidden = model.hidden_states(input_ids, seq_idx, positions, caches)
    return model.logits(hidden[:, -1])  # only the last position: [B, L, V] would be large at long context


class DecodeStep:
    """One token per row through the model, every shape fixed: the token, position and document
    buffers are updated in place, and the attention caches write at one device-side slot under one
    mask that this step advances once per token (shared by every attention layer).

    With capture_graph (CUDA only) the first call runs eagerly (it is also the warm-up), then the
    step is recorded once as a CUDA graph and every later call replays it.
    """

    def __init__(self, model, caches: list[LayerCache], next_positions: torch.Tensor, document: int,
                 capture_graph: bool = False):
        self.model, self.caches = model, caches
        batch, device = next_positions.shape[0], next_positions.device
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.positions = next_positions.view(batch, 1).clone()
        self.documents = torch.full((batch, 1), document, dtype=torch.long, device=device)
        attention = [cache.attention for cache in caches if cache.attention is not None]
        self.slots = DecodeSlots.after_prefill(attention[0], document) if attention else None
        for cache in attention:
            cache.decode = self.slots
        self.capture_graph = capture_graph
        self.graph = None
        self.graph_logits = None

    def _forward(self) -> torch.Tensor:
        """The whole step, state updates included, so that a graph replay needs nothing else."""
        if self.slots is not None:
            self.slots.open_slot()
        hidden = self.model.hidden_states(self.tokens, self.documents, self.positions, self.caches)
        if self.slots is not None:
            self.slots.advance()
        self.positions.add_(1)
        return self.model.logits(hidden[:, -1])

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B] (the last chosen ones) -> logits of the next token [B, V]."""
        self.tokens.copy_(tokens.view(-1, 1))
        if self.graph is not None:
            self.graph.replay()
            return self.graph_logits
        if self.capture_graph:
            return self._run_then_capture()
        return self._forward()

    def _run_then_capture(self) -> torch.Tensor:
        # Warm up on a side stream, as CUDA graphs require, with the kernels the capture takes; this run is
        # the real step.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), graph_capture_kernels():
            logits = self._forward()
        torch.cuda.current_stream().wait_stream(side)
        # Capturing only records kernels: caches, slots and positions stay as they are until a replay.
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.graph_logits = self._forward()
        self.graph = graph
        return logits
