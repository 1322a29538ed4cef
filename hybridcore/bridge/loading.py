"""Build a HybridLM on the meta device and fill it from a checkpoint, tensor by tensor.

Every key and shape is checked before any data is read, so a bad checkpoint fails fast and names the
key. Each tensor read becomes the parameter itself (moved/cast only if asked), so peak host memory is
about one model, not a model plus a state dict.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import ModelConfig
from ..model import HybridLM
from .keys import Target, targets
from .safetensors_io import CheckpointReader

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _some(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _joined_shape(shapes) -> tuple[int, ...]:
    """The shape of tensors of `shapes` concatenated along dim 0."""
    return (sum(shape[0] for shape in shapes), *shapes[0][1:])


def _shape(shape) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def load_checkpoint(config: ModelConfig, reader: CheckpointReader, name_map: dict[str, Target], source: str,
                    dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
                    skip: Callable[[str], bool] = lambda key: False, tied_head_key: str | None = None) -> HybridLM:
    """`name_map`: checkpoint key -> our parameter name, or the tuple of our parameters the key's tensor
    concatenates along dim 0; every parameter covered exactly once.

    `skip(key)` marks checkpoint keys to ignore (derived buffers). `tied_head_key`: a key that may hold a
    copy of the tied embedding; if present it must equal the embedding.
    """
    dtype = resolve_dtype(dtype)
    device = torch.device(device if device is not None else "cpu")
    with torch.device("meta"):
        model = HybridLM(config)
    params = dict(model.named_parameters())
    assert sorted(n for t in name_map.values() for n in targets(t)) == sorted(params), \
        "key map does not cover the model exactly"
    shapes = {key: _joined_shape([params[name].shape for name in targets(ours)]) for key, ours in name_map.items()}

    present = {key for key in reader.keys() if not skip(key)}
    missing = [key for key in name_map if key not in present]
    if missing:
        raise ValueError(f"{source}: missing key(s) {_some(missing)}; the config says the model has them "
                         f"(e.g. {missing[0]} of shape {_shape(shapes[missing[0]])})")
    assert tied_head_key not in name_map, "a tied head is not a parameter of its own"
    extra = present - set(name_map) - {tied_head_key}
    if extra:
        raise ValueError(f"{source}: unexpected key(s) {_some(extra)}; the config describes no such parameter "
                         f"(a bias or norm switched off in the config?)")
    for key in name_map:
        found, wanted = reader.shape(key), shapes[key]
        if found != wanted:
            raise ValueError(f"{source}: key {key} has shape {_shape(found)}, expected {_shape(wanted)} "
                             f"from the config")

    for key, ours in name_map.items():
        tensor = reader.tensor(key)
        if not tensor.is_floating_point():
            raise ValueError(f"{source}: key {key} has dtype {tensor.dtype}, expected a floating-point tensor")
        tensor = tensor.to(device=device, dtype=dtype or tensor.dtype)
        names = targets(ours)
        pieces = tensor.split([params[name].shape[0] for name in names]) if len(names) > 1 else (tensor,)
        for name, piece in zip(names, pieces):
            module_name, _, leaf = name.rpartition(".")
            # a segment is copied out (its own storage); a whole tensor becomes the parameter as read
            setattr(model.get_submodule(module_name), leaf, nn.Parameter(piece.clone() if len(names) > 1 else piece))
        del tensor, pieces
    model.tie_weights()

    if tied_head_key is not None and tied_head_key in present:
        head = reader.tensor(tied_head_key).to(device=device, dtype=model.embed.weight.dtype)
        if not torch.equal(head, model.embed.weight):
            raise ValueError(f"{source}: {tied_head_key} differs from the embedding, but the config ties "
                             f"them (tie_word_embeddings=true)")
    assert not any(p.is_meta for p in model.parameters()), "a parameter was left on the meta device"
    return model.eval()
