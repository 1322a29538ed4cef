from .model import HybridLM, build_model, positions_from_seq_idx

__all__ = ["HybridLM", "build_model", "positions_from_seq_idx"]
