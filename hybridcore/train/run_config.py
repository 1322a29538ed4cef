"""RUN_DIR/run_config.json: the model config and train config of a run, and how `--resume` uses them.

A resumed run starts from the saved TrainConfig; flags given on the command line override it, except
those that would change the model or the data order (FIXED_ON_RESUME, preset, --set, --init-hf): giving
one with a different value is an error naming it.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from ..io.json_codec import read_json_object, write_json
from ..io.run_dir import RUN_CONFIG
from .config import FIXED_ON_RESUME, TrainConfig

MODEL_DEFINING = ("preset", "overrides", "init_hf")


def write_run_config(run_dir: str | Path, train_config: TrainConfig, model_config: ModelConfig) -> None:
    train = {**train_config.to_dict(), "resume_from": None}  # an instruction for one resume, not a setting
    write_json(Path(run_dir) / RUN_CONFIG, {"model": model_config.to_dict(), "train": train})


def read_run_config(run_dir: str | Path) -> tuple[TrainConfig, ModelConfig] | None:
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return None
    hint = (f"; each checkpoint's config.json holds the run's 'model' and 'train' settings: write those two "
            f"into {path} to repair it")
    try:
        data = read_json_object(path)
        return TrainConfig.from_dict(data["train"]), ModelConfig.from_dict(data["model"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a run config ({error}){hint}") from None
    except ValueError as error:
        raise ValueError(f"{error}{hint}") from None


def merge_for_resume(saved: TrainConfig, explicit: dict) -> TrainConfig:
    """The saved config with the explicitly given settings applied."""
    merged = {**saved.to_dict(), "resume_from": None}
    for name, value in explicit.items():
        if name in FIXED_ON_RESUME + MODEL_DEFINING and value != merged[name]:
            flag = "--set" if name == "overrides" else "--" + name.replace("_", "-")
            raise ValueError(f"{flag}: the run in {saved.out} was started with {merged[name]!r}, not {value!r}; "
                             "a resumed run keeps its model and data order (start a new --out instead)")
        merged[name] = {**merged[name], **value} if name == "parallel" else value
    return TrainConfig.from_dict(merged)
