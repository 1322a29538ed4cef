"""How each parameter splits under tensor parallelism, stated as data beside the modules that own them.

Every module that owns parameters has a `parallel_plan`: {parameter name inside the module: rule}.
hybridcore.parallel reads the plans and applies them; the model computes with whatever tensors it holds,
reading its local sizes from their shapes, so the same forward runs on one device and on any layout.

    COLWISE      split along dim 0 (output features: heads, channels, vocabulary rows)
    ROWWISE      split along dim 1 (input features); the products are partial sums that the layer's
                 region adds up when it leaves the tensor-parallel part (layers.py)
    OUTPUT_BIAS  the bias of a ROWWISE projection: added once, so the first rank of the group holds it
    REPLICATE    whole on every rank (norm weights)
    GROUPS       Mamba-2's B and C segments: split by groups when the groups divide among the ranks,
                 else whole on every rank, each rank's heads reading the same groups
"""

from __future__ import annotations

COLWISE = "colwise"
ROWWISE = "rowwise"
OUTPUT_BIAS = "output_bias"
REPLICATE = "replicate"
GROUPS = "groups"
RULES = (COLWISE, ROWWISE, OUTPUT_BIAS, REPLICATE, GROUPS)


def linear_plan(name: str, rule: str) -> dict[str, str]:
    """The plan of an nn.Linear child `name`: its weight by `rule`, its bias to match."""
    bias = {COLWISE: COLWISE, ROWWISE: OUTPUT_BIAS, REPLICATE: REPLICATE, GROUPS: GROUPS}[rule]
    return {f"{name}.weight": rule, f"{name}.bias": bias}
