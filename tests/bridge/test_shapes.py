"""Full-size Falcon-H1 presets on the meta device: our names mapped through the key map are exactly
transformers' keys, with the same shapes and the same parameter count as the released models."""

import pytest
import torch

from hybridcore.bridge.config_map import hf_config_from_model
from hybridcore.bridge.keys import hf_to_ours, ours_to_hf, targets
from hybridcore.model import HybridLM
from hybridcore.presets import get_preset

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["falcon-h1-0.5b", "falcon-h1-1.5b-deep", "falcon-h1-7b", "falcon-h1-34b"])
def test_preset_keys_and_shapes_equal_transformers(name):
    config = get_preset(name)
    hf_config = transformers.FalconH1Config(**hf_config_from_model(config))
    with torch.device("meta"):
        theirs = transformers.FalconH1ForCausalLM(hf_config)
        ours = HybridLM(config)
    their_shapes = {key: tuple(t.shape) for key, t in theirs.state_dict().items()}
    our_params = dict(ours.named_parameters())
    mapping = ours_to_hf(config)
    assert sorted(n for ours in mapping for n in targets(ours)) == sorted(our_params)
    # a fused HF tensor is its segments concatenated along dim 0
    joined = {hf: (sum(our_params[n].shape[0] for n in targets(ours)), *our_params[targets(ours)[0]].shape[1:])
              for ours, hf in mapping.items()}
    assert joined == their_shapes
    assert hf_to_ours(config) == {hf: ours for ours, hf in mapping.items()}
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
