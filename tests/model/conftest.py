import pytest
import torch

from hybridcore.config import ModelConfig


def tiny_config(**changes) -> ModelConfig:
    base = dict(vocab_size=61, d_model=32, layout="P-", num_heads=4, num_kv_heads=2, head_dim=8,
                mamba_n_heads=4, mamba_d_head=8, mamba_d_state=6, mamba_n_groups=2, mamba_d_conv=3,
                mamba_chunk_size=8, d_ff=48, rope_theta=1e4, mamba_rms_norm=True, attention_bias=True,
                mamba_proj_bias=True, projectors_bias=True, mlp_bias=True)
    base.update(changes)
    return ModelConfig(**base)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
