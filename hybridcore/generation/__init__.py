"""Generation with the hybrid cache: chunked-scan prefill, then constant-memory Mamba decode steps
next to a preallocated attention KV cache. `hybridcore.generate` is the public entry point."""

from .decode import DecodeStep, prefill, prompt_layout
from .loop import generate, stream_generate
from .sampling import sample_next_token

__all__ = ["generate", "stream_generate", "sample_next_token", "DecodeStep", "prefill", "prompt_layout"]
