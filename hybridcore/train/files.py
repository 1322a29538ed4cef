"""The name hybridcore.bench and benchmarks/ import; the one JSON writer is hybridcore.io.json_codec."""

from ..io.json_codec import write_json as write_json_atomic

__all__ = ["write_json_atomic"]
