"""`load_model(path)`: one model loader for every format hybridcore reads.

    a training run directory     RUN_DIR (checkpoints/ under it): its newest intact checkpoint
    a training checkpoint        RUN_DIR/checkpoints/step_NNNNNNN (DCP, written under any layout)
    a hybridcore model directory hybridcore.json + model.safetensors (import-hf), any layout string
    a Hugging Face directory     config.json (a supported family's model_type) + safetensors
    a Hub id ORG/NAME            the Hugging Face directory huggingface_hub's cache holds (bridge/hub.py:
                                 the cache first, downloaded only when not offline)

`open_source(path)` reads only the config (and what a training checkpoint saved with it), no weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig
from .checkpoints import checkpoint_step, read_checkpoint_config, resolve_checkpoint
from .run_dir import CHECKPOINTS, is_run_dir

MODEL_DIR_FILE = "hybridcore.json"  # bridge/model_dir.py's META_FILE
HF_CONFIG_FILE = "config.json"
# A Hugging Face tokenizer's files: they travel with the weights through import-hf and export-hf.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class ModelSource:
    path: Path
    kind: str  # "checkpoint" (a run or one of its checkpoints), "model_dir" or "hf"
    config: ModelConfig
    checkpoint: Path | None = None  # the checkpoint a run directory stands for
    train: dict | None = None  # the TrainConfig fields a checkpoint saved

    @property
    def run_dir(self) -> Path | None:
        """The run a training checkpoint belongs to (RUN_DIR/checkpoints/step_N -> RUN_DIR)."""
        return self.checkpoint.parent.parent if self.checkpoint is not None else None

    def data_dirs(self) -> list[Path]:
        """Where a training checkpoint's prepared data (meta.json and its tokenizer) may be: the run's --data,
        RUN_DIR/data, its --out's data; none for the other kinds."""
        if self.checkpoint is None:
            return []
        train = self.train or {}
        candidates = [Path(train["data"])] if train.get("data") else []
        candidates.append(self.run_dir / "data")
        if train.get("out"):
            candidates.append(Path(train["out"]) / "data")
        return candidates

    def data_dir(self) -> Path | None:
        return next((d for d in self.data_dirs() if (d / "meta.json").is_file()), None)

    def tokenizer_files(self) -> list[Path]:
        """The Hugging Face tokenizer files that go with these weights: a directory's own, or the one a
        training run's data was prepared with (none for the byte tokenizer)."""
        if self.kind == "checkpoint":
            data = self.data_dir()
            return [data / TOKENIZER_FILES[0]] if data is not None and (data / TOKENIZER_FILES[0]).is_file() else []
        return [self.path / name for name in TOKENIZER_FILES if (self.path / name).is_file()]


def source_kind(path: str | Path) -> str:
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such directory (expected a training run or checkpoint, a hybridcore model "
                         f"directory or a Hugging Face Falcon-H1 directory)")
    if checkpoint_step(path) is not None or (path / CHECKPOINTS).is_dir() or is_run_dir(path):
        return "checkpoint"
    if (path / MODEL_DIR_FILE).is_file():
        return "model_dir"
    if (path / HF_CONFIG_FILE).is_file():
        return "hf"
    raise ValueError(f"{path}: not a training run or checkpoint, a hybridcore model directory ({MODEL_DIR_FILE}) "
                     f"or a Hugging Face directory ({HF_CONFIG_FILE})")


def open_source(path: str | Path, weights: bool = False) -> ModelSource:
    """What `path` holds and its ModelConfig, without reading any weights (a Hub id's weights are fetched
    into the cache when `weights`)."""
    from ..bridge.hub import resolve_model_path

    path = Path(resolve_model_path(str(path), weights=weights))
    kind = source_kind(path)
    if kind == "checkpoint":
        checkpoint = resolve_checkpoint(path)
        saved = read_checkpoint_config(checkpoint)
        try:
            config = ModelConfig.from_dict(saved["model"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"{checkpoint}/config.json: not a checkpoint config ({error})") from None
        return ModelSource(path, kind, config, checkpoint, saved.get("train"))
    if kind == "model_dir":
        from ..bridge.model_dir import read_model_config

        return ModelSource(path, kind, read_model_config(str(path)))
    from ..bridge.hf import read_hf_config

    return ModelSource(path, kind, read_hf_config(str(path)))


def load_model(path: str | Path, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None):
    """A HybridLM in eval mode from any format above, on `device` (default CPU).

    dtype None keeps the stored dtype (fp32 master weights for a training checkpoint); "fp32", "bf16"
    or a torch.dtype converts. A training checkpoint written under any parallel layout loads here, in
    this process alone (safe to call on one rank of a process group)."""
    from ..bridge.loading import resolve_dtype

    source = open_source(path, weights=True)
    dtype = resolve_dtype(dtype)
    device = torch.device(device if device is not None else "cpu")
    if source.kind == "checkpoint":
        from ..model import build_model
        from ..parallel.checkpoint import load_sharded

        model = build_model(source.config, device=device, seed=None)  # every value is overwritten by the load
        load_sharded(source.checkpoint, model, collective=False)  # whole tensors, whatever the layout
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()
    if source.kind == "model_dir":
        from ..bridge.model_dir import load_model_dir

        return load_model_dir(str(source.path), dtype=dtype, device=device).eval()
    from ..bridge.hf import load_hf

    return load_hf(str(source.path), dtype=dtype, device=device).eval()


__all__ = ["load_model", "open_source", "source_kind", "ModelSource", "TOKENIZER_FILES"]
