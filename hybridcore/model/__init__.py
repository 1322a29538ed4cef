from .model import HybridLM, build_model, build_model_part, positions_from_seq_idx

__all__ = ["HybridLM", "build_model", "build_model_part", "positions_from_seq_idx"]
