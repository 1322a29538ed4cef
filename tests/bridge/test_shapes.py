"""Full-size presets on the meta device: our names mapped through their family's key map are exactly
transformers' keys, with the same shapes and the same parameter count as the released models."""

import pytest
import torch

from hybridcore.bridge import exporting_family
from hybridcore.bridge.keys import targets
from hybridcore.model import HybridLM
from hybridcore.presets import get_preset

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("name, model_type", [("falcon-h1-0.5b", "falcon_h1"), ("falcon-h1-1.5b-deep", "falcon_h1"),
                                              ("falcon-h1-7b", "falcon_h1"), ("falcon-h1-34b", "falcon_h1"),
                                              ("nemotron-h-8b", "nemotron_h")])
def test_preset_keys_and_shapes_equal_transformers(name, model_type):
    config = get_preset(name)
    family = exporting_family(config)
    assert family.model_type == model_type
    hf_config = transformers.AutoConfig.for_model(**family.hf_config(config))
    with torch.device("meta"):
        theirs = getattr(transformers, family.architecture)(hf_config)
        ours = HybridLM(config)
    their_shapes = {family.canonical_key(key): tuple(t.shape) for key, t in theirs.state_dict().items()}
    our_params = dict(ours.named_parameters())
    mapping = {ours: hf for hf, ours in family.key_map(config).items()}
    assert sorted(n for ours in mapping for n in targets(ours)) == sorted(our_params)
    # a fused HF tensor is its segments concatenated along dim 0
    joined = {hf: (sum(our_params[n].shape[0] for n in targets(ours)), *our_params[targets(ours)[0]].shape[1:])
              for ours, hf in mapping.items()}
    assert joined == their_shapes
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())
